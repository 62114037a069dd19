"""Running a chain on existing images: find the inputs, plan their outputs, read each safely,
process in batches, write atomically."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

from sdmark.core.chain import Chain
from sdmark.core.errors import ImageReadError, SdmarkError
from sdmark.core.executor import resources_closed
from sdmark.core.io import InputEntry, iter_inputs, output_format, read_image, sha256_file
from sdmark.core.metadata import declared_by_input, foreign_text
from sdmark.core.output import ItemResult, OutputOptions, Writer, check_conflicts, finish_batch, remove_stale_temps
from sdmark.core.records import ProvenanceRecord
from sdmark.core.stages import ImageItem, RunContext, default_warn

class NoImagesError(SdmarkError):
    """The inputs hold no image to process (exit code 2, as ``verify`` gives for an empty folder)."""


SKIP_NOT_IMAGE = "not an image file name (no or unknown extension, or hidden)"
SKIP_DUPLICATE = "given more than once"
SKIP_IN_OUTPUT = "inside the output folder"


@dataclass
class InputPlan:
    """The inputs of a run in order, each with the output name it will get, and what was skipped."""

    entries: list[InputEntry] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _root_labels(inputs: list[Path]) -> list[str | None]:
    """With several inputs each folder keeps its own subtree under its own name (``a/``, ``b/``,
    ``b-2/`` for a second folder called ``b``); a single folder is written straight into ``-o``."""
    if len(inputs) < 2:
        return [None] * len(inputs)
    labels: list[str | None] = []
    used: set[str] = set()
    for path in inputs:
        if not path.is_dir():
            labels.append(None)
            continue
        base = Path(os.path.realpath(path)).name or "root"
        label, number = base, 2
        while label in used:
            label, number = f"{base}-{number}", number + 1
        used.add(label)
        labels.append(label)
    return labels


def plan_inputs(inputs: Iterable[Path | str], output: OutputOptions | None = None) -> InputPlan:
    """Walk ``inputs`` into the files to process, once each, with their output names.

    Skipped (and listed in ``skipped`` with the reason): files in folders whose names are not image
    names, a file given more than once, and files inside the output folder (so a rerun never reads
    its own outputs back). When two inputs would get one name (``pic.png`` and ``pic.jpg``), those
    whose extension differs from the output's keep it in the name (``pic.jpg.png``).
    """
    paths = [Path(raw) for raw in inputs]
    plan = InputPlan()
    seen: set[str] = set()
    out_dir = os.path.realpath(output.directory) if output is not None else None
    suffix = output_format(output.format)[1] if output is not None else ".png"
    relatives: list[Path] = []
    for path, label in zip(paths, _root_labels(paths)):
        not_images: list[Path] = []
        walked = path.is_dir()
        root = os.path.realpath(path) if walked else None
        for entry in iter_inputs([path], skipped=not_images):
            real = os.path.realpath(entry.path)
            if real in seen and entry.error is None:
                plan.skipped.append((entry.path, SKIP_DUPLICATE))
                continue
            if walked and out_dir is not None and out_dir != root and _inside(real, out_dir):
                plan.skipped.append((entry.path, SKIP_IN_OUTPUT))
                continue
            seen.add(real)
            relative = entry.relative or Path(entry.path.name)
            if label is not None and entry.relative is not None:
                relative = Path(label) / relative
            plan.entries.append(entry)
            relatives.append(relative)
        plan.skipped += [(file, SKIP_NOT_IMAGE) for file in not_images
                         if not (out_dir is not None and _inside(os.path.realpath(file), out_dir) and out_dir != root)]
    groups: dict[str, list[int]] = defaultdict(list)
    for position, relative in enumerate(relatives):
        groups[str(relative.with_suffix(""))].append(position)
    plan.names = [str(relative.with_suffix("")) for relative in relatives]
    for members in groups.values():
        if len(members) > 1:
            for position in members:
                if relatives[position].suffix.lower() != suffix:
                    plan.names[position] = str(relatives[position])
    return plan


def _resolvable(path: Path) -> bool:
    try:
        path.resolve()
        return True
    except (OSError, RuntimeError):  # a symlink loop: it can be no one's output either
        return False


def load_item(entry: InputEntry, index: int, safety: str, name: str | None = None,
              keep_metadata: bool = False) -> ImageItem:
    """Read one input into an :class:`ImageItem` with a ``processed`` record; raises ImageReadError.

    ``name`` is the output name without extension (default: the entry's relative path). The
    input's own text metadata is carried to the output only with ``keep_metadata``, renamed and
    bounded (:func:`sdmark.core.metadata.foreign_text`); the record says what was found and kept.
    """
    if entry.error:
        raise ImageReadError(entry.error)
    loaded = read_image(entry.path)
    source: dict[str, Any] = {
        "name": entry.path.name,
        "sha256": sha256_file(entry.path),
        "format": loaded.format,
        "width": loaded.image.width,
        "height": loaded.image.height,
    }
    declared = declared_by_input(loaded.metadata)  # the input's own claims, quoted as unverified
    if declared is not None:
        source["declared"] = declared
    text, foreign = foreign_text(loaded.metadata, keep_metadata)
    if foreign is not None:
        source["metadata"] = foreign
    record = ProvenanceRecord(kind="processed", safety="disabled" if safety == "off" else "not-run", source=source)
    relative = entry.relative or Path(entry.path.name)
    return ImageItem(
        image=loaded.image, record=record, name=name or str(relative.with_suffix("")), index=index,
        source=entry.path, text=text, source_metadata=loaded.metadata, notes=list(loaded.notes),
    )


@dataclass
class PreparedRun:
    """A ``process`` run checked and planned before any work: the inputs in order, each readable
    one's output file fixed (``targets``, by input index), and the input files nothing may replace."""

    entries: list[InputEntry]
    names: list[str]
    targets: dict[int, Path]
    protected: list[Path]


def prepare_process(
    inputs: Iterable[Path | str],
    chain: Chain,
    output: OutputOptions | None,
    safety: Literal["on", "off"],
    warn: Callable[[str], None],
    on_skipped: Callable[[Path, str], None] | None = None,
) -> PreparedRun:
    """Everything ``process`` checks once per run, before any image is read: the chain (warnings
    to ``warn``) and the safety rule, the inputs (:func:`plan_inputs`; skipped files go to
    ``on_skipped``), existing output files (an error unless ``output.overwrite``) and the plugins'
    configuration. Removes sdmark's own stale temp files from the output folder; writes nothing else.
    Raises :class:`NoImagesError` when the inputs hold no image."""
    for message in chain.validate("process"):
        warn(message)
    chain.check_safety("process", safety, warn)
    inputs = list(inputs)
    plan = plan_inputs(inputs, output)
    entries = plan.entries
    if not entries:
        skipped = f" ({len(plan.skipped)} file(s) skipped)" if plan.skipped else ""
        raise NoImagesError(f"no images found in {', '.join(str(p) for p in inputs)}{skipped}")
    for path, reason in plan.skipped:
        if on_skipped is not None:
            on_skipped(path, reason)
    protected = [entry.path for entry in entries if entry.error is None and _resolvable(entry.path)]
    targets: dict[int, Path] = {}
    if output is not None:
        readable = [(index, plan.names[index]) for index, entry in enumerate(entries) if entry.error is None]
        paths = Writer(output, RunContext(mode="process")).reserve(readable)
        check_conflicts(paths, output.overwrite)
        targets = {index: path for (index, _), path in zip(readable, paths)}
    chain.runtime.check_config(mode="process", output=output)
    if output is not None:
        remove_stale_temps(output.directory, warn)
    return PreparedRun(entries, plan.names, targets, protected)


def process_images(
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
    keep_resources: bool = False,
) -> list[ItemResult]:
    """Run ``chain`` on image files and folders (recursively); one :class:`ItemResult` per input.

    A file that cannot be read is reported as failed and the rest go on. ``safety="off"`` records
    that the user turned safety off; with ``"on"`` the record says whether a safety stage ran.
    Before any work: the chain is validated, existing output files are an error (unless
    ``output.overwrite``), plugins check their configuration. Files not processed (see
    :func:`plan_inputs`) are passed to ``on_skipped`` with the reason. The returned results are in
    input order; ``on_result`` sees each as it is finished (a file that cannot be read at once, the
    others batch by batch). ``keep_metadata`` carries each input's own text metadata along, renamed
    ``source:KEY`` and bounded in size; without it, it is dropped (the record lists it either way).
    What plugins kept open for the run (the registry writer, the safety model) is closed when it
    ends (``chain.runtime.close_resources()``), unless ``keep_resources``: a caller that runs many
    runs on one runtime (``sdmark serve``) keeps them and closes them itself.
    """
    from tqdm.auto import tqdm

    from sdmark.core.pipeline import pick_device

    warn = warn or default_warn
    run = prepare_process(inputs, chain, output, safety, warn, on_skipped)
    entries = run.entries
    context = RunContext(mode="process", device=pick_device(device), warn=warn, runtime=chain.runtime)
    writer = Writer(output, context, protected=run.protected) if output is not None else None
    if writer is not None:
        writer.assign(run.targets)
    results: dict[int, ItemResult] = {}
    pending: list[ImageItem] = []
    with resources_closed(chain.runtime, keep_resources), \
            tqdm(total=len(entries), unit="img", desc="processing", disable=None if progress is None else not progress) as bar:
        chain.setup(context)

        def flush() -> None:
            for item, result in zip(list(pending), finish_batch(pending, chain, context, writer, on_result)):
                results[item.index] = result
            bar.update(len(pending))
            pending.clear()

        for index, entry in enumerate(entries):
            try:
                pending.append(load_item(entry, index, safety, run.names[index], keep_metadata))
            except ImageReadError as exc:
                result = ItemResult(name=entry.path.name, status="failed", source=entry.path, error=str(exc))
                results[index] = result
                bar.update(1)
                if on_result is not None:
                    on_result(result)
                continue
            if len(pending) >= batch_size:
                flush()
        if pending:
            flush()
    return [results[index] for index in sorted(results)]
