"""Running a chain on existing images: read each safely, process in batches, write atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Literal

from sdmark.core.chain import Chain
from sdmark.core.errors import ImageReadError
from sdmark.core.io import InputEntry, iter_inputs, read_image, sha256_file
from sdmark.core.metadata import foreign_text, source_record
from sdmark.core.output import ItemResult, OutputOptions, Writer, finish_batch
from sdmark.core.plugins import load_plugins
from sdmark.core.records import ProvenanceRecord
from sdmark.core.stages import ImageItem, RunContext, default_warn


def load_item(entry: InputEntry, index: int, safety: str, keep_metadata: bool = False) -> ImageItem:
    """Read one input into an :class:`ImageItem` with a ``processed`` record; raises ImageReadError.

    The input's own text metadata is carried to the output only with ``keep_metadata``, renamed and
    bounded (:func:`sdmark.core.metadata.foreign_text`); the record says what was found and kept.
    """
    if entry.error:
        raise ImageReadError(entry.error)
    loaded = read_image(entry.path)
    record = ProvenanceRecord(
        kind="processed",
        safety="disabled" if safety == "off" else "not-run",
        source={
            "name": entry.path.name,
            "sha256": sha256_file(entry.path),
            "format": loaded.format,
            "width": loaded.image.width,
            "height": loaded.image.height,
            "record": source_record(loaded.metadata),
        },
    )
    text, foreign = foreign_text(loaded.metadata, keep_metadata)
    if foreign is not None:
        record.source["metadata"] = foreign
    relative = entry.relative or Path(entry.path.name)
    return ImageItem(
        image=loaded.image, record=record, name=str(relative.with_suffix("")), index=index,
        source=entry.path, text=text, source_metadata=loaded.metadata, notes=list(loaded.notes),
    )


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
    keep_metadata: bool = False,
) -> list[ItemResult]:
    """Run ``chain`` on image files and folders (recursively); one :class:`ItemResult` per input.

    A file that cannot be read is reported as failed and the rest go on. ``safety="off"`` records
    that the user turned safety off; with ``"on"`` the record says whether a safety stage ran.
    ``keep_metadata`` carries each input's own text metadata along, renamed ``source:KEY`` and
    bounded in size; without it, it is dropped (the record lists it either way).
    """
    from tqdm.auto import tqdm

    from sdmark.core.pipeline import pick_device

    load_plugins()
    warn = warn or default_warn
    for message in chain.validate("process"):
        warn(message)
    chain.check_safety("process", safety, warn)
    entries = list(iter_inputs(inputs))
    context = RunContext(mode="process", device=pick_device(device), warn=warn)
    chain.setup(context)
    protected = [entry.path for entry in entries if entry.error is None]
    writer = Writer(output, context, protected=protected) if output is not None else None
    results: list[ItemResult] = []
    pending: list[ImageItem] = []
    with tqdm(total=len(entries), unit="img", desc="processing", disable=None if progress is None else not progress) as bar:

        def flush() -> None:
            nonlocal results
            batch_results = finish_batch(pending, chain, context, writer, on_result)
            results += batch_results
            bar.update(len(pending))
            pending.clear()

        for index, entry in enumerate(entries):
            try:
                pending.append(load_item(entry, index, safety, keep_metadata))
            except ImageReadError as exc:
                result = ItemResult(name=entry.path.name, status="failed", source=entry.path, error=str(exc))
                results.append(result)
                bar.update(1)
                if on_result is not None:
                    on_result(result)
                continue
            if len(pending) >= batch_size:
                flush()
        if pending:
            flush()
    return results
