"""What `sdmark verify --all-schemes` costs per image against the default schemes (the figure in its help).

    python benchmarks/verify_costly_schemes.py

Four scikit-image photos written as PNG; each scheme set runs once on one image first so model
loading is not counted. Prints seconds per image for each set and their ratio.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from PIL import Image
from skimage import data

from sdmark.plugins.watermark.verify import select_schemes, verify_file


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sdmark-verify-bench-") as folder:
        paths = []
        for number, array in enumerate([data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]):
            path = Path(folder) / f"photo{number}.png"
            Image.fromarray(array).convert("RGB").save(path)
            paths.append(str(path))
        timings = {}
        for name, schemes in (("default", select_schemes((), False)), ("--all-schemes", select_schemes((), True))):
            verify_file(paths[0], schemes)
            started = time.perf_counter()
            for path in paths:
                verify_file(path, schemes)
            timings[name] = (time.perf_counter() - started) / len(paths)
            print(f"{name:<14} {timings[name]:.3f} s an image")
        print(f"--all-schemes costs {timings['--all-schemes'] / timings['default']:.0f}x the default schemes")


if __name__ == "__main__":
    main()
