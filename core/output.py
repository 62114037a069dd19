"""Finishing a batch: run the chain's ``process`` phases, then write each image with its metadata."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from sdmark.core.chain import Chain
from sdmark.core.errors import SdmarkError
from sdmark.core.io import output_format, write_atomic
from sdmark.core.metadata import TRAINED_ALGORITHMIC_MEDIA, a1111_parameters, build_xmp, save_with_metadata
from sdmark.core.records import ProvenanceRecord
from sdmark.core.stages import ImageItem, RunContext

if TYPE_CHECKING:
    from sdmark.core.runtime import Runtime


@dataclass
class OutputOptions:
    """Where and how images are written."""

    directory: Path
    format: str = "png"
    quality: int = 95
    overwrite: bool = False
    append: bool = False
    """``generate`` only: number new images after the highest ``NNNNN-`` already in ``directory``."""


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
            "checks": self.item.checks if self.item else {},
            "record": self.record.to_dict() if self.record else None,
        }


class OutputConflictError(SdmarkError):
    """Output files of this run already exist (found before any work, so nothing was wasted)."""


# write_atomic's temporary names (``.NAME.<8 hex>.tmp.EXT``) and the C2PA signer's (``.signing``).
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.(?:tmp|signing)(?:\.[A-Za-z0-9]+)?$")
STALE_TEMP_SECONDS = 120
"""A temp file untouched this long is left by a killed run (a live write keeps touching its file)."""


def remove_stale_temps(directory: Path, warn: Callable[[str], None] | None = None) -> int:
    """Delete temporary files of sdmark's own naming left in ``directory`` (recursively) by a run
    that was killed; files written in the last :data:`STALE_TEMP_SECONDS` are left to their run.
    Returns how many were removed."""
    if not directory.is_dir():
        return 0
    cutoff = time.time() - STALE_TEMP_SECONDS
    removed = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            if not _TEMP_NAME.match(name):
                continue
            path = Path(root) / name
            try:
                if path.is_symlink() or not path.is_file() or path.stat().st_mtime > cutoff:
                    continue
                path.unlink()
                removed += 1
            except OSError:
                continue
    if removed and warn is not None:
        warn(f"removed {removed} temporary file(s) left in {directory} by an interrupted run")
    return removed


def check_conflicts(paths: Sequence[Path], overwrite: bool, hint: str = "") -> None:
    """Raise :class:`OutputConflictError` when any of ``paths`` exists, unless ``overwrite``."""
    if overwrite:
        return
    existing = [path for path in paths if path.exists() or path.is_symlink()]
    if not existing:
        return
    shown = ", ".join(str(path) for path in existing[:3]) + (", ..." if len(existing) > 3 else "")
    raise OutputConflictError(
        f"{len(existing)} of {len(paths)} output file(s) already exist ({shown}); nothing was done. "
        f"Pass --overwrite to replace them{hint}, or choose another output folder"
    )


_NUMBERED = re.compile(r"^(\d{5,})-")


def next_number(directory: Path) -> int:
    """One more than the highest ``NNNNN-`` prefix of the files in ``directory`` (0 when none)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    numbers = [int(match.group(1)) for match in map(_NUMBERED.match, names) if match]
    return max(numbers, default=-1) + 1


class Writer:
    """Writes finished images atomically with ``parameters``, our record and XMP.

    ``protected`` are the run's input files, which are never overwritten. Names are made unique
    within a run so two inputs never race for one output file; :meth:`reserve` fixes every
    item's file before any work so that conflicts are found up front (:meth:`check_conflicts`).
    """

    def __init__(self, options: OutputOptions, context: RunContext, protected: Iterable[Path] = ()) -> None:
        self.options = options
        self.context = context
        self.format, self.suffix = output_format(options.format)
        self.protected = list(protected)
        self._taken: set[Path] = set()
        self._reserved: dict[int, Path] = {}

    @property
    def _runtime(self) -> Runtime:
        return self.context.require_runtime()

    def target(self, name: str) -> Path:
        path = self.options.directory / f"{name}{self.suffix}"
        number = 1
        while path in self._taken:
            path = self.options.directory / f"{name}-{number}{self.suffix}"
            number += 1
        self._taken.add(path)
        return path

    def reserve(self, names: Sequence[tuple[int, str]]) -> list[Path]:
        """Fix the output file of each ``(index, name)`` now, in order; :meth:`write` then uses it."""
        paths = []
        for index, name in names:
            path = self.target(name)
            self._reserved[index] = path
            paths.append(path)
        return paths

    def assign(self, targets: Mapping[int, Path]) -> None:
        """Use files fixed earlier (by :meth:`reserve`, maybe in another process) for these item indices."""
        self._reserved.update(targets)
        self._taken.update(targets.values())

    def check_conflicts(self, paths: Sequence[Path], hint: str = "") -> None:
        """Raise :class:`OutputConflictError` when any of ``paths`` exists (unless ``--overwrite``)."""
        check_conflicts(paths, self.options.overwrite, hint)

    def write(self, item: ImageItem) -> Path:
        record = item.record
        if record.kind == "generated" and record.generation:
            from sdmark.core.results import stage_kinds

            kinds = stage_kinds(self._runtime)
            item.text["parameters"] = a1111_parameters(record.generation, record.software, record.stages, kinds)
        path = self._reserved.pop(item.index, None) or self.target(item.name)
        self._runtime.before_save(item=item, path=path, context=self.context)
        # A processed image never claims we generated it, and never re-declares under our signature
        # what its input's own metadata says about its origin (anyone can write "digitalCapture" or
        # "trainedAlgorithmicMedia" into a file; the record quotes it under source.declared,
        # unverified). A digital source type travels only when the input's valid, trusted
        # credentials declare it (source.credentials, added by the c2pa plugin in before_save).
        credentials = (record.source or {}).get("credentials") or {}
        verified_type = credentials.get("digital_source_type") if credentials.get("status") == "valid" else None
        source_type = TRAINED_ALGORITHMIC_MEDIA if record.kind == "generated" else verified_type
        xmp = build_xmp(record, source_type)
        text = dict(item.text)
        parameters = text.pop("parameters", None)

        def encode(tmp: Path) -> None:
            save_with_metadata(item.image, tmp, self.format, parameters=parameters, record=record, xmp=xmp,
                               extra_text=text, quality=self.options.quality)

        def finalize(tmp: Path) -> None:
            self._runtime.finalize_output(path=tmp, final=path, item=item, context=self.context)

        written = write_atomic(path, encode, overwrite=self.options.overwrite, protected=self.protected, finalize=finalize)
        self._runtime.after_save(path=written, item=item, context=self.context)
        return written


def _outcome(item: ImageItem, writer: Writer | None) -> ItemResult:
    """What became of one finished item: failed, dropped, kept, or written by ``writer``."""

    def result(status: str, error: str | None = None, path: Path | None = None) -> ItemResult:
        return ItemResult(name=item.name, status=status, path=path, source=item.source, error=error,
                          record=item.record, item=item)

    if item.error is not None:
        return result("failed", item.error)
    if item.dropped is not None:
        return result("dropped", item.dropped)
    if writer is None:
        return result("kept")
    try:
        return result("written", path=writer.write(item))
    except SdmarkError as exc:
        return result("failed", str(exc))
    except (OSError, RuntimeError) as exc:  # e.g. a symlink loop met while resolving paths
        return result("failed", f"cannot write: {type(exc).__name__}: {exc}")


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
        result = _outcome(item, writer)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results
