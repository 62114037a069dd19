"""Executors: where a run's work is done (this process, a local process pool, or a Ray cluster).

A run is cut into *chunks* (lists of picklable work items, e.g. one stage batch of files). Every
worker builds one *step* from a picklable factory, once, so models, schemes and the C2PA signer
(which cannot be pickled) are loaded once per worker. :meth:`Executor.map` sends each chunk to
a worker and yields each chunk's :class:`ChunkResult` in input order, whichever worker finished
first. Failures are per item: a step that raises on a chunk gives that chunk's items failed
results (through :meth:`Step.fail`), and the run goes on.

``local`` (the default) is this process with ``workers=1`` and a pool of spawned processes
otherwise; ``ray`` (``sdmark[ray]``) is :class:`sdmark.core.executor_ray.RayExecutor`.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

from sdmark.core.errors import SdmarkError

EXECUTORS = ("local", "ray")
# Passed to every worker so that a long-lived Ray worker sees this run's settings, not the ones
# its node had when it started (keys, registry, trust anchors, plugin allowlist, device, hub mode).
CARRIED_PREFIXES = ("SDMARK_",)
CARRIED_NAMES = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "HF_HUB_OFFLINE", "HF_HOME")


@dataclass
class ChunkResult:
    """What one chunk gave: one result per item (in the chunk's order) and the warnings raised."""

    results: list[Any]
    warnings: list[str] = field(default_factory=list)


class Step(Protocol):
    """The per-worker object that does the work; built once per worker from a picklable factory."""

    def __call__(self, chunk: list[Any]) -> ChunkResult: ...

    def fail(self, chunk: list[Any], message: str) -> ChunkResult:
        """Failed results for every item of ``chunk`` (the step itself broke on it)."""
        ...

    def close(self) -> None:
        """Release what the step's runtime kept open for the run (a registry writer, a model); the
        executor calls it once the worker has no more chunks."""
        ...


StepFactory = Callable[[], Step]


def run_chunk(step: Step, chunk: list[Any]) -> ChunkResult:
    """Run one chunk; an unexpected error fails the chunk's items instead of the whole run."""
    try:
        return step(chunk)
    except Exception as exc:  # fail closed per item, as the local single-process run does
        return step.fail(chunk, f"{type(exc).__name__}: {exc}")


def close_step(step: Step | None) -> None:
    """Call ``step.close()`` if it has one (a third party's step may not)."""
    close = getattr(step, "close", None)
    if close is not None:
        close()


@contextlib.contextmanager
def resources_closed(runtime: Any, keep: bool = False) -> Iterator[None]:
    """Close ``runtime``'s resources (``runtime.close_resources()``) when the block ends, however
    it ends, unless ``keep`` (the caller runs many runs on one runtime and closes them itself), or
    until the last of several runs under way on ``runtime`` at once ends (``runtime.run_resources``)."""
    if runtime is None:
        yield
        return
    with runtime.run_resources(keep):
        yield


def carried_environment() -> dict[str, str]:
    """The environment variables a worker must share with the driver for this run."""
    return {name: value for name, value in os.environ.items()
            if name.startswith(CARRIED_PREFIXES) or name in CARRIED_NAMES}


def apply_environment(carried: dict[str, str]) -> None:
    """Make this worker's sdmark settings exactly the driver's (stale ``SDMARK_*`` are removed)."""
    for name in [n for n in os.environ if n.startswith(CARRIED_PREFIXES) and n not in carried]:
        del os.environ[name]
    os.environ.update(carried)


class Executor(ABC):
    """Runs chunks of work on ``workers`` workers; use it as a context manager."""

    workers: int

    @abstractmethod
    def map(self, factory: StepFactory, chunks: Sequence[list[Any]], *, gpus_per_worker: float = 0) -> Iterator[ChunkResult]:
        """One :class:`ChunkResult` per chunk, in input order. ``gpus_per_worker`` reserves GPUs
        per worker where the executor can (Ray); the local executor ignores it."""

    def plan(self, *, gpus_per_worker: float = 0) -> int:
        """How many workers :meth:`map` will use with ``gpus_per_worker`` (so chunks can be cut for them)."""
        return self.workers

    def close(self) -> None:
        """Release what the executor started (a pool, a local Ray cluster)."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# One step per spawned process, built by the pool's initializer (a global by necessity: the
# initializer and the task function are separate calls into the same worker process).
_worker_step: Step | None = None
_worker_error: BaseException | None = None


def _init_worker(factory: StepFactory, carried: dict[str, str]) -> None:
    global _worker_step, _worker_error
    apply_environment(carried)
    try:
        _worker_step = factory()
    except Exception as exc:  # raised again with the first chunk, so the driver sees the reason
        _worker_error = exc
        return
    import multiprocessing.util

    # Run when the pool shuts the worker down (its process exits through multiprocessing's own
    # exit handler), so what the step kept open (a registry writer) is closed, not just dropped.
    multiprocessing.util.Finalize(None, close_step, args=(_worker_step,), exitpriority=10)


def _run_in_worker(chunk: list[Any]) -> ChunkResult:
    if _worker_error is not None:
        raise _worker_error
    assert _worker_step is not None, "worker step not initialised"
    return run_chunk(_worker_step, chunk)


class LocalExecutor(Executor):
    """This process (``workers=1``) or a pool of ``workers`` freshly spawned processes."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise SdmarkError(f"workers must be at least 1; got {workers}")
        self.workers = workers

    def map(self, factory: StepFactory, chunks: Sequence[list[Any]], *, gpus_per_worker: float = 0) -> Iterator[ChunkResult]:
        if not chunks:
            return
        if self.workers == 1 or len(chunks) == 1:
            step = factory()
            try:
                for chunk in chunks:
                    yield run_chunk(step, chunk)
            finally:
                close_step(step)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the parent may hold threads (torch, tqdm) that a forked child would inherit locked.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(self.workers, len(chunks)), mp_context=context,
                                 initializer=_init_worker, initargs=(factory, carried_environment())) as pool:
            yield from pool.map(_run_in_worker, chunks)


def make_executor(name: str = "local", workers: int | None = 1, address: str | None = None) -> Executor:
    """The executor called ``name``; ``address`` (Ray only) is ``auto``, ``ray://HOST:PORT`` or
    ``None`` to start a local cluster on demand (or join the one ``RAY_ADDRESS`` names)."""
    if name == "local":
        if address:
            raise SdmarkError("--ray-address needs --executor ray")
        return LocalExecutor(workers or 1)
    if name == "ray":
        from sdmark.core.executor_ray import RayExecutor

        return RayExecutor(workers=workers, address=address)
    raise SdmarkError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")


def chunked(items: Iterable[Any], size: int) -> list[list[Any]]:
    """``items`` in consecutive lists of ``size`` (the last may be shorter)."""
    chunks: list[list[Any]] = []
    for item in items:
        if not chunks or len(chunks[-1]) >= size:
            chunks.append([])
        chunks[-1].append(item)
    return chunks
