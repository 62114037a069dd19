"""Peak memory per pixel of ``process`` (watermark + sign) and ``verify`` on large images.

Each case runs in a fresh subprocess. The subprocess imports everything and runs the same work once
on a small image (so lazy imports, plugin loading and library caches are in the baseline), then
resets the kernel's peak-RSS counter (``/proc/self/clear_refs``), reads its RSS as the baseline,
runs the case and reads the peak (``VmHWM``). The figure is ``(peak - baseline) / pixels``.

Targets (issue 16): process <= 16 bytes per pixel, verify <= 8. As a yardstick the table also
shows the one copy nobody can avoid: the decoded RGB image is 3 bytes per pixel.

Images: ``photo`` is a real photograph (scikit-image's astronaut) enlarged to the size with
fine noise, as a camera file would have; ``flat`` is a smooth gradient that zlib packs into a few
hundred KB (the 99.8 MP PNG of the issue is of this kind: a small file, a large image).

Run:  python benchmarks/memory.py [--sizes 2000x2000:photo,8000x8000:photo,10000x9980:flat]
      python benchmarks/memory.py --trace process 2000x2000:photo   (tracemalloc top allocations)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TARGETS = {"process": 16.0, "verify": 8.0}
DEFAULT_SIZES = "2000x2000:photo,8000x8000:photo,10000x9980:flat"


def _status(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def make_image(path: Path, width: int, height: int, kind: str) -> None:
    """Write the test image as PNG, built in horizontal bands so that making it stays small."""
    import numpy as np
    from PIL import Image

    if kind == "flat":
        x = np.linspace(0, 255, width, dtype=np.float32)
        image = Image.new("RGB", (width, height))
        band = 1000
        for top in range(0, height, band):
            rows = min(band, height - top)
            y = np.linspace(top, top + rows - 1, rows, dtype=np.float32)[:, None] * (255.0 / height)
            red = np.broadcast_to(x[None, :], (rows, width))
            green = np.broadcast_to(y, (rows, width))
            blue = (red + green) / 2
            block = np.stack([red, green, blue], axis=-1).astype(np.uint8)
            image.paste(Image.fromarray(block, "RGB"), (0, top))
    else:
        from skimage import data

        image = Image.fromarray(data.astronaut()).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        rng = np.random.default_rng(0)
        band = 1000
        for top in range(0, height, band):
            box = (0, top, width, min(height, top + band))
            block = np.asarray(image.crop(box), dtype=np.int16)
            block = block + rng.integers(-6, 7, size=block.shape, dtype=np.int16)
            image.paste(Image.fromarray(np.clip(block, 0, 255).astype(np.uint8), "RGB"), box[:2])
    image.save(path, compress_level=1 if kind == "photo" else 6)


def _child(case: str, source: Path, warm: Path, work: Path, trace: bool) -> None:
    os.environ["SDMARK_KEYS_DIR"] = str(work / "keys")
    os.environ["SDMARK_REGISTRY"] = str(work / "registry.sqlite")
    os.environ["SDMARK_MAX_PIXELS"] = str(400_000_000)
    from sdmark.core.chain import Chain
    from sdmark.core.output import OutputOptions
    from sdmark.core.process import process_images
    from sdmark.plugins.watermark.verify import verify_file

    if not (work / "keys").exists():
        from sdmark.plugins.c2pa.identity import create_identity

        create_identity(work / "keys", "memory bench")

    def run(path: Path, out: Path) -> dict:
        if case == "process":
            results = process_images([path], Chain.build("watermark"), OutputOptions(out, overwrite=True),
                                     safety="off", progress=False, warn=lambda message: None)
            return {"status": results[0].status, "error": results[0].error,
                    "output": str(results[0].path) if results[0].path else None}
        report = verify_file(path)
        return {"status": "ok" if report["error"] is None else "failed", "error": report["error"],
                "watermarked": report["watermarked"]}

    run(warm, work / "warm-out")
    if trace:
        import tracemalloc

        tracemalloc.start(25)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    baseline = _status("VmRSS")
    result = run(source, work / "out")
    peak = _status("VmHWM")
    if trace:
        snapshot = tracemalloc.take_snapshot()
        _, traced_peak = tracemalloc.get_traced_memory()
        result["tracemalloc_peak"] = traced_peak
        result["top"] = [str(stat) for stat in snapshot.statistics("lineno")[:12]]
    result.update(baseline=baseline, peak=peak)
    print(json.dumps(result))


def _measure(case: str, source: Path, warm: Path, work: Path, trace: bool = False) -> dict:
    env = dict(os.environ)
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, __file__, "--child", case, str(source), str(warm), str(work)]
                          + (["--trace-child"] if trace else []),
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{case} on {source.name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="WIDTHxHEIGHT:photo|flat, comma separated")
    parser.add_argument("--cases", default="process,verify")
    parser.add_argument("--trace", nargs=2, metavar=("CASE", "SIZE"), help="tracemalloc's top lines for one case")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--trace-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        case, source, warm, work = args.child
        _child(case, Path(source), Path(warm), Path(work), args.trace_child)
        return

    work = Path(tempfile.mkdtemp(prefix="sdmark-memory-"))
    warm = work / "warm.png"
    make_image(warm, 512, 512, "photo")
    specs = [args.trace[1]] if args.trace else args.sizes.split(",")
    cases = [args.trace[0]] if args.trace else args.cases.split(",")
    print(f"{'image':<20} {'MP':>6} {'file MB':>8} {'case':<8} {'peak-base MB':>12} {'B/px':>6} {'target':>6}  result")
    failed = False
    for spec in specs:
        size, _, kind = spec.partition(":")
        width, height = (int(v) for v in size.lower().split("x"))
        source = work / f"{width}x{height}-{kind or 'photo'}.png"
        make_image(source, width, height, kind or "photo")
        pixels = width * height
        for case in cases:
            # verify reads what process wrote (a marked, signed file), as a user would.
            path = source
            if case == "verify":
                marked = _measure("process", source, warm, work)
                path = Path(marked["output"]) if marked.get("output") else source
            result = _measure(case, path, warm, work, trace=bool(args.trace))
            per_pixel = (result["peak"] - result["baseline"]) / pixels
            target = TARGETS[case]
            ok = per_pixel <= target
            failed |= not ok
            outcome = result["status"] + (f" ({result['error'][:60]})" if result.get("error") else "")
            print(f"{spec:<20} {pixels / 1e6:>6.1f} {source.stat().st_size / 1e6:>8.1f} {case:<8} "
                  f"{(result['peak'] - result['baseline']) / 1e6:>12.0f} {per_pixel:>6.1f} {target:>6.0f}  "
                  f"{'ok' if ok else 'OVER'}  {outcome}", flush=True)
            if args.trace:
                print(f"tracemalloc peak {result['tracemalloc_peak'] / 1e6:.0f} MB; top lines at the end:")
                print("\n".join(result["top"]))
    print("decoded RGB alone is 3 B/px; figures are peak RSS above the warmed-up interpreter")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
