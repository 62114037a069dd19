"""Typed stage results: the contract between a stage and the plugins that read what it did.

A stage declares what *kind* of work it does (``Stage.kind``: ``watermark``, ``safety``,
``resize``, or ``None``); readers (C2PA actions and soft binding, the watermark read-back, the CLI
report, the A1111 text) find entries by kind through :func:`entries_of_kind`, never by the stage's
name, and read them through the typed views below. A third-party watermark stage called anything
gets the same treatment as the built-in one by declaring ``kind = "watermark"`` and returning
:meth:`WatermarkResult.to_result`'s keys.

The record itself keeps plain JSON dicts (``StageRecord.result``), so files written before and after
this contract are byte-for-byte the same; the views only read and validate those dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:
    from sdmark.core.records import ProvenanceRecord, StageRecord
    from sdmark.core.runtime import Runtime

WATERMARK, SAFETY, RESIZE = "watermark", "safety", "resize"
KINDS = (WATERMARK, SAFETY, RESIZE)


@dataclass(frozen=True)
class WatermarkResult:
    """What a watermark stage embedded: the scheme that reads it back, the payload, the strength used.

    ``embedded`` is false when the stage found a mark and left it (nothing new was embedded).
    """

    scheme: str
    payload: str | None
    strength: float | None = None
    method: str | None = None
    embedded: bool = True

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> WatermarkResult | None:
        """The view of a recorded result, or ``None`` when it names no scheme (nothing to read back)."""
        scheme = result.get("scheme") or result.get("method")
        if not scheme:
            return None
        payload = result.get("payload")
        strength = result.get("strength")
        return cls(scheme=str(scheme), payload=None if payload in (None, "") else str(payload),
                   strength=float(strength) if isinstance(strength, (int, float)) else None,
                   method=result.get("method"), embedded=result.get("embedded") is not False)

    def to_result(self) -> dict[str, Any]:
        """The keys a watermark stage puts in its result for readers of this contract."""
        return {"scheme": self.scheme, "payload": self.payload, "strength": self.strength, "method": self.method,
                "embedded": self.embedded}


@dataclass(frozen=True)
class SafetyVerdict:
    """What a safety stage decided for one image: ``flagged``, and the ``action`` its policy took
    (``none`` when the image was left as it was)."""

    flagged: bool
    action: str | None = None
    backend: str | None = None

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> SafetyVerdict:
        return cls(flagged=bool(result.get("flagged")), action=result.get("action"), backend=result.get("backend"))

    @property
    def changed_pixels(self) -> bool:
        return self.action not in (None, "none")


@dataclass(frozen=True)
class ResizeResult:
    """What a resizing stage did: the sizes before and after, and the backend that did it."""

    input_size: tuple[int, int] | None
    output_size: tuple[int, int]
    backend: str | None = None

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> ResizeResult | None:
        if "output_size" not in result:
            return None
        before = result.get("input_size")
        return cls(input_size=tuple(before) if before else None,
                   output_size=tuple(result["output_size"]),
                   backend=str(result["backend"]) if result.get("backend") else None)


def stage_kinds(runtime: Runtime) -> dict[str, str]:
    """The kind of every installed stage that declares one, by stage name."""
    return {stage.name: kind for stage in runtime.stages if (kind := stage.declared_kind()) is not None}


def entries_of_kind(stages: Iterable[StageRecord], kind: str, kinds: Mapping[str, str]) -> list[StageRecord]:
    """The entries of ``stages`` written by stages of ``kind`` (``kinds`` from :func:`stage_kinds`)."""
    return [entry for entry in stages if kinds.get(entry.stage) == kind]


def flagged(record: ProvenanceRecord, kinds: Mapping[str, str]) -> bool:
    """Whether a safety stage flagged the image."""
    return any(SafetyVerdict.from_result(entry.result).flagged for entry in entries_of_kind(record.stages, SAFETY, kinds))
