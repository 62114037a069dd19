"""Where ``sdmark verify``'s time goes, against the time of reading the same PNG into pixels.

Usage: ``python benchmarks/verify_breakdown.py [--rounds 5] [--images 4]``

On one core (CPU time, so other processes on a shared machine count less), for 512x512 photos and
illustrations saved as PNG, marked with the sdmark spectral mark and unmarked, measured side by side
for each file:

* the base: reading the PNG into an RGB array with Pillow (and with ``sdmark.core.io.read_image``);
* the DWT schemes' shared work on one view (U planes, Haar bands, block scores of every method,
  channel order and offset they read), then each DWT scheme's own part on a view that has it, and
  the six together on a fresh view;
* the ``sdmark`` spectral scheme alone, and the plugins' ``sdmark_inspect_image`` hook (c2pa);
* ``verify_file`` with every default scheme, and with every one but ``sdmark``, given a runtime
  loaded once as ``sdmark verify`` does (a call without one loads the plugins each time; that cost is
  printed below the table).

Prints medians over files in ms, and of each file's ratios to its read; the target of issue 14 is ``verify_file``
<= 3x the read.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


def _shared_dwt_work(schemes: list[Any]):
    """A function that makes, on a view, every block-score array the DWT schemes read."""
    from sdmark.plugins.watermark.schemes import FixedMessageScheme, SdmarkPayloadScheme

    reads = []
    for scheme in schemes:
        if isinstance(scheme, FixedMessageScheme):
            reads += [(scheme.method, order, offset) for order, offset in scheme.readings]
        elif isinstance(scheme, SdmarkPayloadScheme):
            reads.append((scheme.method, "bgr", 0.0))

    def prime(view: Any) -> Any:
        for method, order, offset in reads:
            view.block_scores(method, order, offset)
        return view

    return prime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=4, help="photos and illustrations each (default 4)")
    args = parser.parse_args()
    import robustness

    robustness.one_core()
    from PIL import Image

    from sdmark.core.io import read_image
    from sdmark.core.runtime import Runtime
    from sdmark.plugins.watermark import spectral
    from sdmark.plugins.watermark.schemes import ImageView
    from sdmark.plugins.watermark.verify import select_schemes, verify_file, verify_image

    runtime = Runtime.load()
    schemes = select_schemes(runtime=runtime)
    dwt_schemes = [s for s in schemes if s.decoder.startswith("dwt")]
    others = [s for s in schemes if s not in dwt_schemes]
    but_spectral = [s for s in schemes if s.name != "sdmark"]
    prime = _shared_dwt_work(dwt_schemes)
    images = robustness.photos(args.images) + robustness.illustrations(args.images)
    rows: dict[str, list[float]] = {}

    def add(step: str, label: str, value: float) -> None:
        rows.setdefault(f"{step} ({label})", []).append(value)

    reload_ms = []
    with tempfile.TemporaryDirectory(prefix="verify-breakdown-") as folder:
        for index, (_name, rgb) in enumerate(images):
            for label, pixels in (("unmarked", rgb), ("marked", spectral.embed(rgb, robustness.PAYLOAD))):
                path = Path(folder) / f"{index}-{label}.png"
                Image.fromarray(pixels).save(path)
                read = _cpu_ms(lambda: np.asarray(Image.open(path).convert("RGB")), args.rounds)
                add("read PNG into pixels, PIL (the base)", label, read)
                safe = _cpu_ms(lambda: read_image(path), args.rounds)
                add("sdmark.core.io.read_image", label, safe)
                add("DWT schemes' shared work (U planes, Haar bands, block scores)", label,
                    _cpu_ms(lambda: prime(ImageView(pixels)), args.rounds))
                primed = prime(ImageView(pixels))
                for scheme in dwt_schemes:
                    add(f"{scheme.name}, its own part", label, _cpu_ms(lambda: scheme.detect(primed), args.rounds))
                together = _cpu_ms(lambda: verify_image(pixels, dwt_schemes), args.rounds)
                add(f"the {len(dwt_schemes)} DWT schemes together, one view", label, together)
                for scheme in others:
                    add(f"{scheme.name}, alone", label, _cpu_ms(lambda: scheme.detect(ImageView(pixels)), args.rounds))
                loaded = read_image(path)
                bare = verify_file(path, schemes, inspect=False, runtime=runtime)
                inspect = _cpu_ms(lambda: runtime.inspect_image(path=path, image=loaded.image, metadata=loaded.metadata,
                                                                report=dict(bare)), args.rounds)
                add("inspect hook (c2pa: embedded manifest, registry recovery)", label, inspect)
                total = _cpu_ms(lambda: verify_file(path, schemes, runtime=runtime), args.rounds)
                add("verify_file, default schemes", label, total)
                part = _cpu_ms(lambda: verify_file(path, but_spectral, runtime=runtime), args.rounds)
                add("verify_file, default schemes but sdmark", label, part)
                # what the steps above do not account for: the PIL-to-array copy, the report, and caches
                # the decode leaves cold for the schemes (each step alone runs warm)
                add("verify_file's own rest (but-sdmark total less read_image, DWT schemes, inspect)", label,
                    part - safe - together - inspect)
                add("total / read", label, total / read)
                add("total but sdmark / read", label, part / read)
                if index == 0:
                    reload_ms.append(_cpu_ms(lambda: verify_file(path, schemes), args.rounds) - total)
    print(f"### Where verify's time goes (`benchmarks/verify_breakdown.py --rounds {args.rounds} --images {args.images}`)\n")
    print(f"{len(images)} images, 512x512 PNG, one core, CPU time, median over images of the median of {args.rounds} "
          "rounds; each file's steps measured side by side.\n")
    print("| step | unmarked | marked |\n|---|---|---|")
    steps = dict.fromkeys(key.rsplit(" (", 1)[0] for key in rows)
    for step in steps:
        cells = []
        for label in ("unmarked", "marked"):
            values = rows[f"{step} ({label})"]
            unit = "x" if " / read" in step else " ms"
            median = statistics.median(values)
            cells.append(f"{median:.2f}{unit}" if median < 1 and unit == " ms" else f"{median:.1f}{unit}")
        print(f"| {step} | {cells[0]} | {cells[1]} |")
    print(f"\nverify_file called without a runtime loads the plugins on each call: "
          f"+{statistics.median(reload_ms):.1f} ms a file (`sdmark verify` and `sdmark serve` load them once).")


if __name__ == "__main__":
    main()
