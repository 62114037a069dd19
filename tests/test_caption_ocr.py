"""Captions are legible: Tesseract reads the stamped text back from real photos at several sizes.

First as posted: Tesseract reads the whole image (``--psm 11``, no crop, no enlargement), as a
moderation tool would, and must find the default "AI-generated" band, with its capital I, on real
photos at 640x427 and 512x600 and on illustrations from 512 px up. Then, for every style, the OCR looks at the caption's box as the stage reports it (after checking the box sits where it
was asked to), enlarged so the font is about 40 px tall, as a person would zoom in. Tesseract
cannot tell capital I from lowercase l in the bundled sans-serif font (the glyphs are alike), so
the comparison folds I/l/1/| together, along with case and whitespace.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageEnhance

from sdmark.cli.main import get_cli
from sdmark.core.chain import Chain
from sdmark.core.records import ProvenanceRecord
from sdmark.core.stages import ImageItem, RunContext

pytesseract = pytest.importorskip("pytesseract", reason="pytesseract is not installed (pip install -e .[test])")
pytestmark = pytest.mark.skipif(
    shutil.which("tesseract") is None, reason="the tesseract binary is missing (apt-get install tesseract-ocr)"
)

# The benchmark's own reading rules and drawn images, so the test checks what the benchmark measures.
from sdmark.benchmarks.caption_ocr import illustrations as drawn_illustrations  # noqa: E402
from sdmark.benchmarks.caption_ocr import normalise, squeeze  # noqa: E402

SIZES = [(256, 256), (1024, 1024), (640, 256)]


def read_box(image: Image.Image, box: list[int], font_px: int) -> str:
    crop = image.crop(tuple(box)).convert("L")
    scale = max(1.0, 40 / font_px)
    crop = crop.resize((round(crop.width * scale), round(crop.height * scale)), Image.LANCZOS)
    return pytesseract.image_to_string(crop, config="--psm 6")


@pytest.fixture(scope="module")
def test_photos(photos) -> dict[str, Image.Image]:
    """Real photos, including a bright and a dark one made by changing the brightness."""
    chosen = {name: photos[name] for name in ("astronaut", "chelsea", "camera")}
    chosen["bright"] = ImageEnhance.Brightness(photos["coffee"]).enhance(2.2)
    chosen["dark"] = ImageEnhance.Brightness(photos["rocket"]).enhance(0.3)
    return chosen


def stamp(spec: str, image: Image.Image, record: ProvenanceRecord | None = None) -> tuple[Image.Image, dict]:
    chain = Chain.build(spec)
    chain.validate("process")
    context = RunContext(mode="process", warn=lambda message: None)
    chain.setup(context)
    item = ImageItem(image=image, record=record or ProvenanceRecord(kind="processed"), name="ocr")
    chain.run_process([item], context)
    assert item.alive, item.error
    return item.image, item.record.find("caption")[0].result


@pytest.fixture(scope="module")
def illustrations() -> dict[str, Image.Image]:
    """Drawn, not photographed: scikit-image's logo, colour wheel and horse silhouette."""
    return drawn_illustrations()


def read_whole(image: Image.Image) -> str:
    return pytesseract.image_to_string(image, config="--psm 11")


@pytest.mark.parametrize("size", [(640, 427), (512, 600)], ids=lambda size: f"{size[0]}x{size[1]}")
@pytest.mark.parametrize("name", ["astronaut", "chelsea", "camera", "bright", "dark"])
def test_default_band_is_read_from_the_whole_photo(test_photos, name, size):
    image, _ = stamp("caption", test_photos[name].resize(size, Image.LANCZOS))
    read = read_whole(image)
    assert "AI-generated" in squeeze(read), f"{name} {size}: read {read!r}"  # capital I, not l


@pytest.mark.parametrize("size", [(512, 512), (640, 640), (512, 768)], ids=lambda size: f"{size[0]}x{size[1]}")
@pytest.mark.parametrize("name", ["logo", "colorwheel", "horse"])
def test_default_band_is_read_from_the_whole_illustration(illustrations, name, size):
    image, _ = stamp("caption", illustrations[name].resize(size, Image.LANCZOS))
    read = read_whole(image)
    assert "AI-generated" in squeeze(read), f"{name} {size}: read {read!r}"


def test_whole_image_ocr_does_not_find_the_band_where_none_was_stamped(test_photos):
    photo = test_photos["chelsea"].resize((640, 427), Image.LANCZOS)
    assert squeeze(normalise("AI-generated")) not in squeeze(normalise(read_whole(photo)))


def test_the_bright_and_dark_photos_are_bright_and_dark(test_photos):
    luminance = {name: np.asarray(image.convert("L")).mean() for name, image in test_photos.items()}
    assert luminance["bright"] > 170 and luminance["dark"] < 30


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
@pytest.mark.parametrize("name", ["astronaut", "chelsea", "camera", "bright", "dark"])
def test_default_caption_reads_back(test_photos, name, size):
    image, result = stamp("caption", test_photos[name].resize(size, Image.LANCZOS))
    assert result["box"][3] == size[1]  # a bottom band
    read = read_box(image, result["box"], result["font_px"])
    assert normalise("AI-generated") in normalise(read), f"{name} {size}: read {read!r}"


def test_ocr_does_not_find_the_text_where_none_was_stamped(test_photos):
    """The check above can fail: the same region of the unstamped photo does not read as the caption."""
    photo = test_photos["bright"].resize((1024, 1024), Image.LANCZOS)
    _, result = stamp("caption", photo.copy())
    assert normalise("AI-generated") not in normalise(read_box(photo, result["box"], result["font_px"]))


@pytest.mark.parametrize("name, spec, size", [
    ("bright", "caption:position=top-right", (512, 512)),
    ("dark", "caption:position=bottom-left", (512, 384)),
    ("chelsea", "caption:position=top,mode=extend", (300, 300)),
    ("camera", "caption:text='Made with AI',color=yellow", (768, 768)),
])
def test_other_placements_read_back(test_photos, name, spec, size):
    image, result = stamp(spec, test_photos[name].resize(size, Image.LANCZOS))
    expected = result["text"]
    read = read_box(image, result["box"], result["font_px"])
    assert normalise(expected) in normalise(read), f"{name} {spec}: read {read!r}"


def test_a_filled_template_that_wraps_reads_back(test_photos):
    record = ProvenanceRecord(kind="generated", generation={"seed": 123456, "model": "runwayml/stable-diffusion-v1-5",
                                                             "prompt": "a red fox in the snow"})
    image, result = stamp("caption:text='AI-generated by {model} from seed {seed}'",
                          test_photos["astronaut"].resize((384, 384), Image.LANCZOS), record)
    assert len(result["lines"]) >= 2
    read = normalise(read_box(image, result["box"], result["font_px"]))
    for line in result["lines"]:
        assert normalise(line) in read, f"read {read!r}"


def test_cli_caption_reads_back(tmp_path, photo_dir):
    out = tmp_path / "out"
    result = CliRunner().invoke(get_cli(), [
        "process", str(photo_dir), "--chain", "caption:text='Made with AI',position=top", "-o", str(out), "--json",
    ])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        data = json.loads(line)
        caption = [entry for entry in data["record"]["stages"] if entry["stage"] == "caption"][0]["result"]
        assert caption["box"][1] == 0  # a top band
        with Image.open(data["path"]) as written:
            read = read_box(written, caption["box"], caption["font_px"])
        assert normalise("Made with AI") in normalise(read), f"{data['path']}: read {read!r}"
