"""Per-request cost of ``POST /v1/mark``, side by side: the safety model loaded for every request
(what the engine did before it kept it) against the engine's one load per worker process, and
marking without the safety stage (``--mark-no-safety``).

The three are interleaved request by request in one process (Starlette's test client, the real
application and engine), so that machine noise hits them alike. "reloaded" forgets the engine's
kept resources before each of its requests (``runtime.close_resources()``), which makes the chain
load NudeNet's ONNX session again, exactly as a request did when the backend lived in the
request's own run. Prints the median milliseconds per request of each and the ratios.

    .venv/bin/python benchmarks/serve_mark.py [--requests 15] [--size 512]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

TOKEN = "benchmark token"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=15, help="requests of each kind (default 15)")
    parser.add_argument("--size", type=int, default=512, help="side of the uploaded photo in pixels")
    args = parser.parse_args()
    if not (1 <= args.requests <= 200 and 256 <= args.size <= 2048):
        raise SystemExit("keep it bounded: 1-200 requests, 256-2048 px")

    from PIL import Image
    from skimage import data
    from starlette.testclient import TestClient

    from sdmark.plugins.c2pa.identity import create_identity
    from sdmark.serve.app import create_app
    from sdmark.serve.settings import ServeSettings

    with tempfile.TemporaryDirectory(prefix="sdmark-serve-mark-") as tmp:
        folder = Path(tmp)
        os.environ.update(SDMARK_KEYS_DIR=str(folder / "keys"), SDMARK_REGISTRY=str(folder / "registry.sqlite"),
                          SDMARK_TRUST_ANCHORS=str(folder / "keys" / "ca.pem"))
        create_identity(folder / "keys", "Mark Benchmark Signer", "sdmark benchmark")
        buffer = io.BytesIO()
        Image.fromarray(data.astronaut()).convert("RGB").resize((args.size, args.size)).save(buffer, "PNG")
        upload = {"file": ("photo.png", buffer.getvalue(), "image/png")}
        auth = {"Authorization": f"Bearer {TOKEN}"}
        kinds = ("reloaded", "kept", "no safety")
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        with TestClient(create_app(ServeSettings(token=TOKEN))) as safe, \
                TestClient(create_app(ServeSettings(token=TOKEN, mark_no_safety=True))) as unsafe:
            for client in (safe, unsafe):  # warm: imports, the first model load, the signer
                assert client.post("/v1/mark", files=upload, headers=auth).status_code == 200
            print(f"{args.requests} requests of each kind, {args.size}x{args.size} PNG ...", file=sys.stderr)
            for _ in range(args.requests):
                for kind in kinds:
                    client = unsafe if kind == "no safety" else safe
                    if kind == "reloaded":
                        client.app.state.engine.runtime.close_resources()
                    started = time.perf_counter()
                    response = client.post("/v1/mark", files=upload, headers=auth)
                    times[kind].append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text
    median = {kind: statistics.median(values) * 1000 for kind, values in times.items()}
    print(f"POST /v1/mark, {args.size}x{args.size} PNG, median of {args.requests} requests each:")
    for kind in kinds:
        print(f"  {kind:<30} {median[kind]:8.1f} ms")
    print(f"  safety model kept vs reloaded per request: {median['reloaded'] / median['kept']:.2f}x faster")
    print(f"  safety stage's cost per request now:       {median['kept'] - median['no safety']:.1f} ms "
          f"(was {median['reloaded'] - median['no safety']:.1f} ms)")


if __name__ == "__main__":
    main()
