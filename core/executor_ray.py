"""Ray as sdmark's distributed executor (``pip install 'sdmark[ray]'``), and the same steps as
callable classes for Ray users' own pipelines.

:class:`RayExecutor` joins a cluster (``address="auto"``, ``ray://HOST:PORT`` or ``RAY_ADDRESS``)
or starts a local one on demand, and runs chunks through Ray Data: one row per chunk,
``map_batches`` over a fixed pool of actors, each of which builds its step once (plugins,
schemes, models; the C2PA signer, which cannot be pickled, is built inside the actor), rows back
in input order. Actors ask for a fraction of a CPU: with one whole CPU each, an actor pool as
large as the cluster takes every CPU slot and Ray Data waits forever for a slot for its other
tasks (ray-project/ray#44687). Workers need the driver's view of the files (a shared or mounted
file system) and the same sdmark installed.

For a Ray user's own dataset::

    ds = ray.data.from_items([{"path": p} for p in paths])
    ds = ds.map_batches(VerifyImages, fn_constructor_kwargs={"schemes": ["sdmark"]},
                        compute=ray.data.ActorPoolStrategy(size=4), num_cpus=0.5)
    for row in ds.iter_rows(): print(row["path"], row["watermarked"], row["report"])
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np

from sdmark.core.errors import SdmarkError
from sdmark.core.executor import (ChunkResult, Executor, StepFactory, apply_environment, carried_environment, close_step,
                                  run_chunk)

_MISSING = "Ray is not installed (pip install 'sdmark[ray]')"
# Left for Ray Data's own tasks (its input and output operators) on the cluster's CPU slots.
CPU_HEADROOM = 0.5


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data ships with the ``ray[data]`` extra)
    except ImportError as exc:
        raise SdmarkError(f"{_MISSING}: {exc}") from None
    return ray


def cpus_per_actor(cluster_cpus: float, actors: int) -> float:
    """The CPU request per actor: one each where the cluster has room, else a share that always
    leaves :data:`CPU_HEADROOM` free, so ``actors`` actors can never fill every slot."""
    if actors < 1:
        raise SdmarkError(f"actors must be at least 1; got {actors}")
    share = (cluster_cpus - CPU_HEADROOM) / actors
    return round(max(0.01, min(1.0, share)), 3)


def _ray_messages_to_stderr() -> None:
    """Send the notices Ray's driver prints (a worker died, a task is retried) to stderr.

    Ray prints them on stdout, where ``--json`` results go. ``print_to_stdstream`` is looked up
    at each call by Ray's listener thread, so wrapping it reroutes them; where a Ray version has
    no such function, nothing changes (results stay correct, only stdout gets Ray's lines).
    """
    from ray._private import worker

    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "sdmark_stderr", False):
        return

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        original({**data, "is_err": True}, ignore_prefix)

    to_stderr.sdmark_stderr = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_stderr


class _SetupFailed:
    """An actor could not build its step; carried back so the driver raises the same error."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class ChunkActor:
    """The Ray Data callable class behind :class:`RayExecutor`: one step per actor."""

    def __init__(self, factory: StepFactory, carried: dict[str, str]) -> None:
        apply_environment(carried)
        self.error: BaseException | None = None
        try:
            self.step = factory()
        except Exception as exc:  # reported with the first chunk: Ray would retry the actor forever
            self.error = exc

    def __del__(self) -> None:
        # Ray Data drops its callable-class instances when the run's actor pool shuts down
        # gracefully: what the step kept open (a registry writer) is closed then.
        close_step(getattr(self, "step", None))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for blob in batch["chunk"]:
            done: Any = _SetupFailed(self.error) if self.error is not None else run_chunk(self.step, pickle.loads(blob))
            out.append(pickle.dumps(done))
        return {"index": batch["index"], "out": np.array(out, dtype=object)}


class RayExecutor(Executor):
    """Chunks on a pool of ``workers`` Ray actors (``None``: one per GPU when GPUs are asked for and
    the cluster has them, else one). The cluster is joined or started on first use; one started
    here is shut down by :meth:`close`. ``startup_s`` is how long connecting took."""

    def __init__(self, workers: int | None = 1, address: str | None = None) -> None:
        self.ray = _ray()
        self.address = address
        self._requested = workers
        self.workers = workers or 1
        self.startup_s = 0.0
        self._started_here = False

    def connect(self) -> None:
        """Join the cluster at ``address`` (or ``RAY_ADDRESS``) or start a local one; idempotent."""
        ray = self.ray
        _ray_messages_to_stderr()
        if ray.is_initialized():
            return
        began = time.perf_counter()
        try:
            # Ray's own notices would mix with sdmark's stderr; failures still raise.
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR, configure_logging=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.address or "a new local cluster"
            raise SdmarkError(f"cannot start or join the Ray cluster ({where}): {exc}") from None
        self._started_here = True
        self.startup_s = time.perf_counter() - began

    def resources(self) -> dict[str, float]:
        self.connect()
        return dict(self.ray.cluster_resources())

    def plan(self, *, gpus_per_worker: float = 0) -> int:
        """The actor count: ``workers`` if given, else one per GPU (``gpus_per_worker`` each), else one."""
        gpus = self.resources().get("GPU", 0.0) if gpus_per_worker else 0.0
        self.workers = self._requested or (max(1, int(gpus // gpus_per_worker)) if gpus else 1)
        return self.workers

    def map(self, factory: StepFactory, chunks: Sequence[list[Any]], *, gpus_per_worker: float = 0) -> Iterator[ChunkResult]:
        if not chunks:
            return
        ray = self.ray
        resources = self.resources()
        gpus = resources.get("GPU", 0.0) if gpus_per_worker else 0.0
        if gpus_per_worker and not gpus:
            logging.getLogger("sdmark").warning("the Ray cluster has no GPU: running on CPU actors")
        actors = max(1, min(self.plan(gpus_per_worker=gpus_per_worker), len(chunks)))
        remote_args: dict[str, Any] = {"num_cpus": cpus_per_actor(resources.get("CPU", 1.0), actors)}
        if gpus:
            remote_args["num_gpus"] = gpus_per_worker
        context = ray.data.DataContext.get_current()
        saved = (context.execution_options.preserve_order, context.enable_progress_bars)
        # Results in input order (Ray Data may finish blocks out of order otherwise); our own bar.
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        quiet = logging.getLogger("ray.data")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            rows = [{"index": index, "chunk": pickle.dumps(chunk)} for index, chunk in enumerate(chunks)]
            dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), 200))
            dataset = dataset.map_batches(
                ChunkActor, fn_constructor_kwargs={"factory": factory, "carried": carried_environment()},
                batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors), **remote_args,
            )
            expected = 0
            early: dict[int, ChunkResult] = {}
            for row in dataset.iter_rows():
                done = pickle.loads(row["out"])
                if isinstance(done, _SetupFailed):
                    raise done.error
                early[int(row["index"])] = done
                while expected in early:
                    yield early.pop(expected)
                    expected += 1
            if expected != len(chunks):
                raise SdmarkError(f"Ray returned {expected} of {len(chunks)} chunks")
        finally:
            context.execution_options.preserve_order, context.enable_progress_bars = saved
            quiet.setLevel(level)

    def close(self) -> None:
        if self._started_here and self.ray.is_initialized():
            self.ray.shutdown()
        self._started_here = False


# -- callable classes for ray.data.Dataset.map_batches --------------------------------------


class VerifyImages:
    """``sdmark verify`` as a Ray Data callable class: a batch with a ``path`` column in; columns
    ``path``, ``watermarked`` (``None`` when unreadable), ``error`` and ``report`` (the JSON line
    of ``sdmark verify --json``) out. Each actor loads the schemes once."""

    def __init__(self, schemes: Sequence[str] = (), all_schemes: bool = False) -> None:
        from sdmark.core.executor_steps import VerifyStep

        self.step = VerifyStep(schemes, all_schemes)

    def __del__(self) -> None:  # when Ray Data shuts the actor pool down: the registry session
        close_step(getattr(self, "step", None))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(path) for path in batch["path"]]
        reports = self.step([(path, None) for path in paths]).results
        return {
            "path": np.array(paths, dtype=object),
            "watermarked": np.array([r["watermarked"] for r in reports], dtype=object),
            "error": np.array([r["error"] for r in reports], dtype=object),
            "report": np.array([json.dumps(r, ensure_ascii=False, default=str) for r in reports], dtype=object),
        }


class ProcessImages:
    """``sdmark process`` as a Ray Data callable class: a batch with a ``path`` column in (each
    file is read, run through ``chain`` and written under ``output_dir`` by the actor, signed when
    a signing identity is configured); columns ``path``, ``status``, ``output``, ``error`` and
    ``result`` (the JSON line of ``sdmark process --json``) out.

    Output names are the input file names, numbered (``name-1``) within one actor as in a local
    run; two inputs with one name that land on different actors are not renamed, and the second
    fails with "already exists" (nothing is overwritten). The CLI's ``--executor ray`` names every
    file on the driver before it starts, so it has no such case."""

    def __init__(self, chain: str = "safety watermark", output_dir: str | Path = "processed", *, format: str = "png",
                 quality: int = 95, overwrite: bool = False, safety: Literal["on", "off"] = "on",
                 device: str | None = None) -> None:
        from sdmark.core.chain import Chain
        from sdmark.core.executor_steps import ProcessStep
        from sdmark.core.output import OutputOptions
        built = Chain.build(chain)
        output = OutputOptions(Path(output_dir), format, quality, overwrite)
        self.step = ProcessStep(built, output, safety, device)
        self.next_index = 0

    def __del__(self) -> None:  # when Ray Data shuts the actor pool down: the registry writer
        close_step(getattr(self, "step", None))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from sdmark.core.executor_steps import ProcessJob
        from sdmark.core.io import InputEntry

        jobs = []
        for raw in batch["path"]:
            path = Path(str(raw))
            jobs.append(ProcessJob(self.next_index, InputEntry(path, relative=Path(path.name))))
            self.next_index += 1
        results = [result for _, result in self.step(jobs).results]
        return {
            "path": np.array([str(job.entry.path) for job in jobs], dtype=object),
            "status": np.array([r.status for r in results], dtype=object),
            "output": np.array([str(r.path) if r.path else None for r in results], dtype=object),
            "error": np.array([r.error for r in results], dtype=object),
            "result": np.array([json.dumps(r.to_json(), ensure_ascii=False) for r in results], dtype=object),
        }
