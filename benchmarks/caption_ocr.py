"""How legible are captions? Stamp real photos and illustrations, read them back with Tesseract.

Two measurements; the first for the current default caption and the old default's face, size and
spacing side by side (its colour rule is today's; the old one also lost a light box on mid-tone photos):

- ``whole``: Tesseract reads the *whole* image as posted (``--psm 11``, sparse text, no crop, no
  enlargement), as a moderation tool would. ``found`` folds I/l/1/| and spaces (is the band there at
  all); ``exact`` needs "AI-generated" with a capital I. Sizes: photos at 640x427, 512x600 and 512x512,
  illustrations (scikit-image's logo, colour wheel and horse, and flat shapes drawn here) at 512x512,
  640x640 and 512x768.
- ``box``: the caption's own box, enlarged so the font is about 40 px (``--psm 6``), over the
  photos at 256 to 4096 px and four styles: how a person zooming in reads it.

    python benchmarks/caption_ocr.py [--only whole|box]     # needs tesseract-ocr and pytesseract
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import pytesseract
from PIL import Image, ImageDraw, ImageEnhance
from skimage import data

from sdmark.core.chain import Chain
from sdmark.core.records import ProvenanceRecord
from sdmark.core.stages import ImageItem, RunContext

_FOLD = str.maketrans({"l": "i", "1": "i", "|": "i", "!": "i"})
DEFAULTS = {"default": "caption", "old default": "caption:font=pillow,size=0.05,padding=0.4"}
STYLES = {
    "bottom band": "caption",
    "top extend": "caption:position=top,mode=extend",
    "corner label": "caption:position=bottom-right",
    "outline only": "caption:background=none",
}
BOX_SIZES = [(256, 256), (1024, 1024), (640, 256), (4096, 4096)]
PHOTO_SIZES = [(640, 427), (512, 600), (512, 512)]
ART_SIZES = [(512, 512), (640, 640), (512, 768)]


def normalise(text: str) -> str:
    return " ".join(text.lower().translate(_FOLD).split())


def squeeze(text: str) -> str:
    """Spaces dropped: a monospaced "AI -generated" is the same label."""
    return "".join(text.split())


def photos() -> dict[str, Image.Image]:
    chosen = {name: Image.fromarray(getattr(data, name)()).convert("RGB")
              for name in ("astronaut", "chelsea", "coffee", "rocket", "camera")}
    chosen["bright"] = ImageEnhance.Brightness(Image.fromarray(data.coffee())).enhance(2.2)
    chosen["dark"] = ImageEnhance.Brightness(Image.fromarray(data.rocket())).enhance(0.3)
    return chosen


def _on_white(array: np.ndarray) -> Image.Image:
    image = Image.fromarray(array)
    if image.mode in ("RGBA", "LA"):
        flat = Image.new("RGB", image.size, "white")
        flat.paste(image, mask=image.getchannel("A"))
        return flat
    return image.convert("RGB")


def shapes(width: int, height: int, seed: int = 1) -> Image.Image:
    """Flat saturated shapes with black outlines: the hardest case for Tesseract's colour threshold."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        x1, y1 = x0 + rng.integers(40, width // 2), y0 + rng.integers(40, height // 2)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill, outline=(0, 0, 0), width=3)
    return image


def illustrations() -> dict[str, Image.Image]:
    return {"logo": _on_white(data.logo()), "colorwheel": _on_white(data.colorwheel()),
            "horse": _on_white((~data.horse()).astype(np.uint8) * 255)}


def whole_cases() -> list[tuple[str, str, tuple[int, int], Image.Image]]:
    cases = [("photo", name, size, photo.resize(size, Image.LANCZOS))
             for (name, photo), size in itertools.product(photos().items(), PHOTO_SIZES)]
    cases += [("illustration", name, size, art.resize(size, Image.LANCZOS))
              for (name, art), size in itertools.product(illustrations().items(), ART_SIZES)]
    cases += [("flat shapes", "shapes", size, shapes(*size)) for size in ART_SIZES]
    return cases


def stamp(chain: Chain, image: Image.Image, context: RunContext) -> tuple[Image.Image, dict]:
    item = ImageItem(image=image.copy(), record=ProvenanceRecord(kind="processed"), name="ocr")
    chain.run_process([item], context)
    return item.image, item.record.find("caption")[0].result


def read_whole(image: Image.Image) -> str:
    return pytesseract.image_to_string(image, config="--psm 11")


def read_box(image: Image.Image, box: list[int], font_px: int) -> str:
    crop = image.crop(tuple(box)).convert("L")
    scale = max(1.0, 40 / font_px)
    crop = crop.resize((round(crop.width * scale), round(crop.height * scale)), Image.LANCZOS)
    return pytesseract.image_to_string(crop, config="--psm 6")


def built(spec: str, context: RunContext) -> Chain:
    chain = Chain.build(spec)
    chain.validate("process")
    chain.setup(context)
    return chain


def run_whole(context: RunContext, verbose: bool) -> None:
    cases = whole_cases()
    chains = {label: built(spec, context) for label, spec in DEFAULTS.items()}
    tally: dict[tuple[str, str], list[int]] = {}
    for kind, name, size, image in cases:
        for label, chain in chains.items():
            stamped, result = stamp(chain, image, context)
            read = read_whole(stamped)
            found = squeeze(normalise("AI-generated")) in squeeze(normalise(read))
            exact = "AI-generated" in squeeze(read)
            counts = tally.setdefault((kind, label), [0, 0, 0])
            counts[0] += found
            counts[1] += exact
            counts[2] += 1
            if verbose or not exact:
                print(f"  {label:11} {kind:12} {name:10} {size[0]}x{size[1]:<4} px={result['font_px']:<3} "
                      f"band={result['box'][3] - result['box'][1]:<3} {'exact' if exact else 'found' if found else 'MISSED'}"
                      f"  read {' '.join(read.split())[-40:]!r}")
    print(f"\nwhole image, --psm 11, no crop: {'':14} " + "   ".join(f"{label:>22}" for label in chains))
    for kind in dict.fromkeys(k for k, _ in tally):
        cells = []
        for label in chains:
            found, exact, total = tally[(kind, label)]
            cells.append(f"{found:>2}/{total} found {exact:>2}/{total} exact")
        print(f"  {kind:44} " + "   ".join(f"{cell:>22}" for cell in cells))
    print("  (found folds I/l/1/| and spaces; exact needs the capital I)")


def run_box(context: RunContext) -> None:
    chains = {style: built(spec, context) for style, spec in STYLES.items()}
    print(f"\n{'photo':10} {'size':>9} {'style':13} {'px':>3} {'ms':>6}  {'ok':3} expected -> read (box, enlarged)")
    total = passed = 0
    for name, photo in photos().items():
        for size in BOX_SIZES:
            source = photo.resize(size, Image.LANCZOS)
            for style, chain in chains.items():
                start = time.perf_counter()
                stamped, result = stamp(chain, source, context)
                elapsed = (time.perf_counter() - start) * 1000
                read = read_box(stamped, result["box"], result["font_px"])
                ok = squeeze(normalise(result["text"])) in squeeze(normalise(read))
                total, passed = total + 1, passed + ok
                print(f"{name:10} {size[0]:>4}x{size[1]:<4} {style:13} {result['font_px']:>3} {elapsed:6.1f}  "
                      f"{'yes' if ok else 'NO':3} {result['text']!r} -> {' '.join(read.split())!r}")
    print(f"\n{passed}/{total} read back from the box")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("whole", "box"))
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per whole-image case")
    args = parser.parse_args()
    context = RunContext(mode="process", warn=lambda message: None)
    if args.only != "box":
        run_whole(context, args.verbose)
    if args.only != "whole":
        run_box(context)


if __name__ == "__main__":
    main()
