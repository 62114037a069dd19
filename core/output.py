"""Finishing a batch: run the chain's ``process`` phases, then write each image with its metadata."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from sdmark.core.chain import Chain
from sdmark.core.errors import SdmarkError
from sdmark.core.io import output_format, write_atomic
from sdmark.core.metadata import TRAINED_ALGORITHMIC_MEDIA, a1111_parameters, build_xmp, save_with_metadata
from sdmark.core.plugins import pm
from sdmark.core.records import ProvenanceRecord
from sdmark.core.stages import ImageItem, RunContext


@dataclass
class OutputOptions:
    """Where and how images are written."""

    directory: Path
    format: str = "png"
    quality: int = 95
    overwrite: bool = False


@dataclass
class ItemResult:
    """What happened to one image: ``written``, ``dropped`` (by a policy), ``failed`` or ``kept``
    (finished but not written, when no output was requested)."""

    name: str
    status: str
    path: Path | None = None
    source: Path | None = None
    error: str | None = None
    record: ProvenanceRecord | None = None
    item: ImageItem | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("written", "kept", "dropped")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "path": str(self.path) if self.path else None,
            "source": str(self.source) if self.source else None,
            "error": self.error,
            "notes": self.item.notes if self.item else [],
            "record": self.record.to_dict() if self.record else None,
        }


class Writer:
    """Writes finished images atomically with ``parameters``, our record and XMP.

    ``protected`` are the run's input files, which are never overwritten. Names are made unique
    within a run so two inputs never race for one output file.
    """

    def __init__(self, options: OutputOptions, context: RunContext, protected: Iterable[Path] = ()) -> None:
        self.options = options
        self.context = context
        self.format, self.suffix = output_format(options.format)
        self.protected = list(protected)
        self._taken: set[Path] = set()

    def target(self, name: str) -> Path:
        path = self.options.directory / f"{name}{self.suffix}"
        number = 1
        while path in self._taken:
            path = self.options.directory / f"{name}-{number}{self.suffix}"
            number += 1
        self._taken.add(path)
        return path

    def write(self, item: ImageItem) -> Path:
        record = item.record
        if record.kind == "generated" and record.generation:
            item.text["parameters"] = a1111_parameters(record.generation, record.software, record.stages)
        path = self.target(item.name)
        pm.hook.sdmark_before_save(item=item, path=path, context=self.context)
        # A processed image keeps the source type its input declared; we never claim we generated it.
        source_type = (
            TRAINED_ALGORITHMIC_MEDIA if record.kind == "generated" else item.source_metadata.get("digital_source_type")
        )
        xmp = build_xmp(record, source_type)
        text = dict(item.text)
        parameters = text.pop("parameters", None)

        def encode(tmp: Path) -> None:
            save_with_metadata(item.image, tmp, self.format, parameters=parameters, record=record, xmp=xmp,
                               extra_text=text, quality=self.options.quality)

        def finalize(tmp: Path) -> None:
            pm.hook.sdmark_finalize_output(path=tmp, item=item, context=self.context)

        written = write_atomic(path, encode, overwrite=self.options.overwrite, protected=self.protected, finalize=finalize)
        pm.hook.sdmark_after_save(path=written, item=item, context=self.context)
        return written


def finish_batch(
    items: list[ImageItem],
    chain: Chain,
    context: RunContext,
    writer: Writer | None,
    on_result: Callable[[ItemResult], None] | None = None,
) -> list[ItemResult]:
    """Run the chain's ``process`` phases on ``items`` and write (or keep) each one that survives."""
    chain.run_process(items, context)
    results = []
    for item in items:
        base = {"name": item.name, "source": item.source, "record": item.record, "item": item}
        if item.error is not None:
            result = ItemResult(status="failed", error=item.error, **base)
        elif item.dropped is not None:
            result = ItemResult(status="dropped", error=item.dropped, **base)
        elif writer is None:
            result = ItemResult(status="kept", **base)
        else:
            try:
                result = ItemResult(status="written", path=writer.write(item), **base)
            except SdmarkError as exc:
                result = ItemResult(status="failed", error=str(exc), **base)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results
