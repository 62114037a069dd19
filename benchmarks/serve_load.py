"""Load on ``sdmark serve`` against in-process verify of the same images, side by side.

Usage: ``python benchmarks/serve_load.py [--duration 60] [--clients 16] [--workers 1]``

Makes a private identity and registry in a temp folder, marks and signs four photos (scikit-image),
keeps four unmarked ones and three bad uploads (text named .png, a PNG bomb header, a truncated
PNG). Then, on the same images:

* in-process: ``verify_file`` on the same mix, one file after another (what ``sdmark verify`` runs),
  timed for verified images per second and per CPU-second of this process;
* service: ``sdmark serve --port 0`` on 127.0.0.1 in a subprocess, ``--clients`` threads posting
  the mix (8 good : 3 bad) with keep-alive for ``--duration`` seconds (or ``--max-requests``).

Prints throughput, p50/p99 latency, status counts (5xx, 503 apart), the server's RSS (after start,
after a concurrent warm-up of two requests per client, through the run, at the end) and the ratio of verified images per server CPU-second to
in-process images per CPU-second: the target is >= 0.8x per core. Loopback only; bounded in time
and count.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

PHOTOS_MARKED = ("astronaut", "chelsea", "rocket", "coffee")
PHOTOS_PLAIN = ("camera", "cat", "immunohistochemistry", "hubble_deep_field")
BOUNDARY = "sdmarkloadboundary"


def _bomb() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))


def make_images(folder: Path) -> tuple[list[Path], list[tuple[str, bytes]]]:
    """Marked+signed and unmarked PNGs (the good ones) and the bad uploads, as (name, bytes)."""
    from PIL import Image
    from skimage import data

    from sdmark.core.chain import parse_chain
    from sdmark.core.output import OutputOptions
    from sdmark.core.process import process_images
    from sdmark.plugins.c2pa.identity import create_identity

    create_identity(folder / "keys", "Load Test Signer", "sdmark benchmark")
    sources = []
    for name in PHOTOS_MARKED:
        path = folder / "src" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(getattr(data, name)()).convert("RGB").save(path)
        sources.append(path)
    results = process_images(sources, parse_chain("watermark"), OutputOptions(directory=folder / "marked"),
                             safety="off", progress=False, warn=lambda message: None)
    good = [Path(r.path) for r in results if r.path]
    assert len(good) == len(PHOTOS_MARKED), [r.error for r in results]
    for name in PHOTOS_PLAIN:
        path = folder / f"plain-{name}.png"
        Image.fromarray(getattr(data, name)()).convert("RGB").save(path)
        good.append(path)
    buffer = io.BytesIO()
    Image.fromarray(data.coffee()).save(buffer, "PNG")
    bad = [("notes.png", b"this is a text file, not an image\n" * 20), ("bomb.png", _bomb()),
           ("truncated.png", buffer.getvalue()[: len(buffer.getvalue()) // 4])]
    return good, bad


def in_process(good: list[Path], bad: list[Path], rounds: int) -> dict[str, float]:
    """``verify_file`` over the same mix as the service gets (8 good : 3 bad), one after another."""
    from sdmark.plugins.watermark.verify import select_schemes, verify_file

    schemes = select_schemes()
    for path in good:  # warm-up: lazy imports and caches, as the server's start-up does
        verify_file(path, schemes)
    wall, cpu = time.perf_counter(), time.process_time()
    count = 0
    for _ in range(rounds):
        for path in good:
            assert verify_file(path, schemes)["error"] is None
            count += 1
        for path in bad:
            assert verify_file(path, schemes)["error"] is not None
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"images": count, "wall_s": wall, "cpu_s": cpu, "per_s": count / wall, "per_cpu_s": count / cpu}


def body(name: str, data: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


class Server:
    """``sdmark serve`` in a subprocess on 127.0.0.1 (port chosen by the OS)."""

    def __init__(self, env: dict[str, str], workers: int, queue: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sdmark.cli", "serve", "--port", "0", "--workers", str(workers), "--queue", str(queue)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.port = None
        deadline = time.monotonic() + 120
        while self.port is None and time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                raise SystemExit("sdmark serve exited before listening")
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            self.port = int(found.group(1)) if found else None
        threading.Thread(target=self._drain, daemon=True).start()
        while time.monotonic() < deadline:
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("sdmark serve did not become healthy")

    def _drain(self) -> None:
        for _ in self.process.stderr:  # uvicorn's access log; keep the pipe from filling
            pass

    def request(self, method: str, path: str, payload: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"} if payload else {}
            conn.request(method, path, body=payload, headers=headers)
            answer = conn.getresponse()
            return answer.status, answer.read()
        finally:
            conn.close()

    def usage(self) -> tuple[float, float]:
        """RSS (MB) and CPU seconds of the server and its worker processes."""
        import psutil

        root = psutil.Process(self.process.pid)
        rss, cpu = 0, 0.0
        for proc in [root, *root.children(recursive=True)]:
            try:
                info = proc.memory_info()
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            rss += info.rss
            cpu += times.user + times.system
        return rss / 1e6, cpu

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def load(port: int, mix: list[tuple[str, bytes, bool]], clients: int, duration: float, max_requests: int) -> dict:
    deadline = time.monotonic() + duration
    lock = threading.Lock()
    issued = 0
    results: list[tuple[int, float, bool]] = []

    def client(offset: int) -> None:
        nonlocal issued
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        index = offset
        while time.monotonic() < deadline:
            with lock:
                if issued >= max_requests:
                    break
                issued += 1
            name, payload, good = mix[index % len(mix)]
            index += 1
            started = time.perf_counter()
            try:
                conn.request("POST", "/v1/verify", body=payload,
                             headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
                answer = conn.getresponse()
                answer.read()
                status = answer.status
                if answer.getheader("connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException):
                status = -1
                conn.close()
            with lock:
                results.append((status, time.perf_counter() - started, good))

    threads = [threading.Thread(target=client, args=(i * 3,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"results": results, "wall_s": time.perf_counter() - started}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--max-requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=10, help="in-process rounds over the good images")
    args = parser.parse_args()
    if not (1 <= args.clients <= 64 and 0 < args.duration <= 600 and 1 <= args.workers <= 8):
        raise SystemExit("keep it bounded: 1-64 clients, at most 600 s, 1-8 workers")

    with tempfile.TemporaryDirectory(prefix="sdmark-serve-load-") as tmp:
        folder = Path(tmp)
        os.environ.update(SDMARK_KEYS_DIR=str(folder / "keys"), SDMARK_REGISTRY=str(folder / "registry.sqlite"),
                          SDMARK_TRUST_ANCHORS=str(folder / "keys" / "ca.pem"))
        print("preparing images ...", file=sys.stderr)
        good, bad = make_images(folder)
        mix = [(p.name, body(p.name, p.read_bytes()), True) for p in good] + [(n, body(n, d), False) for n, d in bad]
        print("in-process verify ...", file=sys.stderr)
        bad_paths = []
        for name, data in bad:
            (folder / "bad").mkdir(exist_ok=True)
            (folder / "bad" / name).write_bytes(data)
            bad_paths.append(folder / "bad" / name)
        local = in_process(good, bad_paths, args.rounds)

        env = dict(os.environ)
        server = Server(env, args.workers, queue=max(32, 2 * args.clients))
        try:
            rss_idle, _ = server.usage()
            # Warm-up, as in-process had: every upload at least once, with all clients at once, so that "start"
            # already holds the working set of concurrent uploads and RSS growth after it measures leaks.
            load(server.port, mix, args.clients, 60.0, max_requests=2 * max(len(mix), args.clients))
            rss_start, cpu_start = server.usage()
            print(f"load: {args.clients} clients for {args.duration:g} s ...", file=sys.stderr)
            samples: list[float] = []
            stop = threading.Event()

            def sample() -> None:  # RSS through the run: a plateau is caches and allocator arenas, a slope a leak
                while not stop.wait(args.duration / 6):
                    samples.append(server.usage()[0])

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            run = load(server.port, mix, args.clients, args.duration, args.max_requests)
            stop.set()
            sampler.join()
            rss_end, cpu_end = server.usage()
        finally:
            server.stop()

    results = run["results"]
    statuses: dict[int, int] = {}
    for status, _, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    verified = sum(1 for status, _, good in results if good and status == 200)
    latencies = [latency for _, latency, _ in results]
    good_latencies = [latency for status, latency, good in results if good and status == 200]
    server_cpu = cpu_end - cpu_start
    five_xx = sum(n for s, n in statuses.items() if s >= 500 and s != 503)
    per_cpu = verified / server_cpu if server_cpu else float("nan")
    cores = os.cpu_count() or 1
    print(f"machine: {cores} cores; server: {args.workers} worker(s); {args.clients} clients; {run['wall_s']:.1f} s of load")
    print()
    print(f"{'':28}{'in-process verify':>20}{'sdmark serve':>16}")
    print(f"{'images verified':28}{local['images']:>20}{verified:>16}")
    print(f"{'images / s (wall)':28}{local['per_s']:>20.2f}{verified / run['wall_s']:>16.2f}")
    print(f"{'CPU seconds used':28}{local['cpu_s']:>20.1f}{server_cpu:>16.1f}")
    print(f"{'images / CPU-second':28}{local['per_cpu_s']:>20.2f}{per_cpu:>16.2f}")
    print()
    print(f"requests: {len(results)} ({len(results) / run['wall_s']:.2f}/s), statuses {dict(sorted(statuses.items()))}")
    print(f"latency, all requests: p50 {percentile(latencies, 0.5) * 1000:.0f} ms, p99 {percentile(latencies, 0.99) * 1000:.0f} ms")
    print(f"latency, verified images: p50 {percentile(good_latencies, 0.5) * 1000:.0f} ms, "
          f"p99 {percentile(good_latencies, 0.99) * 1000:.0f} ms")
    print(f"5xx (other than 503): {five_xx}; 503 (saturated, by design): {statuses.get(503, 0)}; "
          f"failed connections: {statuses.get(-1, 0)}")
    growth = (rss_end / rss_start - 1) * 100
    print(f"server RSS: {rss_idle:.0f} MB after start, {rss_start:.0f} MB after the warm-up, {rss_end:.0f} MB at the end "
          f"({growth:+.1f}%, target <= +10%)")
    print(f"server RSS during the load (every {args.duration / 6:g} s): {', '.join(f'{mb:.0f}' for mb in samples)} MB")
    ratio = per_cpu / local["per_cpu_s"]
    print(f"service / in-process, images per CPU-second (per core): {ratio:.2f}x (target >= 0.8x)")
    print(f"service / in-process, wall throughput per server worker: {verified / run['wall_s'] / args.workers / local['per_s']:.2f}x")


if __name__ == "__main__":
    main()
