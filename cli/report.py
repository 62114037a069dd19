"""Printing per-image results: a short line each (or JSON lines) on stdout, a summary on stderr;
and running a command's loop over items so that an interrupt still gets its summary."""

from __future__ import annotations

import signal
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, NoReturn

import click

from sdmark.core.results import flagged
from sdmark.cli.text import json_line, printable
from sdmark.core.output import ItemResult

EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143


def stage_summary(result: ItemResult) -> str:
    """``safety: ok; watermark: sdmark 7f3a…`` from the ``summary`` each stage put in its result."""
    if result.record is None:
        return ""
    parts = []
    for entry in result.record.stages:
        summary = entry.result.get("summary")
        if summary:
            parts.append(f"{entry.stage}: {summary}")
    if result.record.safety == "disabled":
        parts.insert(0, "safety: OFF")
    return "; ".join(parts)


def _without_path(error: str, *paths: Path | str | None) -> str:
    """``a.png: cannot decode`` -> ``cannot decode`` when the line already names ``a.png``."""
    for path in paths:
        if path is not None and error.startswith(f"{path}: "):
            return error[len(f"{path}: "):]
    return error


class Reporter:
    """Collects results and prints each as it arrives; counts what was skipped."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.counts: Counter[str] = Counter()
        self.skips: Counter[str] = Counter()
        from sdmark.cli.main import current_runtime
        from sdmark.core.results import stage_kinds

        self.kinds = stage_kinds(current_runtime())

    def __call__(self, result: ItemResult) -> None:
        self.counts[result.status] += 1
        if result.record is not None and flagged(result.record, self.kinds):
            self.counts["flagged"] += 1
        if self.as_json:
            click.echo(json_line(result.to_json()))
            return
        where = str(result.path or result.source or result.name)
        details = stage_summary(result)
        notes = "; ".join(result.item.notes) if result.item and result.item.notes else ""
        line = f"{result.status:<8} {printable(where)}"
        if result.path is not None and result.source is not None and result.path.stem != result.source.stem:
            line += f"  from {printable(result.source)}"  # renamed (pic.jpg -> pic.jpg.png): say from what
        if result.error:
            line += f"  ({printable(_without_path(result.error, result.path, result.source))})"
        if details:
            line += f"  [{printable(details)}]"
        if notes:
            line += f"  note: {printable(notes)}"
        click.echo(line)

    def skipped(self, path: Path, reason: str) -> None:
        """An input that was not processed (not an image name, a duplicate, inside the output folder)."""
        self.skips[reason] += 1

    def finish(self, directory: Path | None, interrupted: str | None = None) -> int:
        """Print the summary to stderr and return the exit code (1 when any image failed)."""
        order = ("written", "kept", "dropped", "failed")
        summary = ", ".join(f"{self.counts[k]} {k}" for k in order if self.counts[k]) or "nothing to do"
        if self.skips:
            reasons = "; ".join(f"{count} {reason}" for reason, count in self.skips.most_common())
            summary += f", {sum(self.skips.values())} skipped ({reasons})"
        if self.counts["flagged"]:
            summary += f" ({self.counts['flagged']} flagged by safety)"
        if directory is not None and self.counts["written"]:
            summary += f" -> {printable(directory)}"
        if interrupted:
            summary += f"; {interrupted} before the rest was done"
        click.echo(summary, err=True)
        return 1 if self.counts["failed"] else 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` (temp files) runs on the way out."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_reported(work: Callable[[], object], reporter: Reporter, directory: Path | None) -> NoReturn:
    """Run a command's loop over its items (``work``), then print the summary and exit with its code.

    Ctrl-C exits 130 and SIGTERM 143, after the summary of what was finished; a file being
    written is removed on the way out (``write_atomic`` cleans up in ``finally``).
    """
    try:
        with _sigterm_raises():
            work()
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        reporter.finish(directory, interrupted="terminated" if terminated else "interrupted")
        sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)
    sys.exit(reporter.finish(directory))
