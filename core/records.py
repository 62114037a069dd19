"""The provenance record that travels with every image: what made it and what each stage did."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

SCHEMA = "sdmark/record@1"


def _software() -> str:
    from sdmark import __version__

    return f"sdmark {__version__}"


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class StageRecord:
    """One stage's entry: its name, the options it ran with, the phase and what it reported."""

    stage: str
    phase: str
    options: dict[str, Any]
    result: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProvenanceRecord:
    """Per-image provenance, written as JSON into the image's metadata.

    ``kind`` is ``generated`` for images sdmark made and ``processed`` for existing images it
    changed; a processed record never claims the image was generated. ``safety`` is ``checked``,
    ``disabled`` (the user turned it off explicitly) or ``not-run`` (no safety stage in the chain).
    """

    kind: Literal["generated", "processed"]
    software: str = field(default_factory=_software)
    created: str = field(default_factory=_now)
    generation: dict[str, Any] | None = None
    source: dict[str, Any] | None = None
    stages: list[StageRecord] = field(default_factory=list)
    safety: Literal["checked", "disabled", "not-run"] = "not-run"
    schema: str = SCHEMA

    def add(self, stage: str, phase: str, options: dict[str, Any], result: dict[str, Any] | None = None) -> StageRecord:
        """Append what a stage did and return the entry (a stage may add to ``result`` later)."""
        entry = StageRecord(stage=stage, phase=phase, options=_jsonable(options), result=_jsonable(result or {}))
        self.stages.append(entry)
        return entry

    def find(self, stage: str) -> list[StageRecord]:
        """Every entry written by the stage called ``stage``, in order."""
        return [entry for entry in self.stages if entry.stage == stage]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {"schema": data.pop("schema"), **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProvenanceRecord:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not an sdmark record (schema {data.get('schema')!r}, expected {SCHEMA!r})")
        fields = dict(data)
        fields["stages"] = [StageRecord(**entry) for entry in data.get("stages", [])]
        return cls(**fields)

    @classmethod
    def from_json(cls, text: str) -> ProvenanceRecord:
        return cls.from_dict(json.loads(text))


def _jsonable(value: Any) -> Any:
    """Make option and result values JSON-safe (paths and numpy scalars become plain values)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):  # numpy / torch scalars
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    return str(value)
