"""The per-worker engine: schemes loaded once, CPU work in a bounded thread pool, each request's
temp folder and admission place released when its work ends."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

from sdmark.core.errors import SdmarkError
from sdmark.serve.limits import Gate
from sdmark.serve.settings import ServeSettings
from sdmark.serve.uploads import Upload

T = TypeVar("T")


class WorkTimeout(Exception):
    """The request's work did not finish within the per-request timeout."""


class Ticket:
    """One place at a gate and the request's private temp folder, both released once (by the
    request if its work never started, else when the work ends, even after a timeout). The folder
    can be handed on to the next ticket (from receiving the upload to checking it) instead."""

    def __init__(self, gate: Gate, folder: Path | None = None) -> None:
        self._gate = gate
        self._folder = folder
        self._lock = threading.Lock()
        self._released = False
        self.submitted = False

    @property
    def folder(self) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="sdmark-serve-"))  # mode 0700
        return self._folder

    def hand_over(self) -> Path:
        """The folder, now the caller's to release (this ticket no longer deletes it)."""
        folder, self._folder = self.folder, None
        return folder

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
        self._gate.leave()


class Engine:
    """What one worker process loads once and every request shares: the schemes, the pool, the gates
    (``receiving`` for bodies on their way in, ``gate`` for CPU work)."""

    def __init__(self, settings: ServeSettings) -> None:
        from sdmark.core.runtime import Runtime
        from sdmark.plugins.watermark.verify import select_schemes

        self.runtime = Runtime.load()
        self.settings = settings
        self.schemes = select_schemes(runtime=self.runtime)
        self.gate = Gate(settings.threads, settings.queue)
        self.receiving = Gate(settings.receiving, 0)
        self.pool = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="sdmark-serve")
        self.mark_chain = _mark_chain(settings) if settings.token else None

    def warm_up(self) -> None:
        """Run one verification so that lazy imports and caches are paid for before the first request."""
        import numpy as np
        from PIL import Image

        with tempfile.TemporaryDirectory(prefix="sdmark-serve-warm-") as folder:
            path = Path(folder) / "warm.png"
            Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(path)
            self.verify_path(path, "warm.png")

    def receive_place(self) -> Ticket | None:
        """A place for one request's body to arrive in, or None when too many are arriving (503)."""
        return Ticket(self.receiving) if self.receiving.try_enter() else None

    def admit(self, folder: Path | None = None) -> Ticket | None:
        """A ticket for one request's CPU work (owning ``folder`` from then on), or None when the
        server is saturated (answer 503; ``folder`` stays the caller's)."""
        return Ticket(self.gate, folder) if self.gate.try_enter() else None

    async def run(self, ticket: Ticket, job: Callable[[], T]) -> T:
        """Run ``job`` in the pool; the ticket is released when it ends. Raises :class:`WorkTimeout`."""
        future: Future[T] = self.pool.submit(job)
        ticket.submitted = True
        future.add_done_callback(lambda _: ticket.release())
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=self.settings.timeout_s)
        except asyncio.TimeoutError:
            future.cancel()  # drops it if still queued; a running verification finishes on its own
            raise WorkTimeout(f"the check took longer than {self.settings.timeout_s:g} s") from None

    def verify_path(self, path: Path, name: str) -> dict[str, Any]:
        """``sdmark verify --json``'s report for the file at ``path``, shown under ``name``."""
        from sdmark.plugins.watermark.verify import verify_file

        return without_server_paths(renamed(verify_file(path, self.schemes, runtime=self.runtime), str(path), name))

    def verify_uploads(self, uploads: list[Upload]) -> list[dict[str, Any]]:
        return [self.verify_path(upload.path, upload.name) for upload in uploads]

    def mark(self, upload: Upload, folder: Path, fmt: str) -> tuple[bytes, dict[str, Any]]:
        """Run the operator's mark chain on the upload; the written file's bytes and its record.
        Raises :class:`SdmarkError` (its message without server paths) when the chain refuses or fails it."""
        warnings: list[str] = []
        out = folder / "out"
        assert self.mark_chain is not None, "marking is off without a token"
        try:
            return self._mark(upload, out, fmt, warnings)
        except SdmarkError as exc:  # the chain refused or failed the image: said without server paths
            raise SdmarkError(without_server_paths(renamed(renamed(str(exc), str(upload.path), upload.name),
                                                           f"{folder}/", ""))) from None

    def _mark(self, upload: Upload, out: Path, fmt: str, warnings: list[str]) -> tuple[bytes, dict[str, Any]]:
        from sdmark.core.chain import parse_chain
        from sdmark.core.output import OutputOptions
        from sdmark.core.process import process_images

        assert self.mark_chain is not None
        results = process_images([upload.path], parse_chain(self.mark_chain, self.runtime), OutputOptions(directory=out, format=fmt),
                                 safety="off" if self.settings.mark_no_safety else "on", batch_size=1, device="cpu",
                                 progress=False, warn=warnings.append,
                                 # The safety model, signing context and registry writer stay loaded for
                                 # the next request; the engine closes them at shutdown (close()).
                                 keep_resources=True)
        result = results[0]
        if result.status != "written" or result.path is None:
            raise SdmarkError(renamed(result.error or f"not written ({result.status})", str(upload.path), upload.name))
        record = result.record.to_dict() if result.record else None
        summary = {"name": upload.name, "status": result.status, "record": record,
                   "notes": renamed(result.item.notes if result.item else [], str(upload.path), upload.name),
                   "warnings": renamed(warnings, str(upload.path), upload.name)}
        return Path(result.path).read_bytes(), summary

    def close(self) -> None:
        """Drop the queued work, wait for the running work (a request that timed out leaves its
        job running), then close what every request shared: registry session and writer, SDK
        contexts, safety model. Closed earlier, a running job would write through a closed writer
        (reopened, never closed) or sign with a freed context."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.runtime.close_resources()


def _mark_chain(settings: ServeSettings) -> str:
    """The chain ``/v1/mark`` runs: the operator's, with 'safety' first unless they turned it off
    explicitly (``--mark-no-safety``), as ``sdmark process`` does. Fails at start-up, not on the
    first request, when it names an unknown stage or option."""
    from sdmark.core.chain import parse_chain

    chain = parse_chain(settings.mark_chain)
    has_safety = any(stage.checks_safety for stage in chain.stages)
    spec = settings.mark_chain
    if settings.mark_no_safety:
        if has_safety:
            raise SdmarkError("serve: --mark-no-safety, but the mark chain has a safety stage; remove one or the other")
    elif not has_safety:
        spec = f"safety {spec}".strip()
        parse_chain(spec)
    return spec


def renamed(value: Any, private: str, public: str) -> Any:
    """``value`` with every mention of the private temp path replaced by the client's display name,
    so no server path reaches a response and the report reads like ``verify`` on that file."""
    return _rewritten(value, lambda text: text.replace(private, public))


def _rewritten(value: Any, rewrite: Callable[[str], str]) -> Any:
    """``value`` (JSON-like) with ``rewrite`` applied to every string in it."""
    if isinstance(value, str):
        return rewrite(value)
    if isinstance(value, dict):
        return {key: _rewritten(item, rewrite) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rewritten(item, rewrite) for item in value]
    return value


def without_server_paths(report: Any) -> Any:
    """``report`` with the server's own files (its registry, its trust anchors, its keys) named by
    their file name only, and a database registry by no address at all (no user, host or port,
    which its connection errors quote): a client learns which anchor or registry answered, not
    where they live on the server."""
    import re

    from sdmark.plugins.c2pa import settings
    from sdmark.plugins.c2pa.registry_store import DatabaseURL

    location = settings.registry_path()
    replacements: list[tuple[str, str]] = []
    # The files the server's own settings name (keys, signing certificate and key, anchors).
    named = [Path(part).expanduser() for name, value in os.environ.items() if name.startswith("SDMARK_")
             for part in value.split(os.pathsep) if part.startswith(("/", "~/")) and not any(c.isspace() for c in part)]
    for path in (location, *settings.trust_anchor_paths(), settings.keys_dir(), *named):
        if isinstance(path, Path):
            replacements += [(spelling, path.name) for spelling in {str(path.resolve()), str(path)}]
    patterns: list[tuple[re.Pattern[str], str]] = []
    if isinstance(location, DatabaseURL):
        from urllib.parse import urlsplit

        replacements += [(location.url, "the registry database"), (str(location), "the registry database")]
        parts = urlsplit(location.url)
        if parts.password:
            replacements.append((parts.password, "***"))
        for name, word in ((parts.hostname, "the database host"), (parts.username, "***")):
            if name:  # as a whole word: a short host name must not be cut out of other words
                patterns.append((re.compile(rf"(?<![\w.-]){re.escape(name)}(?![\w-])"), word))
        if parts.port:
            patterns.append((re.compile(rf"\bport {parts.port}\b"), "port ***"))
    # Longest first: a folder's own spelling must not be cut in two by a shorter one inside it.
    replacements.sort(key=lambda pair: -len(pair[0]))

    def rewrite(text: str) -> str:
        for private, public in replacements:
            text = text.replace(private, public)
        for pattern, public in patterns:
            text = pattern.sub(public, text)
        return text

    return _rewritten(report, rewrite)
