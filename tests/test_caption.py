"""The caption stage: placement, sizing, contrast, templates, wrapping, fonts, alpha, errors.

Legibility (reading the text back with OCR) is tested in test_caption_ocr.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, PngImagePlugin

from sdmark.cli.main import get_cli
from sdmark.core.chain import Chain
from sdmark.core.errors import ChainError
from sdmark.core.generate import GenerationSettings, generate
from sdmark.core.output import OutputOptions
from sdmark.core.process import process_images
from sdmark.core.records import ProvenanceRecord
from sdmark.core.stages import ImageItem, RunContext

DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def run(spec: str, image: Image.Image, record: ProvenanceRecord | None = None, **item_fields) -> ImageItem:
    """Run a chain on one in-memory image, as process_images does (validate, setup, process)."""
    chain = Chain.build(spec)
    chain.validate("process")
    context = RunContext(mode="process", warn=lambda message: None)
    chain.setup(context)
    item = ImageItem(image=image, record=record or ProvenanceRecord(kind="processed"), name="img", **item_fields)
    chain.run_process([item], context)
    return item


def caption_result(item: ImageItem) -> dict:
    assert item.alive, item.error
    [entry] = item.record.find("caption")
    return entry.result


def changed_rows_and_cols(before: Image.Image, after: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    diff = np.any(np.asarray(before) != np.asarray(after), axis=-1)
    return np.flatnonzero(diff.any(axis=1)), np.flatnonzero(diff.any(axis=0))


def test_default_is_an_ai_generated_band_over_the_bottom(photos):
    photo = photos["astronaut"]
    given = photo.copy()
    item = run("caption", given)
    assert np.array_equal(np.asarray(given), np.asarray(photo))  # a new image, the given one is untouched
    result = caption_result(item)
    assert result["summary"] == '"AI-generated" bottom band'
    assert result["text"] == "AI-generated" and result["lines"] == ["AI-generated"]
    assert item.image.size == photo.size and item.image.mode == "RGB"
    x0, y0, x1, y1 = result["box"]
    assert (x0, x1, y1) == (0, photo.width, photo.height)
    rows, cols = changed_rows_and_cols(photo, item.image)
    assert rows.min() >= y0 and rows.max() == photo.height - 1  # only the band changed
    assert len(cols) > photo.width * 0.8  # (pixels already in the box colour stay as they are)
    assert 0 < photo.height - y0 < photo.height * 0.2  # roomy around the text, so OCR finds it on the whole image


def test_top_band_extend_grows_the_canvas_and_keeps_every_pixel(photos):
    photo = photos["chelsea"]
    item = run("caption:position=top,mode=extend", photo.copy())
    result = caption_result(item)
    added = item.image.height - photo.height
    assert added > 0 and result["summary"] == f'"AI-generated" top band (+{added} px)'
    assert result["box"] == [0, 0, photo.width, added]
    assert np.array_equal(np.asarray(item.image)[added:], np.asarray(photo))


def test_corner_label_touches_only_its_corner(photos):
    photo = photos["coffee"]
    for position in ("top-left", "top-right", "bottom-left", "bottom-right"):
        item = run(f"caption:position={position}", photo.copy())
        result = caption_result(item)
        assert result["summary"] == f'"AI-generated" {position} label'
        x0, y0, x1, y1 = result["box"]
        assert (x1 - x0) < photo.width / 2 and (y1 - y0) < photo.height / 4
        assert (x0 < photo.width / 2) == position.endswith("left")
        assert (y0 < photo.height / 2) == position.startswith("top")
        rows, cols = changed_rows_and_cols(photo, item.image)
        assert rows.min() >= y0 and rows.max() < y1 and cols.min() >= x0 and cols.max() < x1


def test_font_size_follows_the_image_size(photos):
    small = run("caption", photos["rocket"].resize((256, 256)))
    large = run("caption", photos["rocket"].resize((2048, 2048)))
    wide = run("caption", photos["rocket"].resize((1024, 256)))
    small_px, large_px = caption_result(small)["font_px"], caption_result(large)["font_px"]
    assert large_px / small_px == pytest.approx(8, rel=0.1)
    band = lambda item: item.image.height - caption_result(item)["box"][1]  # noqa: E731
    assert band(large) / large.image.height == pytest.approx(band(small) / small.image.height, rel=0.15)
    assert caption_result(wide)["font_px"] == small_px  # the shorter side sets the size
    tiny = run("caption:min_px=14", photos["rocket"].resize((64, 64)))
    assert caption_result(tiny)["font_px"] == 14


@pytest.mark.parametrize("level, text, box", [(235, "#000000", "#ffffff"), (20, "#ffffff", "#000000")])
def test_automatic_contrast_from_the_pixels_underneath(level, text, box):
    plain = Image.new("RGB", (400, 300), (level, level, level))
    result = caption_result(item := run("caption", plain.copy()))
    assert (result["text_color"], result["box_color"]) == (text, box)
    x0, y0, x1, y1 = result["box"]
    band = np.asarray(item.image.convert("L"))[y0:y1, x0:x1].astype(int)
    # the box pushes the background further from the text colour; the text is the opposite tone
    assert abs(int(np.median(band)) - int(text[1:3], 16)) > abs(level - int(text[1:3], 16))
    assert abs(int(band.min() if text == "#000000" else band.max()) - int(text[1:3], 16)) < 30


def test_a_busy_region_is_judged_where_the_caption_goes():
    image = Image.new("RGB", (400, 400), (250, 250, 250))
    image.paste((10, 10, 10), (0, 300, 400, 400))  # dark at the bottom only
    assert caption_result(run("caption", image.copy()))["text_color"] == "#ffffff"
    assert caption_result(run("caption:position=top", image.copy()))["text_color"] == "#000000"


def test_opacity_options_are_honoured():
    grey = Image.new("RGB", (300, 300), (128, 128, 128))
    invisible = run("caption:opacity=0,background_opacity=0", grey.copy())
    assert np.array_equal(np.asarray(invisible.image), np.asarray(grey))
    solid = run("caption:color=#ff0000,background_opacity=1", grey.copy())
    result = caption_result(solid)
    assert result["text_color"] == "#ff0000" and result["box_color"] == "#000000"
    x0, y0, x1, y1 = result["box"]
    band = np.asarray(solid.image)[y0:y1, x0:x1].reshape(-1, 3)
    colours = {tuple(pixel) for pixel in band}
    assert (0, 0, 0) in colours and (255, 0, 0) in colours and (128, 128, 128) not in colours


def test_outlined_text_without_a_box(photos):
    photo = photos["camera"]
    result = caption_result(item := run("caption:background=none", photo.copy()))
    assert result["box_color"] is None
    x0, y0, x1, y1 = result["box"]
    before = np.asarray(photo)[y0:y1, x0:x1]
    after = np.asarray(item.image)[y0:y1, x0:x1]
    assert 0.02 < np.mean(np.any(before != after, axis=-1)) < 0.6  # glyphs and outline, not a filled band


def test_alpha_is_kept():
    image = Image.new("RGBA", (320, 240), (30, 120, 200, 0))
    image.paste((30, 120, 200, 255), (0, 0, 160, 240))
    item = run("caption", image.copy())
    result = caption_result(item)
    assert item.image.mode == "RGBA"
    alpha_before, alpha_after = np.asarray(image)[..., 3], np.asarray(item.image)[..., 3]
    y0 = result["box"][1]
    assert np.array_equal(alpha_after[:y0], alpha_before[:y0])
    assert alpha_after[y0:, 200:].min() >= round(255 * 0.8) - 1  # the box makes the band readable
    extended = run("caption:mode=extend", image.copy())
    assert extended.image.mode == "RGBA" and np.asarray(extended.image)[240:, :, 3].min() == 255


def test_long_text_wraps_and_is_cut_at_max_lines():
    words = "a quiet harbour town at dawn with fishing boats and gulls and mist over the water " * 3
    image = Image.new("RGB", (256, 256), (90, 90, 90))
    result = caption_result(run(f"caption:text='{words}',max_lines=20", image.copy()))
    assert len(result["lines"]) > 3 and " ".join(result["lines"]) == " ".join(words.split())
    cut = caption_result(run(f"caption:text='{words}'", image.copy()))
    assert len(cut["lines"]) == 3 and cut["truncated"] and cut["lines"][-1].endswith("\u2026")
    assert cut["summary"].endswith("cut to 3 lines")
    from sdmark.plugins.caption.fonts import CaptionFont

    font = CaptionFont.load(None).at(cut["font_px"])
    assert all(font.getlength(line) <= 256 for line in result["lines"] + cut["lines"])
    word = "x" * 200  # a word wider than the image breaks between characters
    broken = caption_result(run(f"caption:text={word},max_lines=50", image.copy()))
    assert len(broken["lines"]) > 1 and "".join(broken["lines"]) == word


def test_template_fields_from_a_generated_record(photos):
    record = ProvenanceRecord(kind="generated", generation={
        "prompt": "a red fox", "negative_prompt": None, "seed": 42, "steps": 20, "sampler": "EulerDiscreteScheduler",
        "guidance_scale": 7.5, "width": 256, "height": 256, "model": "tiny/sd", "dtype": "float32",
    })
    spec = "caption:text='{model} seed {seed}, {steps} steps, cfg {guidance:.1f}, {sampler}, {date}: {prompt} {{x}}'"
    result = caption_result(run(spec, photos["chelsea"].resize((512, 512)), record))
    assert result["text"] == (
        f"tiny/sd seed 42, 20 steps, cfg 7.5, EulerDiscreteScheduler, {record.created[:10]}: a red fox {{x}}"
    )
    assert result["summary"].startswith('"tiny/sd seed 42, 20 steps')


def test_template_fields_from_a1111_parameters(tmp_path, photos):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a castle, by the sea\nNegative prompt: blurry\n"
                  'Steps: 25, Sampler: Euler a, CFG scale: 6.5, Seed: 777, Size: 512x512, Model: "dream, v2", Version: v1.9')
    source = tmp_path / "in" / "castle.png"
    source.parent.mkdir()
    photos["astronaut"].save(source, pnginfo=info)
    chain = Chain.build("caption:text='{prompt} / {negative_prompt} / {seed} {steps} {sampler} {guidance} {model} {source}'")
    [result] = process_images([source], chain, OutputOptions(tmp_path / "out"), safety="off", progress=False, warn=lambda m: None)
    assert result.status == "written"
    [entry] = result.record.find("caption")
    assert entry.result["text"] == "a castle, by the sea / blurry / 777 25 Euler a 6.5 dream, v2 castle.png"


def test_caption_in_generate_and_the_source_record_in_process(tiny_pipe, tmp_path):
    settings = GenerationSettings(prompts=["a lighthouse"], seed=5, steps=1, width=256, height=256)
    chain = Chain.build("caption:text='seed {seed}',position=top,mode=extend")
    [result] = generate(settings, chain, OutputOptions(tmp_path / "gen"), safety="off", pipeline=tiny_pipe,
                        progress=False, warn=lambda m: None)
    assert result.status == "written"
    [entry] = result.record.find("caption")
    assert entry.result["text"] == "seed 5"
    with Image.open(result.path) as written:
        assert written.size == (256, 256 + entry.result["box"][3])
    # Processing that file again reads the seed and prompt from the sdmark record it carries.
    again = Chain.build("caption:text='{prompt} {seed}'")
    [processed] = process_images([result.path], again, None, safety="off", progress=False, warn=lambda m: None)
    assert processed.record.find("caption")[0].result["text"] == "a lighthouse 5"


def test_a_chain_file_with_typed_options(tmp_path, photos):
    chain_file = tmp_path / "chain.toml"
    chain_file.write_text('[[stage]]\nname = "caption"\ntext = "Made with AI\\nby sdmark"\nposition = "top"\n'
                          'size = 0.08\nmin_px = 16\nmax_lines = 2\n', encoding="utf-8")
    chain = Chain.build(chain_file)
    assert chain.stages[0].options.size == 0.08
    path = tmp_path / "camera.png"
    photos["camera"].save(path)
    [processed] = process_images([path], chain, None, safety="off", progress=False, warn=lambda m: None)
    result = processed.record.find("caption")[0].result
    assert result["lines"] == ["Made with AI", "by sdmark"] and result["font_px"] == round(0.08 * 512)
    assert result["box"][1] == 0


def test_unknown_field_is_a_chain_error_listing_the_fields():
    with pytest.raises(ChainError) as error:
        Chain.build("caption:text='{sed}'").validate("process")
    assert "{sed}" in str(error.value) and "{seed}" in str(error.value) and "{model}" in str(error.value)
    for spec in ("caption:text='{model.__class__}'", "caption:text='{'", "caption:text=''"):
        with pytest.raises(ChainError):
            Chain.build(spec).validate("process")


def test_missing_value_fails_that_image_with_a_clear_error(photos):
    item = run("caption:text='seed {seed}'", photos["camera"].copy())
    assert not item.alive
    assert item.error.startswith("caption: field {seed} has no value for this image")


@pytest.mark.parametrize("spec, message", [
    ("caption:font=/no/such/font.ttf", "no font file at /no/such/font.ttf"),
    ("caption:font=NoSuchFont.ttf", "nor in the system font folders"),
    ("caption:color=notacolour", "is not a colour"),
    ("caption:position=top-left,mode=extend", "use position=top or bottom"),
    ("caption:position=middle", "must be one of bottom, top"),
    ("caption:size=2", "must be <= 0.5"),
])
def test_bad_options_are_chain_errors(spec, message):
    with pytest.raises(ChainError, match=message.replace(".", r"\.").replace("=", "=")):
        Chain.build(spec).validate("process")


def test_a_file_that_is_not_a_font_is_refused(tmp_path):
    fake = tmp_path / "fake.ttf"
    fake.write_text("not a font")
    with pytest.raises(ChainError, match="is not a font FreeType can read"):
        Chain.build(f"caption:font={fake}").validate("process")


def test_glyphs_the_font_lacks_are_noted():
    image = Image.new("RGB", (400, 300), (200, 200, 200))
    item = run("caption:text='Café ☃ 漢 ok'", image.copy())
    result = caption_result(item)
    assert result["missing_glyphs"] == ["漢"]  # the bundled DejaVu Sans Mono has é and ☃, no CJK
    assert any("no glyph for '漢'" in note and "caption:font=PATH" in note for note in item.notes)
    pillow = run("caption:text='Café ☃ 漢 ok',font=pillow", image.copy())
    assert caption_result(pillow)["missing_glyphs"] == ["é", "☃", "漢"]
    assert "Pillow's bundled font" in caption_result(pillow)["font"]
    assert "missing_glyphs" not in caption_result(run("caption", image.copy()))


@pytest.mark.skipif(not DEJAVU.is_file(), reason=f"{DEJAVU} is not installed (Debian package fonts-dejavu-core)")
def test_a_ttf_font_with_more_glyphs():
    image = Image.new("RGB", (400, 300), (200, 200, 200))
    for font in (DEJAVU, DEJAVU.name):  # a path, or a file name found in the system font folders
        item = run(f"caption:text='Café ☃ Ωmega',font={font}", image.copy())
        result = caption_result(item)
        assert "missing_glyphs" not in result and not item.notes
        assert result["font"].startswith("DejaVu Sans")


def test_caption_after_watermark_warns_and_before_does_not():
    late = Chain.build("watermark caption").validate("process")
    assert any("'caption' changes pixels after 'watermark'" in warning for warning in late)
    assert Chain.build("caption watermark").validate("process") == []


def test_cli_process_with_a_caption_chain(tmp_path, photo_dir):
    out = tmp_path / "out"
    result = CliRunner().invoke(get_cli(), [
        "process", str(photo_dir), "--chain", "caption:text='Made with AI',position=top", "-o", str(out),
    ])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count('caption: "Made with AI" top band') == 3
    for source in sorted(photo_dir.iterdir()):
        with Image.open(source) as before, Image.open(out / (source.stem + ".png")) as after:
            assert after.size == before.size
            rows, _ = changed_rows_and_cols(before.convert("RGB"), after.convert("RGB"))
            assert rows.min() == 0 and rows.max() < before.height * 0.2
    bad = CliRunner().invoke(get_cli(), ["process", str(photo_dir), "--chain", "caption:text={sed}", "-o", str(out)])
    assert bad.exit_code == 2 and "valid fields" in bad.stderr
    missing = CliRunner().invoke(get_cli(), [
        "process", str(photo_dir), "--chain", "caption:text={seed}", "-o", str(tmp_path / "none"), "--json",
    ])
    assert missing.exit_code == 1
    lines = [json.loads(line) for line in missing.stdout.splitlines()]
    assert len(lines) == 3 and all(line["status"] == "failed" and "{seed}" in line["error"] for line in lines)


def test_fields_read_from_the_inputs_own_metadata_are_recorded_as_unverified(tmp_path, photos):
    """Anyone can write a prompt or seed into a file's metadata: a caption that draws them from a
    processed input says so in its record (and in the summary a C2PA action quotes), since the
    output is then signed by us."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a castle\nSteps: 25, Sampler: Euler a, CFG scale: 6.5, Seed: 777")
    source = tmp_path / "castle.png"
    photos["astronaut"].save(source, pnginfo=info)
    [result] = process_images([source], Chain.build("caption:text='{prompt} seed {seed}'"), None, safety="off",
                              progress=False, warn=lambda m: None)
    entry = result.record.find("caption")[0].result
    assert entry["text"] == "a castle seed 777"
    assert entry["unverified_fields"] == ["prompt", "seed"]
    assert "not verified" in entry["fields_from"] and "unverified" in entry["summary"]
    [plain] = process_images([source], Chain.build("caption:text='{source} {date}'"), None, safety="off",
                             progress=False, warn=lambda m: None)
    assert "unverified_fields" not in plain.record.find("caption")[0].result
