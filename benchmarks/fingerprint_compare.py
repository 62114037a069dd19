"""``fingerprint.compare()`` against the one of an earlier commit, side by side: the same answers, the time.

Loads ``plugins/c2pa/fingerprint.py`` as it was at ``--baseline`` (``git show``) next to the current
one, fingerprints photos and flat illustrations (the robustness benchmark's, 512²) and compares
each with its genuine copies (every benign attack of the robustness benchmark), its local edits and
a drawn edit (the attribution benchmark's), an unrelated image, with and without a watermark scale.
It checks that both give the same verdict and the same list of changes for every case, and the
same JSON report (rounded as reports are), then times both interleaved, case by case (the fastest
of ``--repeats`` each, so other load on a shared machine does not count), and prints the medians.

    .venv/bin/python benchmarks/fingerprint_compare.py --baseline c0b7769 [--images 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def baseline_module(revision: str, folder: Path) -> Any:
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:plugins/c2pa/fingerprint.py"],
                            check=True, capture_output=True, text=True).stdout
    path = folder / "fingerprint_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("fingerprint_baseline", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]  (dataclasses look their module up)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def cases(count: int) -> list[tuple[np.ndarray, Any, float | None]]:
    """(signed pixels, test image, watermark scale) for every copy of every image."""
    from PIL import Image

    from sdmark.benchmarks.attribution import LOCAL_EDITS, draw_edit, local_edit
    from sdmark.benchmarks.robustness import ATTACKS, illustrations, photos

    rng = np.random.default_rng(5)
    images = [np.asarray(image) for _, image in photos(count // 2) + illustrations(count - count // 2)]
    out = []
    for i, image in enumerate(images):
        other = images[(i + 1) % len(images)]
        copies = [image, other, draw_edit(image, rng)] + [local_edit(image, kind, other) for kind in LOCAL_EDITS]
        copies += [ATTACKS[name](image, rng) for name in ATTACKS]
        for n, copy in enumerate(copies):
            test = Image.fromarray(np.ascontiguousarray(copy))
            out.append((image, test, None))
            if n < 4:  # a scale from the watermark's synchronisation, as verify passes it
                out.append((image, test, 1.0))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="the git revision whose compare() is the baseline")
    parser.add_argument("--images", type=int, default=4, help="images (half photos, half illustrations)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not (2 <= args.images <= 24 and 1 <= args.repeats <= 50):
        raise SystemExit("keep it bounded: 2-24 images, 1-50 repeats")
    import cv2

    cv2.setNumThreads(1)
    from sdmark.plugins.c2pa import fingerprint as current

    with tempfile.TemporaryDirectory(prefix="sdmark-fingerprint-compare-") as tmp:
        before = baseline_module(args.baseline, Path(tmp))
        work = cases(args.images)
        prints: dict[int, tuple[Any, Any]] = {}
        for signed, _, _ in work:
            if id(signed) not in prints:
                prints[id(signed)] = (before.fingerprint(signed), current.fingerprint(signed))
        differences = 0
        for signed, test, scale in work:
            old, new = (module.compare(fp, test, scale) for module, fp in zip((before, current), prints[id(signed)]))
            if (old.matched, old.changes, old.to_json()) != (new.matched, new.changes, new.to_json()):
                differences += 1
                print(f"DIFFERENT: {old.to_json()} / {new.to_json()}", file=sys.stderr)
        times: dict[str, list[float]] = {"baseline": [], "now": []}
        for signed, test, scale in work:
            best = {"baseline": float("inf"), "now": float("inf")}
            for _ in range(args.repeats):
                for label, module, fp in zip(("baseline", "now"), (before, current), prints[id(signed)]):
                    started = time.perf_counter()
                    module.compare(fp, test, scale)
                    best[label] = min(best[label], time.perf_counter() - started)
            for label in times:
                times[label].append(best[label] * 1000)
    old_ms, new_ms = statistics.median(times["baseline"]), statistics.median(times["now"])
    print(f"fingerprint.compare(), {len(work)} cases ({args.images} images 512², genuine copies, local edits, "
          f"unrelated), one thread:")
    print(f"  same verdict, changes and report: {len(work) - differences}/{len(work)}")
    print(f"  median of the fastest of {args.repeats}: baseline {args.baseline} {old_ms:.2f} ms, now {new_ms:.2f} ms, "
          f"{old_ms / new_ms:.2f}x")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
