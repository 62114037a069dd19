"""What Content Credentials cost per image: signing on write, reading and judging on verify.

Baselines, measured interleaved with ours in the same loop (the machine is shared and noisy):

- sign:   encoding the image with its metadata (what ``generate``/``process`` write anyway) versus
          signing that file in place (manifest, signature, registry entry), i.e. the added cost;
- verify: decoding the image (what ``verify`` does anyway) versus reading and judging its
          manifest with one trust anchor; and the registry recovery of a stripped copy.

Run:  python benchmarks/c2pa_cost.py [--size 512] [--rounds 30]
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
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (SD 1.5: 512)")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sdmark-c2pa-bench-"))
    os.environ["SDMARK_KEYS_DIR"] = str(work / "keys")
    os.environ["SDMARK_REGISTRY"] = str(work / "registry.sqlite")
    for name in ("SDMARK_SIGN_CERT", "SDMARK_SIGN_KEY", "SDMARK_SIGN_COMMAND", "SDMARK_SIGN_CALLBACK", "SDMARK_SIGN"):
        os.environ.pop(name, None)

    from sdmark.core.io import read_image
    from sdmark.core.metadata import TRAINED_ALGORITHMIC_MEDIA, build_xmp, save_with_metadata
    from sdmark.core.records import ProvenanceRecord
    from sdmark.core.stages import ImageItem, RunContext
    from sdmark.plugins.c2pa.identity import create_identity
    from sdmark.plugins.c2pa.settings import set_trust_anchors
    from sdmark.plugins.c2pa.sign import sign_output
    from sdmark.plugins.c2pa.verify import inspect_credentials

    identity = create_identity(work / "keys", "bench signer")
    set_trust_anchors([identity.ca])
    rng = np.random.default_rng(0)
    # A smooth image with texture, closer to a generated picture than noise (noise bloats PNG).
    y, x = np.mgrid[0:args.size, 0:args.size] / args.size
    base = np.stack([np.sin(6 * x + 3 * y), np.cos(5 * y), np.sin(4 * x * y + 1)], axis=-1)
    pixels = ((base + 1) * 110 + rng.normal(0, 6, base.shape)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    context = RunContext(mode="generate", warn=lambda message: print(message, file=sys.stderr))

    print(f"{args.size}x{args.size}, {args.rounds} rounds, median ms per image (c2pa-python, ES256, no thumbnails)")
    print(f"{'format':<6} {'encode':>8} {'+sign':>8} {'sign/enc':>9} {'decode':>8} {'+verify':>8} {'recover':>8} {'bytes+':>8}")
    for fmt, suffix in (("PNG", ".png"), ("JPEG", ".jpg"), ("WEBP", ".webp")):
        times: dict[str, list[float]] = {"encode": [], "sign": [], "decode": [], "verify": [], "recover": []}
        growth = []
        for index in range(args.rounds):
            record = ProvenanceRecord(kind="generated", safety="checked",
                                      generation={"prompt": "a lighthouse", "seed": index, "model": "bench/model"})
            payload = f"{index:04x}{fmt.lower():>4}".replace(" ", "0").encode().hex()[:16]
            record.add("watermark", "process", {"method": "dwtDctSvd"}, {"scheme": "sdmark-dwtDctSvd", "payload": payload})
            item = ImageItem(image=image, record=record, name=f"img{index}")
            path = work / f".img{index}.{index:08x}.tmp{suffix}"
            xmp = build_xmp(record, TRAINED_ALGORITHMIC_MEDIA)

            start = time.perf_counter()
            save_with_metadata(image, path, fmt, parameters="a lighthouse\nSteps: 30", record=record, xmp=xmp)
            times["encode"].append(time.perf_counter() - start)
            unsigned = path.stat().st_size

            start = time.perf_counter()
            assert sign_output(path, item, context)
            times["sign"].append(time.perf_counter() - start)
            growth.append(path.stat().st_size - unsigned)

            start = time.perf_counter()
            read_image(path)
            times["decode"].append(time.perf_counter() - start)

            start = time.perf_counter()
            found = inspect_credentials(path)
            times["verify"].append(time.perf_counter() - start)
            assert found["status"] == "valid", found

            stripped = work / f"stripped{index}.png"
            Image.open(path).save(stripped)
            detection = [{"scheme": "sdmark-dwtDctSvd", "p_value": 1e-12, "payload": payload, "band": "very likely"}]
            start = time.perf_counter()
            recovered = inspect_credentials(stripped, detection, Image.open(stripped))
            times["recover"].append(time.perf_counter() - start)
            assert recovered["recovered_from_registry"], recovered  # matched: the content compared
            for file in (path, stripped):
                file.unlink()
        ms = {key: statistics.median(values) * 1000 for key, values in times.items()}
        print(f"{fmt:<6} {ms['encode']:8.1f} {ms['sign']:8.1f} {ms['sign'] / ms['encode']:9.2f} {ms['decode']:8.1f} "
              f"{ms['verify']:8.1f} {ms['recover']:8.1f} {statistics.median(growth):8.0f}")


if __name__ == "__main__":
    main()
