"""How legible are captions? Stamp real photos at several sizes and read the text back with Tesseract.

Prints one row per photo, size and style: the expected text, what OCR read from the caption's box
(enlarged so the font is about 40 px, grayscale, ``--psm 6``), whether it matched after folding
case, whitespace and I/l/1/| (alike in the bundled sans-serif font), and the stamping time.

    .venv/bin/python benchmarks/caption_ocr.py            # needs tesseract-ocr and pytesseract
"""

from __future__ import annotations

import argparse
import time

import pytesseract
from PIL import Image, ImageEnhance
from skimage import data

from sdmark.core.chain import Chain
from sdmark.core.records import ProvenanceRecord
from sdmark.core.stages import ImageItem, RunContext

_FOLD = str.maketrans({"l": "i", "1": "i", "|": "i", "!": "i"})
STYLES = {
    "bottom band": "caption",
    "top extend": "caption:position=top,mode=extend",
    "corner label": "caption:position=bottom-right",
    "outline only": "caption:background=none",
}
SIZES = [(256, 256), (1024, 1024), (640, 256), (4096, 4096)]


def normalise(text: str) -> str:
    return " ".join(text.lower().translate(_FOLD).split())


def photos() -> dict[str, Image.Image]:
    chosen = {name: Image.fromarray(getattr(data, name)()).convert("RGB") for name in ("astronaut", "chelsea", "camera")}
    chosen["bright"] = ImageEnhance.Brightness(Image.fromarray(data.coffee())).enhance(2.2)
    chosen["dark"] = ImageEnhance.Brightness(Image.fromarray(data.rocket())).enhance(0.3)
    return chosen


def read_box(image: Image.Image, box: list[int], font_px: int) -> str:
    crop = image.crop(tuple(box)).convert("L")
    scale = max(1.0, 40 / font_px)
    crop = crop.resize((round(crop.width * scale), round(crop.height * scale)), Image.LANCZOS)
    return pytesseract.image_to_string(crop, config="--psm 6")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", default="AI-generated")
    parser.add_argument("--styles", default=",".join(STYLES), help="comma-separated: " + ", ".join(STYLES))
    args = parser.parse_args()
    context = RunContext(mode="process", warn=lambda message: None)
    chains = {}
    for style in args.styles.split(","):
        chain = Chain.build(STYLES[style] + ("," if ":" in STYLES[style] else ":") + f"text={args.text!r}")
        chain.validate("process")
        chain.setup(context)
        chains[style] = chain
    print(f"{'photo':10} {'size':>9} {'style':13} {'px':>3} {'ms':>6}  {'ok':3} expected -> read")
    total = passed = 0
    for name, photo in photos().items():
        for size in SIZES:
            source = photo.resize(size, Image.LANCZOS)
            for style, chain in chains.items():
                item = ImageItem(image=source.copy(), record=ProvenanceRecord(kind="processed"), name=name)
                start = time.perf_counter()
                chain.run_process([item], context)
                elapsed = (time.perf_counter() - start) * 1000
                result = item.record.find("caption")[0].result
                read = read_box(item.image, result["box"], result["font_px"])
                ok = normalise(result["text"]) in normalise(read)
                total, passed = total + 1, passed + ok
                shown = " ".join(read.split())
                print(f"{name:10} {size[0]:>4}x{size[1]:<4} {style:13} {result['font_px']:>3} {elapsed:6.1f}  "
                      f"{'yes' if ok else 'NO':3} {result['text']!r} -> {shown!r}")
    print(f"\n{passed}/{total} read back")


if __name__ == "__main__":
    main()
