"""The sdmark spectral detector's time on one core, against another version of the code, side by side.

Usage: ``python benchmarks/detect_speed.py [--baseline DIR] [--pairs 3] [--runs 5] [--images 6]``

Times ``spectral.detect`` (CPU time, pinned to one core, OpenCV on one thread) on 512x512 photos and
illustrations of ``robustness.py``: unmarked, marked, marked and mirrored, marked and turned 10
degrees. Each image's time is the best of ``--runs`` runs (what a quiet core gives; single runs on a
shared machine move by 15% and more), and each row the median over images. ``--baseline`` is a
folder that holds another ``sdmark`` checkout (it goes on ``PYTHONPATH``, e.g. one made with ``git
worktree add /tmp/old/sdmark <commit>``); the two run in turns, ``--pairs`` times, each in its own
process, and the table gives both and their ratio. Each version marks the images itself. Results to
stdout (Markdown), progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
KINDS = ("unmarked", "marked", "marked, mirrored", "marked, turned 10 degrees")


def _worker(images: int, runs: int) -> None:
    sys.path.insert(0, str(HERE))
    import robustness as rb

    rb.one_core()
    from sdmark.plugins.watermark import spectral

    originals = [image for _, image in rb.photos(images) + rb.illustrations(images)]
    marked = [spectral.embed(image, rb.PAYLOAD) for image in originals]
    groups = dict(zip(KINDS, (originals, marked, [np.ascontiguousarray(m[:, ::-1]) for m in marked],
                              [rb._rotate(m, 10.0) for m in marked])))
    out = {}
    for kind, group in groups.items():
        best = []
        for image in group:
            spectral.detect(image)
            times = []
            for _ in range(runs):
                start = time.process_time()
                spectral.detect(image)
                times.append(time.process_time() - start)
            best.append(min(times))
        out[kind] = 1e3 * statistics.median(best)
    print(json.dumps(out))


def _run(tree: str, args: argparse.Namespace) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=tree)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--images", str(args.images), "--runs", str(args.runs)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="folder holding the other sdmark checkout (put on PYTHONPATH)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--images", type=int, default=6, help="photos and illustrations each (default 6)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.images, args.runs)
        return
    this = str(HERE.parent.parent)  # the folder that holds this checkout, as the package "sdmark"
    trees = [("this", this)] + ([("baseline", str(Path(args.baseline).resolve()))] if args.baseline else [])
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in trees}
    for pair in range(args.pairs):
        for name, tree in (trees if pair % 2 == 0 else trees[::-1]):
            print(f"[pair {pair + 1}/{args.pairs}] {name}", file=sys.stderr)
            results[name].append(_run(tree, args))
    print(f"### sdmark spectral detect, one core, CPU time (`benchmarks/detect_speed.py --pairs {args.pairs} "
          f"--runs {args.runs} --images {args.images}`)\n")
    print(f"{2 * args.images} images at 512x512; per image the best of {args.runs} runs, per row the median "
          f"over images; one value per run of each version.\n")
    if not args.baseline:
        print("| detect, ms | this |\n|---|---|")
        for kind in KINDS:
            print(f"| {kind} | {', '.join(f'{r[kind]:.1f}' for r in results['this'])} |")
        return
    print("| detect, ms | baseline | this | baseline / this |\n|---|---|---|---|")
    for kind in KINDS:
        base = [r[kind] for r in results["baseline"]]
        ours = [r[kind] for r in results["this"]]
        ratios = [b / o for b, o in zip(base, ours)]
        print(f"| {kind} | {', '.join(f'{v:.1f}' for v in base)} | {', '.join(f'{v:.1f}' for v in ours)} | "
              f"{min(ratios):.2f}-{max(ratios):.2f} |")


if __name__ == "__main__":
    main()
