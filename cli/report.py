"""Printing per-image results: a short line each (or JSON lines) on stdout, a summary on stderr."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click

from sdmark.core.output import ItemResult


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


class Reporter:
    """Collects results and prints each as it arrives."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.counts: Counter[str] = Counter()

    def __call__(self, result: ItemResult) -> None:
        self.counts[result.status] += 1
        if result.record is not None and any(entry.result.get("flagged") for entry in result.record.stages):
            self.counts["flagged"] += 1
        if self.as_json:
            click.echo(json.dumps(result.to_json(), ensure_ascii=False))
            return
        where = str(result.path or result.source or result.name)
        details = stage_summary(result)
        notes = "; ".join(result.item.notes) if result.item and result.item.notes else ""
        line = f"{result.status:<8} {where}"
        if result.error:
            line += f"  ({result.error})"
        if details:
            line += f"  [{details}]"
        if notes:
            line += f"  note: {notes}"
        click.echo(line)

    def finish(self, directory: Path | None) -> int:
        """Print the summary to stderr and return the exit code (1 when any image failed)."""
        order = ("written", "kept", "dropped", "failed")
        summary = ", ".join(f"{self.counts[k]} {k}" for k in order if self.counts[k]) or "nothing to do"
        if self.counts["flagged"]:
            summary += f" ({self.counts['flagged']} flagged by safety)"
        if directory is not None and self.counts["written"]:
            summary += f" -> {directory}"
        click.echo(summary, err=True)
        return 1 if self.counts["failed"] else 0
