"""Where ``sdmark verify``'s time goes, against the time of reading the same PNG into pixels.

Usage: ``python benchmarks/verify_breakdown.py [--rounds 5]``

On one core (CPU time, so other processes on a shared machine count less), for 512x512 photos and
illustrations saved as PNG, marked with the sdmark spectral mark and unmarked: reading the PNG into
an RGB array (Pillow, the base; and ``sdmark.core.io.read_image``), each default scheme's ``detect`` on that array, and
``verify_file`` in total. Prints medians in ms and each one's ratio to the read; the target of issue
14 is ``verify_file`` <= 3x the read.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _cpu_ms(run, rounds: int) -> float:
    run()
    times = []
    for _ in range(rounds):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=4, help="photos and illustrations each (default 4)")
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import cv2

    cv2.setNumThreads(1)
    from PIL import Image

    import robustness
    from sdmark.core.io import read_image
    from sdmark.plugins.watermark import spectral
    from sdmark.plugins.watermark.schemes import ImageView
    from sdmark.plugins.watermark.verify import select_schemes, verify_file

    schemes = select_schemes()
    images = robustness.photos(args.images) + robustness.illustrations(args.images)
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="verify-breakdown-") as folder:
        for index, (_name, rgb) in enumerate(images):
            for label, pixels in (("unmarked", rgb), ("marked", spectral.embed(rgb, robustness.PAYLOAD))):
                path = Path(folder) / f"{index}-{label}.png"
                Image.fromarray(pixels).save(path)
                read = _cpu_ms(lambda: np.asarray(Image.open(path).convert("RGB")), args.rounds)
                rows.setdefault(f"read PNG into pixels, PIL ({label})", []).append(read)
                safe = _cpu_ms(lambda: np.asarray(read_image(path).image.convert("RGB")), args.rounds)
                rows.setdefault(f"sdmark.core.io.read_image ({label})", []).append(safe)
                for scheme in schemes:
                    ms = _cpu_ms(lambda: scheme.detect(ImageView(pixels)), args.rounds)
                    rows.setdefault(f"{scheme.name} ({label})", []).append(ms)
                total = _cpu_ms(lambda: verify_file(path, schemes), args.rounds)
                rows.setdefault(f"verify_file total ({label})", []).append(total)
                rows.setdefault(f"total / read ({label})", []).append(total / read)
    print(f"### Where verify's time goes (`benchmarks/verify_breakdown.py --rounds {args.rounds} --images {args.images}`)\n")
    print(f"{len(images)} images, 512x512 PNG, one core, CPU time, median over images of the median of {args.rounds} rounds.\n")
    print("| step | unmarked | marked |\n|---|---|---|")
    steps = dict.fromkeys(key.rsplit(" (", 1)[0] for key in rows)
    for step in steps:
        cells = []
        for label in ("unmarked", "marked"):
            values = rows[f"{step} ({label})"]
            unit = "x" if step.startswith("total /") else " ms"
            cells.append(f"{statistics.median(values):.1f}{unit}")
        print(f"| {step} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
