"""The verify, process and generate work as per-worker steps, and the drivers that run them on an
:class:`~sdmark.core.executor.Executor` with the same results, order and files as a local run.

A step is built once per worker (it loads plugins, schemes, the chain's models; the C2PA signer is
built by the first signature in that worker) and then called with chunks of work items. The
drivers live on the machine that started the run: they expand the inputs, give each output its
file name (so that names are unique across workers exactly as in one process), print warnings once,
and hand results to ``on_result`` in the order a local run would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

from sdmark.core.chain import Chain
from sdmark.core.errors import ImageReadError
from sdmark.core.executor import ChunkResult, Executor, chunked, resources_closed
from sdmark.core.io import InputEntry
from sdmark.core.output import ItemResult, OutputOptions, Writer, finish_batch
from sdmark.core.runtime import Runtime
from sdmark.core.stages import RunContext, default_warn

VerifyJob = tuple[str, "str | None"]  # (path, error found while listing the inputs)


def torch_threads() -> int:
    """This process's torch CPU thread count, which workers copy (see :func:`_use_threads`)."""
    import torch

    return torch.get_num_threads()


def _use_threads(threads: int | None) -> None:
    """Run torch with the driver's thread count: a CPU reduction split over another number of
    threads rounds differently, and Ray starts its actors with one thread (OMP_NUM_THREADS=1)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def _strip(result: ItemResult) -> ItemResult:
    """The result without its pixels, which need not travel back to the driver: its item's image is
    an empty (0x0) one (the written file holds the pixels)."""
    if result.item is not None:
        from PIL import Image

        result.item = replace(result.item, image=Image.new(result.item.image.mode, (0, 0)))
    return result


class VerifyStep:
    """``sdmark verify`` for chunks of ``(path, error)``; one report per item (see ``verify_file``)."""

    def __init__(self, schemes: Sequence[str] = (), all_schemes: bool = False, runtime: Runtime | None = None) -> None:
        from sdmark.plugins.watermark.verify import select_schemes

        self.runtime = runtime if runtime is not None else Runtime.load()
        self.schemes = select_schemes(tuple(schemes), all_schemes, self.runtime)

    def __call__(self, chunk: list[VerifyJob]) -> ChunkResult:
        from sdmark.plugins.watermark.verify import verify_file

        reports: list[dict[str, Any]] = []
        for path, error in chunk:
            if error:
                reports.append({"path": path, "watermarked": None, "detections": [], "error": error})
            else:
                reports.append(verify_file(path, self.schemes, runtime=self.runtime))
        return ChunkResult(reports)

    def fail(self, chunk: list[VerifyJob], message: str) -> ChunkResult:
        return ChunkResult([{"path": path, "watermarked": None, "detections": [], "error": f"{path}: {message}"}
                            for path, _ in chunk])

    def close(self) -> None:
        self.runtime.close_idle_resources()  # the registry session of this worker's checks (in the driver's process: the run's end)


@dataclass(frozen=True)
class ProcessJob:
    """One input of ``sdmark process``: its place in the run, its output name (without extension)
    and the output file the driver fixed for it (see :func:`sdmark.core.process.prepare_process`)."""

    index: int
    entry: InputEntry
    name: str | None = None
    target: Path | None = None


class ProcessStep:
    """``sdmark process`` for chunks of :class:`ProcessJob`; results are ``(read_failed, ItemResult)``.

    ``protected`` are the run's input files, which no output may replace (every worker guards all of them)."""

    def __init__(self, chain: Chain, output: OutputOptions | None, safety: Literal["on", "off"] = "on", device: str | None = None,
                 threads: int | None = None, protected: Sequence[Path] = (), keep_metadata: bool = False) -> None:
        from sdmark.core.pipeline import pick_device

        _use_threads(threads)
        self.warnings: list[str] = []
        self.chain = chain
        self.safety = safety
        self.keep_metadata = keep_metadata
        self.context = RunContext(mode="process", device=pick_device(device), warn=self.warnings.append,
                                  runtime=chain.runtime)
        chain.setup(self.context)
        self.writer = Writer(output, self.context, protected=protected) if output is not None else None

    def __call__(self, chunk: list[ProcessJob]) -> ChunkResult:
        from sdmark.core.process import load_item

        slots: list[tuple[bool, ItemResult] | None] = [None] * len(chunk)
        items, positions = [], []
        for position, job in enumerate(chunk):
            try:
                items.append(load_item(job.entry, job.index, self.safety, job.name, self.keep_metadata))
                positions.append(position)
            except ImageReadError as exc:
                slots[position] = (True, ItemResult(name=job.entry.path.name, status="failed", source=job.entry.path,
                                                    error=str(exc)))
        if self.writer is not None:
            self.writer.assign({job.index: job.target for job in chunk if job.target is not None})
        for position, result in zip(positions, finish_batch(items, self.chain, self.context, self.writer)):
            slots[position] = (False, _strip(result))
        warnings, self.warnings[:] = list(self.warnings), []
        return ChunkResult(slots, warnings)

    def fail(self, chunk: list[ProcessJob], message: str) -> ChunkResult:
        return ChunkResult([(False, ItemResult(name=job.entry.path.name, status="failed", source=job.entry.path,
                                               error=f"{job.entry.path}: {message}")) for job in chunk])

    def close(self) -> None:
        self.chain.runtime.close_idle_resources()  # this worker's registry writer, safety model, contexts


class GenerateStep:
    """``sdmark generate`` for chunks of image indices; one pipeline per worker (its own GPU on Ray)."""

    def __init__(self, settings: Any, chain: Chain, output: OutputOptions | None, safety: Literal["on", "off"] = "on",
                 threads: int | None = None, names: Sequence[str] | None = None) -> None:
        from sdmark.core.pipeline import load_pipeline

        _use_threads(threads)
        self.settings, self.chain, self.output, self.safety = settings, chain, output, safety
        self.names = names
        self.pipeline = load_pipeline(
            settings.model, settings.device, settings.dtype, scheduler=settings.scheduler,
            cpu_offload=settings.cpu_offload, vae_slicing=settings.vae_slicing,
            vae_tiling=settings.vae_tiling, attention_slicing=settings.attention_slicing, runtime=chain.runtime,
        )

    def __call__(self, chunk: list[int]) -> ChunkResult:
        from sdmark.core.generate import generate

        warnings: list[str] = []
        results = generate(self.settings, self.chain, self.output, safety=self.safety, pipeline=self.pipeline,
                           progress=False, warn=warnings.append, indices=set(chunk), names=self.names,
                           keep_resources=True)  # closed once, when the worker is done (close())
        return ChunkResult([_strip(result) for result in results], warnings)

    def fail(self, chunk: list[int], message: str) -> ChunkResult:
        return ChunkResult([ItemResult(name=f"image {index}", status="failed", error=message) for index in chunk])

    def close(self) -> None:
        self.chain.runtime.close_idle_resources()  # this worker's registry writer, safety model, contexts


# -- drivers --------------------------------------------------------------------------------


class _Warnings:
    """Prints each distinct warning once, however many workers raised it."""

    def __init__(self, warn: Callable[[str], None]) -> None:
        self.warn = warn
        self.seen: set[str] = set()

    def __call__(self, messages: Iterable[str]) -> None:
        for message in messages:
            if message not in self.seen:
                self.seen.add(message)
                self.warn(message)


def verify_chunk_size(count: int, workers: int) -> int:
    """Files per chunk: enough to amortise a call, small enough to balance (as ``verify -j`` did)."""
    return max(1, min(16, count // (4 * workers)))


def verify_reports(work: Sequence[VerifyJob], executor: Executor, schemes: Sequence[str] = (),
                   all_schemes: bool = False, runtime: Runtime | None = None) -> Iterator[dict[str, Any]]:
    """Reports for ``work`` in input order, computed on ``executor``'s workers (with ``runtime``'s
    plugins; a worker process loads the same plugins itself)."""
    factory = partial(VerifyStep, tuple(schemes), all_schemes, runtime)
    # What plugins kept open for the run here (c2pa's registry) is closed when it ends; workers' end with them.
    with resources_closed(runtime):
        for done in executor.map(factory, chunked(work, verify_chunk_size(len(work), executor.workers))):
            yield from done.results


class _LocalOrder:
    """Releases results in the order :func:`sdmark.core.process.process_images` reports them: a file
    that cannot be read at once, the others when a batch of ``batch_size`` readable files is done."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.pending: list[ItemResult] = []

    def push(self, read_failed: bool, result: ItemResult) -> list[ItemResult]:
        if read_failed:
            return [result]
        self.pending.append(result)
        if len(self.pending) < self.batch_size:
            return []
        released, self.pending = self.pending, []
        return released

    def finish(self) -> list[ItemResult]:
        released, self.pending = self.pending, []
        return released


def process_jobs(run: Any) -> list[ProcessJob]:
    """One job per input of a :class:`~sdmark.core.process.PreparedRun`, in input order."""
    return [ProcessJob(index, entry, run.names[index], run.targets.get(index)) for index, entry in enumerate(run.entries)]


def process_with(
    executor: Executor,
    inputs: Iterable[Path | str],
    chain: Chain,
    output: OutputOptions | None,
    *,
    safety: Literal["on", "off"] = "on",
    batch_size: int = 8,
    device: str | None = None,
    progress: bool | None = None,
    on_result: Callable[[ItemResult], None] | None = None,
    warn: Callable[[str], None] | None = None,
    on_skipped: Callable[[Path, str], None] | None = None,
    keep_metadata: bool = False,
) -> list[ItemResult]:
    """:func:`sdmark.core.process.process_images` on ``executor``'s workers: the same results in
    the same order, the same files. Returned results carry no pixels (``item.image`` is an empty 0x0 image)."""
    from tqdm.auto import tqdm

    from sdmark.core.process import prepare_process

    warnings = _Warnings(warn or default_warn)
    run = prepare_process(inputs, chain, output, safety, warnings.warn, on_skipped)
    entries = run.entries
    jobs = process_jobs(run)
    factory = partial(ProcessStep, chain, output, safety, device, torch_threads(), tuple(run.protected), keep_metadata)
    order = _LocalOrder(batch_size)
    results: list[ItemResult] = []  # input order: chunks come back in job order

    def release(batch: list[ItemResult]) -> None:
        for result in batch:
            if on_result is not None:
                on_result(result)
        bar.update(len(batch))

    # The driver's own resources (the in-process worker's, when the executor runs here) close with the run.
    with resources_closed(chain.runtime), \
            tqdm(total=len(entries), unit="img", desc="processing", disable=None if progress is None else not progress) as bar:
        for done in executor.map(factory, chunked(jobs, batch_size)):
            warnings(done.warnings)
            for read_failed, result in done.results:
                results.append(result)
                release(order.push(read_failed, result))
        release(order.finish())
    return results


def generate_chunks(total: int, batch_size: int, workers: int) -> list[list[int]]:
    """Image indices cut at ``batch_size`` boundaries (the batches of a local run), one run of
    consecutive batches per worker so that each worker sets its chain up once."""
    batches = chunked(range(total), batch_size)
    per_worker = max(1, math.ceil(len(batches) / max(1, workers)))
    return [[index for batch in batches[start:start + per_worker] for index in batch]
            for start in range(0, len(batches), per_worker)]


def generate_with(
    executor: Executor,
    settings: Any,
    chain: Chain | None = None,
    output: OutputOptions | None = None,
    *,
    safety: Literal["on", "off"] = "on",
    progress: bool | None = None,
    on_result: Callable[[ItemResult], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[ItemResult]:
    """:func:`sdmark.core.generate.generate` with one pipeline per worker (one GPU each on Ray):
    the same images, names, records and order. Returned results carry no pixels."""
    from tqdm.auto import tqdm

    from sdmark.core.generate import plan_run

    chain = chain or Chain([])
    warnings = _Warnings(warn or default_warn)
    # Planned here, once (the seed drawn, names numbered, conflicts found): every worker makes
    # and names its share of one run.
    settings = replace(settings, prompts=list(settings.prompts))  # the caller's seed stays as given
    names = plan_run(settings, chain, output, safety, warnings.warn)
    total = len(settings.prompts) * settings.count
    factory = partial(GenerateStep, settings, chain, output, safety, torch_threads(), tuple(names))
    chunks = generate_chunks(total, settings.batch_size, executor.plan(gpus_per_worker=1))
    results: list[ItemResult] = []
    with resources_closed(chain.runtime), \
            tqdm(total=total, unit="img", desc="generating", disable=None if progress is None else not progress) as bar:
        for done in executor.map(factory, chunks, gpus_per_worker=1):
            warnings(done.warnings)
            for result in done.results:
                results.append(result)
                if on_result is not None:
                    on_result(result)
            bar.update(len(done.results))
    return results
