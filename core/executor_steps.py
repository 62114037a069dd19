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
import random
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

from sdmark.core.chain import Chain
from sdmark.core.errors import ImageReadError
from sdmark.core.executor import ChunkResult, Executor, chunked
from sdmark.core.io import InputEntry, iter_inputs
from sdmark.core.output import ItemResult, OutputOptions, Writer, finish_batch
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
    """The result without its pixels, which need not travel back to the driver."""
    if result.item is not None:
        result.item = replace(result.item, image=None)
    return result


class VerifyStep:
    """``sdmark verify`` for chunks of ``(path, error)``; one report per item (see ``verify_file``)."""

    def __init__(self, schemes: Sequence[str] = (), all_schemes: bool = False) -> None:
        from sdmark.core.plugins import load_plugins
        from sdmark.plugins.watermark.verify import select_schemes

        load_plugins()
        self.schemes = select_schemes(tuple(schemes), all_schemes)

    def __call__(self, chunk: list[VerifyJob]) -> ChunkResult:
        from sdmark.plugins.watermark.verify import verify_file

        reports = []
        for path, error in chunk:
            if error:
                reports.append({"path": path, "watermarked": None, "detections": [], "error": error})
            else:
                reports.append(verify_file(path, self.schemes))
        return ChunkResult(reports)

    def fail(self, chunk: list[VerifyJob], message: str) -> ChunkResult:
        return ChunkResult([{"path": path, "watermarked": None, "detections": [], "error": f"{path}: {message}"}
                            for path, _ in chunk])


@dataclass(frozen=True)
class ProcessJob:
    """One input of ``sdmark process``: its place in the run, and the output file the driver gave it."""

    index: int
    entry: InputEntry
    target: Path | None = None
    protected: tuple[Path, ...] = ()


class _AssignedWriter(Writer):
    """A :class:`Writer` that writes each item to the file the driver assigned to it (when it did)."""

    def __init__(self, options: OutputOptions, context: RunContext) -> None:
        super().__init__(options, context)
        self.assigned: dict[int, ProcessJob] = {}
        self._next: Path | None = None

    def write(self, item: Any) -> Path:
        job = self.assigned.pop(item.index, None)
        self._next = job.target if job is not None else None
        self.protected = list(job.protected) if job is not None else [item.source] if item.source else []
        return super().write(item)

    def target(self, name: str) -> Path:
        return self._next if self._next is not None else super().target(name)


class ProcessStep:
    """``sdmark process`` for chunks of :class:`ProcessJob`; results are ``(read_failed, ItemResult)``."""

    def __init__(self, chain: Chain, output: OutputOptions | None, safety: str = "on", device: str | None = None,
                 threads: int | None = None) -> None:
        from sdmark.core.pipeline import pick_device
        from sdmark.core.plugins import load_plugins

        _use_threads(threads)
        load_plugins()
        self.warnings: list[str] = []
        self.chain = chain
        self.safety = safety
        self.context = RunContext(mode="process", device=pick_device(device), warn=self.warnings.append)
        chain.setup(self.context)
        self.writer = _AssignedWriter(output, self.context) if output is not None else None

    def __call__(self, chunk: list[ProcessJob]) -> ChunkResult:
        from sdmark.core.process import load_item

        slots: list[tuple[bool, ItemResult] | None] = [None] * len(chunk)
        items, positions = [], []
        for position, job in enumerate(chunk):
            try:
                items.append(load_item(job.entry, job.index, self.safety))
                positions.append(position)
            except ImageReadError as exc:
                slots[position] = (True, ItemResult(name=job.entry.path.name, status="failed", source=job.entry.path,
                                                    error=str(exc)))
        if self.writer is not None:
            self.writer.assigned = {job.index: job for job in chunk if job.target is not None}
        for position, result in zip(positions, finish_batch(items, self.chain, self.context, self.writer)):
            slots[position] = (False, _strip(result))
        warnings, self.warnings[:] = list(self.warnings), []
        return ChunkResult(slots, warnings)

    def fail(self, chunk: list[ProcessJob], message: str) -> ChunkResult:
        return ChunkResult([(False, ItemResult(name=job.entry.path.name, status="failed", source=job.entry.path,
                                               error=f"{job.entry.path}: {message}")) for job in chunk])


class GenerateStep:
    """``sdmark generate`` for chunks of image indices; one pipeline per worker (its own GPU on Ray)."""

    def __init__(self, settings: Any, chain: Chain, output: OutputOptions | None, safety: str = "on",
                 threads: int | None = None) -> None:
        from sdmark.core.pipeline import load_pipeline
        from sdmark.core.plugins import load_plugins

        _use_threads(threads)
        load_plugins()
        self.settings, self.chain, self.output, self.safety = settings, chain, output, safety
        self.pipeline = load_pipeline(
            settings.model, settings.device, settings.dtype, scheduler=settings.scheduler,
            cpu_offload=settings.cpu_offload, vae_slicing=settings.vae_slicing,
            vae_tiling=settings.vae_tiling, attention_slicing=settings.attention_slicing,
        )

    def __call__(self, chunk: list[int]) -> ChunkResult:
        from sdmark.core.generate import generate

        warnings: list[str] = []
        results = generate(self.settings, self.chain, self.output, safety=self.safety, pipeline=self.pipeline,
                           progress=False, warn=warnings.append, indices=set(chunk))
        return ChunkResult([_strip(result) for result in results], warnings)

    def fail(self, chunk: list[int], message: str) -> ChunkResult:
        return ChunkResult([ItemResult(name=f"image {index}", status="failed", error=message) for index in chunk])


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
                   all_schemes: bool = False) -> Iterator[dict[str, Any]]:
    """Reports for ``work`` in input order, computed on ``executor``'s workers."""
    factory = partial(VerifyStep, tuple(schemes), all_schemes)
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


def _output_name(entry: InputEntry) -> str:
    """The output name of an input; the same rule as :func:`sdmark.core.process.load_item`."""
    return str((entry.relative or Path(entry.path.name)).with_suffix(""))


def process_jobs(entries: Sequence[InputEntry], output: OutputOptions | None) -> list[ProcessJob]:
    """One job per input, each with its own output file: unique within the run, in input order."""
    if output is None:
        return [ProcessJob(index, entry) for index, entry in enumerate(entries)]
    names = Writer(output, RunContext(mode="process"))
    inputs = [entry.path for entry in entries if entry.error is None]
    by_resolved: dict[Path, list[Path]] = {}
    for path in inputs:
        by_resolved.setdefault(path.resolve(), []).append(path)
    jobs = []
    for index, entry in enumerate(entries):
        if entry.error is not None:
            jobs.append(ProcessJob(index, entry))
            continue
        target = names.target(_output_name(entry))
        protected = list(by_resolved.get(target.resolve(), []))
        if target.exists():  # an input hard-linked as the output file: never replaced either
            import os

            protected += [path for path in inputs if path not in protected and os.path.samefile(path, target)]
        jobs.append(ProcessJob(index, entry, target, tuple(protected)))
    return jobs


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
) -> list[ItemResult]:
    """:func:`sdmark.core.process.process_images` on ``executor``'s workers: the same results in
    the same order, the same files. Returned results carry no pixels (``item.image`` is ``None``)."""
    from tqdm.auto import tqdm

    from sdmark.core.plugins import load_plugins

    load_plugins()
    warnings = _Warnings(warn or default_warn)
    warnings(chain.validate("process"))
    chain.check_safety("process", safety, warnings.warn)
    entries = list(iter_inputs(inputs))
    jobs = process_jobs(entries, output)
    factory = partial(ProcessStep, chain, output, safety, device, torch_threads())
    order = _LocalOrder(batch_size)
    results: list[ItemResult] = []

    def release(batch: list[ItemResult]) -> None:
        for result in batch:
            results.append(result)
            if on_result is not None:
                on_result(result)
        bar.update(len(batch))

    with tqdm(total=len(entries), unit="img", desc="processing", disable=None if progress is None else not progress) as bar:
        for done in executor.map(factory, chunked(jobs, batch_size)):
            warnings(done.warnings)
            for read_failed, result in done.results:
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

    from sdmark.core.plugins import load_plugins

    load_plugins()
    settings.check()
    chain = chain or Chain([])
    warnings = _Warnings(warn or default_warn)
    warnings(chain.validate("generate"))
    chain.check_safety("generate", safety, warnings.warn)
    if settings.seed is None:
        # Drawn here, once: every worker must number and seed the images of one run.
        settings.seed = random.SystemRandom().randrange(2**32)
    total = len(settings.prompts) * settings.count
    factory = partial(GenerateStep, settings, chain, output, safety, torch_threads())
    chunks = generate_chunks(total, settings.batch_size, executor.plan(gpus_per_worker=1))
    results: list[ItemResult] = []
    with tqdm(total=total, unit="img", desc="generating", disable=None if progress is None else not progress) as bar:
        for done in executor.map(factory, chunks, gpus_per_worker=1):
            warnings(done.warnings)
            for result in done.results:
                results.append(result)
                if on_result is not None:
                    on_result(result)
            bar.update(len(done.results))
    return results
