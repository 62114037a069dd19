"""The smallest images the sdmark spectral mark reads back from, clean (no attack).

Usage: ``python benchmarks/size_floor.py [--photos 4 --illustrations 4]``

For each size (width x height) on a grid from 128 to 256 px a side, plus thin strips, each corpus
image (``robustness.photos`` and ``robustness.illustrations``, made square at the long side, then
resized to the size) is embedded at the watermark stage's strengths (1, 1.5, 2, 3) and detected,
untouched. A cell shows how many images read back at *some* strength (what the stage achieves,
since it tries each in turn) and the least strength every readable image needed. ``spectral.embed``
refuses sizes under ``spectral.MIN_EMBED_SIDE`` a side or ``spectral.MIN_EMBED_PIXELS`` in all
(the floor this table set); such images are embedded through the private
``_mark`` (format 1, as embed would choose) to show what the floor protects against. Results to
stdout (Markdown), progress to stderr. About 20 seconds on one core with the defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

STRENGTHS = (1.0, 1.5, 2.0, 3.0)
SIDES = (128, 144, 160, 168, 176, 184, 192, 208, 224, 256)
SQUARES = tuple((s, s) for s in SIDES)
MIXED = ((128, 176), (128, 192), (128, 224), (128, 256), (136, 232), (144, 216), (160, 192), (160, 200),
         (168, 256), (176, 128), (176, 192), (192, 128), (200, 160), (232, 136))
THIN = ((128, 400), (150, 600), (176, 400), (176, 600), (600, 176), (400, 128))
PAYLOAD = bytes.fromhex("5d3a9c0e71b2f486")


def _resized(image: np.ndarray, w: int, h: int) -> np.ndarray:
    import cv2

    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


def _least_strength(spectral: object, image: np.ndarray) -> float | None:
    """The least strength of ``STRENGTHS`` whose clean mark reads back with the payload, else None."""
    from sdmark.plugins.watermark import spectral_pattern as pattern

    for strength in STRENGTHS:
        try:
            marked = spectral.embed(image, PAYLOAD, strength=strength)
        except spectral.SpectralError:
            marked = spectral._mark(image, PAYLOAD, spectral.PUBLIC_KEY, strength, pattern.V1)
        found = spectral.detect(marked)
        if found.found and found.payload == PAYLOAD:
            return strength
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--illustrations", type=int, default=8)
    args = parser.parse_args()
    import robustness

    from sdmark.plugins.watermark import spectral

    corpus = robustness.photos(args.photos, size=600) + robustness.illustrations(args.illustrations, size=600)
    print(f"Clean read-back of sdmark marks by size ({len(corpus)} images: {args.photos} photos, "
          f"{args.illustrations} illustrations; embed floor {spectral.MIN_EMBED_SIDE} px a side and "
          f"{spectral.MIN_EMBED_PIXELS} pixels)\n")
    print("| size (w x h) | pixels | embed accepts | read at some strength | least strength needed (worst image) | unread |")
    print("|---|---|---|---|---|---|")
    for w, h in SQUARES + MIXED + THIN:
        needed, unread = [], []
        for name, image in corpus:
            least = _least_strength(spectral, _resized(image, w, h))
            (needed.append(least) if least is not None else unread.append(name))
        worst = max(needed) if needed else None
        accepts = "yes" if min(w, h) >= spectral.MIN_EMBED_SIDE and w * h >= spectral.MIN_EMBED_PIXELS else "no"
        print(f"| {w}x{h} | {w * h} | {accepts} | {len(needed)}/{len(corpus)} | {worst if worst is not None else '-'} | "
              f"{', '.join(unread) or '-'} |", flush=True)
        print(f"{w}x{h} done", file=sys.stderr)


if __name__ == "__main__":
    main()
