"""Chains: parsing a chain from a spec string or a TOML file, validating it, running its phases.

Spec syntax (one string, stages separated by spaces, run left to right)::

    safety:backend=nudenet,policy=blur caption:text="Made with AI",position=bottom watermark

TOML syntax (a reviewable file)::

    [[stage]]
    name = "safety"
    policy = "blur"

    [[stage]]
    name = "watermark"
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sdmark.core.errors import ChainError, StageError
from sdmark.core.stages import DenoiseBatch, ImageItem, RunContext, Stage, StageRegistry, stage_registry

_NAME = re.compile(r"[A-Za-z_][\w\-]*")


@dataclass(frozen=True)
class StageSpec:
    """A stage name and its raw (not yet typed) options, as the user wrote them."""

    name: str
    options: dict[str, Any]
    typed: bool = False
    """True when values come typed (TOML): then "2" is not an int, as the user wrote a string."""


def parse_spec(text: str) -> list[StageSpec]:
    """Parse a chain spec string into stage specs (no validation against installed stages)."""
    specs: list[StageSpec] = []
    pos, n = 0, len(text)
    while True:
        while pos < n and text[pos].isspace():
            pos += 1
        if pos >= n:
            return specs
        match = _NAME.match(text, pos)
        if not match:
            raise ChainError(f"chain spec: expected a stage name at column {pos + 1}: {text[pos:pos + 20]!r}")
        name, pos = match.group(), match.end()
        options: dict[str, Any] = {}
        if pos < n and text[pos] == ":":
            pos += 1
            while True:
                key = _NAME.match(text, pos)
                if not key or key.end() >= n or text[key.end()] != "=":
                    raise ChainError(f"chain spec: expected key=value after {name!r} at column {pos + 1}")
                pos = key.end() + 1
                value, pos = _value(text, pos, name)
                if key.group() in options:
                    raise ChainError(f"chain spec: option {name}:{key.group()} given twice")
                options[key.group()] = value
                if pos < n and text[pos] == ",":
                    pos += 1
                    continue
                break
        if pos < n and not text[pos].isspace():
            raise ChainError(f"chain spec: unexpected {text[pos]!r} at column {pos + 1} (separate stages with spaces)")
        specs.append(StageSpec(name, options))


def _value(text: str, pos: int, stage: str) -> tuple[str, int]:
    if pos < len(text) and text[pos] in "'\"":
        quote, end = text[pos], pos + 1
        chars: list[str] = []
        while end < len(text) and text[end] != quote:
            if text[end] == "\\" and end + 1 < len(text):
                end += 1
            chars.append(text[end])
            end += 1
        if end >= len(text):
            raise ChainError(f"chain spec: unterminated quote in options of {stage!r}")
        return "".join(chars), end + 1
    end = pos
    while end < len(text) and not text[end].isspace() and text[end] != ",":
        end += 1
    return text[pos:end], end


def read_chain_file(path: Path) -> list[StageSpec]:
    """Read ``[[stage]]`` tables from a TOML file; each has ``name`` and the stage's options."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ChainError(f"cannot read chain file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ChainError(f"chain file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"stage"}
    if unknown:
        raise ChainError(f"chain file {path}: unknown top-level keys {sorted(unknown)}; use [[stage]] tables")
    tables = data.get("stage", [])
    if not isinstance(tables, list):
        raise ChainError(f"chain file {path}: 'stage' must be an array of tables ([[stage]])")
    specs = []
    for number, table in enumerate(tables, 1):
        table = dict(table)
        name = table.pop("name", None)
        if not isinstance(name, str):
            raise ChainError(f"chain file {path}: stage #{number} has no name = \"...\"")
        specs.append(StageSpec(name, table, typed=True))
    return specs


def specs_from(value: str | Path | None) -> list[StageSpec]:
    """Specs from a spec string, or from a TOML file when ``value`` names an existing ``.toml`` file."""
    if value is None:
        return []
    if isinstance(value, Path) or (str(value).endswith(".toml") and Path(value).is_file()):
        return read_chain_file(Path(value))
    if str(value).startswith("@"):
        return read_chain_file(Path(str(value)[1:]))
    return parse_spec(str(value))


class Chain:
    """An ordered, validated list of configured stages."""

    def __init__(self, stages: list[Stage]) -> None:
        self.stages = stages

    @classmethod
    def build(cls, specs: list[StageSpec] | str | Path | None, registry: StageRegistry | None = None) -> Chain:
        """Turn specs into stage instances, typing every option; errors list the valid choices."""
        registry = registry or stage_registry()
        if not isinstance(specs, list):
            specs = specs_from(specs)
        stages = []
        for spec in specs:
            cls_ = registry.get(spec.name)
            known = {option.name: option for option in cls_.options}
            unknown = set(spec.options) - set(known)
            if unknown:
                valid = ", ".join(sorted(known)) or "none"
                raise ChainError(f"stage {spec.name!r} has no option {', '.join(sorted(unknown))}; valid options: {valid}")
            values = {name: option.default for name, option in known.items()}
            for key, raw in spec.options.items():
                values[key] = known[key].coerce(raw, spec.name, strict=spec.typed)
            stages.append(cls_(**values))
        return cls(stages)

    @property
    def names(self) -> list[str]:
        return [stage.name for stage in self.stages]

    def __repr__(self) -> str:
        return " ".join(repr(stage) for stage in self.stages) or "(empty chain)"

    def validate(self, mode: str) -> list[str]:
        """Check the chain can run in ``mode`` (``generate`` or ``process``); return warnings.

        Raises :class:`ChainError` for a stage that cannot run in this mode. Warns when a
        pixel-changing stage comes after a watermark (the mark may be lost).
        """
        warnings: list[str] = []
        for stage in self.stages:
            phases = stage.active_phases()
            if mode == "process" and "process" not in phases:
                raise ChainError(
                    f"stage {stage!r} only runs during generation ({', '.join(phases)}); "
                    "it cannot process existing images"
                )
            stage.check(mode)
        for position, stage in enumerate(self.stages):
            # An invisible watermark does not change what the checker judges; visible changes do.
            earlier = [s.name for s in self.stages[:position]
                       if s.changes_pixels and not s.embeds_watermark and "process" in s.active_phases()]
            if stage.checks_safety and earlier:
                warnings.append(
                    f"{', '.join(map(repr, earlier))} run(s) before {stage.name!r}: the safety check sees their "
                    f"output, not the generated image; put {stage.name!r} first"
                )
        marked_by: Stage | None = None
        for stage in self.stages:
            if marked_by is not None and stage.changes_pixels and "process" in stage.active_phases():
                warnings.append(
                    f"stage {stage.name!r} changes pixels after {marked_by.name!r}: the watermark may be "
                    f"lost; put {stage.name!r} before {marked_by.name!r}"
                )
            if stage.embeds_watermark:
                marked_by = stage
        return warnings

    def check_safety(self, mode: str, safety: str, warn: Callable[[str], None]) -> None:
        """Enforce the safety rules before any work.

        ``generate`` with ``safety="on"`` needs a safety-checking stage (sdmark fails closed);
        ``safety="off"`` is the explicit opt-out and must not contradict the chain. ``process``
        without a safety stage runs, but says so (its records say ``not-run``).
        """
        has_safety = any(stage.checks_safety for stage in self.stages)
        if safety == "off":
            if has_safety:
                raise ChainError("safety is turned off but the chain has a safety stage; remove one or the other")
            warn("safety checking is OFF: images are written unchecked (recorded in their metadata)")
        elif not has_safety:
            if mode == "generate":
                raise ChainError("the chain has no safety stage: add 'safety' to it, or turn safety off explicitly (--no-safety)")
            warn("the chain has no safety stage: images are not checked for unsafe content (recorded as not-run)")

    def setup(self, context: RunContext) -> None:
        for stage in self.stages:
            stage.setup(context)

    def run_latent_phase(self, phase: str, batch: DenoiseBatch, context: RunContext, records: list[Any]) -> None:
        """Run ``before_denoise`` or ``after_denoise`` of every stage that has it, in chain order."""
        for stage in self.stages:
            if phase in stage.active_phases():
                result = getattr(stage, phase)(batch, context)
                for record in records:
                    record.add(stage.name, phase, stage.options, result)

    def run_process(self, items: list[ImageItem], context: RunContext) -> None:
        """Run every stage's ``process`` phase on the live items; failures mark items, not the batch."""
        for stage in self.stages:
            if "process" not in stage.active_phases():
                continue
            live = [item for item in items if item.alive]
            if not live:
                return
            try:
                stage.process(live, context)
            except Exception as exc:  # fail closed: nothing leaves a stage that did not finish
                message = str(exc) if isinstance(exc, StageError) else f"{type(exc).__name__}: {exc}"
                for item in live:
                    if item.alive:
                        item.fail(f"{stage.name}: {message}")


def parse_chain(value: str | Path | None) -> Chain:
    """Build a :class:`Chain` from a spec string or a TOML file path (plugins load on first use)."""
    return Chain.build(specs_from(value))
