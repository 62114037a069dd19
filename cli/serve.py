"""``sdmark serve``: the detection tool as an HTTP API and a web page (``pip install 'sdmark[serve]'``)."""

from __future__ import annotations

import inspect
import os
import shutil
import socket
import tempfile
from pathlib import Path

import click

from sdmark.cli.main import cli
from sdmark.core.errors import SdmarkError
from sdmark.plugins.c2pa.settings import trust_anchors_option

MISSING = "sdmark serve needs its extra: pip install 'sdmark[serve]'"


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 exposes it to the network).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: any free port).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes; each loads the schemes once.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Verifications at once in each worker (CPU-bound: more workers scale better).")
@click.option("--queue", type=click.IntRange(min=0), default=32, show_default=True,
              help="Requests per worker that may wait for a thread; past that the answer is 503 with Retry-After.")
@click.option("--receiving", type=click.IntRange(min=1), default=64, show_default=True,
              help="Uploads per worker that may be arriving at once (they hold no CPU place); past that, 503.")
@click.option("--min-upload-rate", "min_upload_kib", type=click.FloatRange(min=0), default=16.0, show_default=True,
              help="KiB/s an upload must average after its grace period, else 408 (0: only --timeout applies).")
@click.option("--upload-grace", "upload_grace_s", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds an upload may go before the minimum rate applies (an idle connection is dropped then).")
@click.option("--max-upload-mb", type=click.FloatRange(min=0.001), default=25.0, show_default=True,
              help="Largest upload; a larger body is answered 413 as soon as it passes the limit.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds an upload may take to arrive (else 408), and its check, queue included (else 504).")
@click.option("--token-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="File with the bearer token that turns on POST /v1/mark (or set SDMARK_SERVE_TOKEN).")
@click.option("--mark-chain", default="watermark", show_default=True,
              help="The chain POST /v1/mark runs; 'safety' is added first unless --mark-no-safety.")
@click.option("--mark-no-safety", is_flag=True, help="Mark without the safety stage (recorded in each image's metadata).")
@click.option("--store-uploads", "store_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Opt in: keep a copy of every upload here, named by its SHA-256 (default: nothing is kept).")
@click.option("--log-images", is_flag=True, help="Opt in: log each upload's name, size and SHA-256.")
@click.option("--trust", "trust", multiple=True, type=click.Path(dir_okay=False, path_type=Path), metavar="CA.pem",
              callback=trust_anchors_option, expose_value=False,
              help="Trust anchor for Content Credentials (repeatable; adds to SDMARK_TRUST_ANCHORS).")
@click.option("--trust-own/--no-trust-own", default=True, show_default=True,
              help="Trust this machine's own signing CA (from `sdmark keys init`) when it has one.")
def serve_command(host: str, port: int, workers: int, threads: int, queue: int, receiving: int, min_upload_kib: float,
                  upload_grace_s: float, max_upload_mb: float, timeout_s: float, token_file: Path | None, mark_chain: str, mark_no_safety: bool,
                  store_dir: Path | None, log_images: bool, trust_own: bool) -> None:
    """Serve the verify report over HTTP: POST /v1/verify, the page at /, the API at /docs.

    Uploads are checked in memory and private temp files that are deleted when the request ends;
    nothing is fetched from URLs. Prints the address it listens on to stderr.
    """
    try:
        import uvicorn
        from uvicorn.supervisors import Multiprocess

        import sdmark.serve.app  # noqa: F401  (fails here, not in a worker, when the extra is missing)
    except ImportError as exc:
        raise SdmarkError(f"{MISSING} ({exc.name} is missing)") from None
    from sdmark.plugins.c2pa import settings as c2pa_settings
    from sdmark.serve.settings import ServeSettings, read_token_file

    token = read_token_file(token_file) if token_file else (os.environ.get("SDMARK_SERVE_TOKEN") or None)
    settings = ServeSettings(max_upload_bytes=int(max_upload_mb * 1024 * 1024), timeout_s=timeout_s, threads=threads,
                             queue=queue, receiving=receiving, min_upload_rate=int(min_upload_kib * 1024),
                             upload_grace_s=upload_grace_s, token=token, mark_chain=mark_chain, mark_no_safety=mark_no_safety,
                             store_dir=store_dir, log_images=log_images)
    settings.check()
    own_ca = c2pa_settings.keys_dir() / "ca.pem"
    if trust_own and own_ca.is_file() and own_ca not in c2pa_settings.trust_anchor_paths():
        c2pa_settings.set_trust_anchors([*c2pa_settings.trust_anchor_paths(), own_ca])
        click.echo(f"sdmark serve: trusting this machine's signing CA {own_ca} (--no-trust-own to stop)", err=True)
    os.environ.update(settings.to_env())  # worker processes build their app from these
    metrics_dir = None
    if workers > 1:
        metrics_dir = tempfile.mkdtemp(prefix="sdmark-serve-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    sock = _bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    if host not in ("127.0.0.1", "::1", "localhost"):
        click.echo(f"sdmark serve: warning: listening on {host}, reachable from other machines", err=True)
    click.echo(f"sdmark serve: listening on http://{_url_host(bound_host)}:{bound_port} "
               f"({workers} worker(s), mark {'on' if token else 'off'})", err=True)
    config = uvicorn.Config("sdmark.serve.app:app_from_environment", factory=True, host=host, port=bound_port,
                            workers=workers, log_level="info", server_header=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    try:
        if workers > 1:
            # uvicorn's supervisor took the worker target until recent releases; it now builds it itself.
            target = {"target": server.run} if "target" in inspect.signature(Multiprocess).parameters else {}
            Multiprocess(config, sockets=[sock], **target).run()
        else:
            server.run(sockets=[sock])
    finally:
        sock.close()
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SdmarkError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


__all__ = ["serve_command"]
