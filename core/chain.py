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
from sdmark.core.runtime import Runtime
from sdmark.core.stages import DenoiseBatch, ImageItem, RunContext, Stage

_NAME = re.compile(r"[A-Za-z_][\w\-]*")
MAX_CHAIN_FILE_BYTES = 64 * 1024
"""A chain file is a handful of tables; anything bigger is refused unread."""
MAX_TOML_DEPTH = 16
MAX_TOML_KEY_PARTS = 32
MAX_TOML_DOTS = 4096
"""Caps checked before parsing: stdlib tomllib recurses per nesting level and is quadratic in the
number of parts of one dotted key (100,000 parts took 24 GB)."""


@dataclass(frozen=True)
class StageSpec:
    """A stage name and its raw (not yet typed) options, as the user wrote them."""

    name: str
    options: dict[str, Any]
    typed: bool = False
    """True when values come typed (TOML): then "2" is not an int, as the user wrote a string."""
    bare_last: str | None = None
    """The last option if its value was not quoted (``text`` in ``caption:text=Hello``): a following
    "stage" may really be the rest of that value, which the error message then says."""


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
        bare: str | None = None
        if pos < n and text[pos] == ":":
            pos += 1
            while True:
                key = _NAME.match(text, pos)
                if not key or key.end() >= n or text[key.end()] != "=":
                    raise ChainError(f"chain spec: expected key=value after {name!r} at column {pos + 1}")
                pos = key.end() + 1
                bare = None if pos < n and text[pos] in "'\"" else key.group()
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
        specs.append(StageSpec(name, options, bare_last=bare))


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


def _check_toml_shape(text: str, path: Path) -> None:
    """Refuse, before tomllib sees it, nesting deeper than :data:`MAX_TOML_DEPTH` and dotted keys of
    more than :data:`MAX_TOML_KEY_PARTS` parts (strings and comments are skipped, not parsed)."""
    # Whatever the scan below makes of odd quoting, no key can have more parts than the file has dots.
    if text.count(".") > MAX_TOML_DOTS:
        raise ChainError(f"chain file {path} has more than {MAX_TOML_DOTS} dots; a chain file needs a few")
    depth = max_depth = dots = 0
    pos, n = 0, len(text)
    while pos < n:
        char = text[pos]
        if char in "\"'":
            quote = text[pos:pos + 3] if text.startswith(char * 3, pos) else char
            pos += len(quote)
            while pos < n and not text.startswith(quote, pos):
                if char == '"' and text[pos] == "\\":
                    pos += 1
                elif len(quote) == 1 and text[pos] == "\n":
                    break
                pos += 1
            if len(quote) == 3:  # up to two more quotes belong to the content: a 4-quote run closes after one
                while pos + 3 < n and text[pos + 3] == char:
                    pos += 1
            pos += len(quote)
            continue
        if char == "#":
            end = text.find("\n", pos)
            pos = n if end < 0 else end
            continue
        if char in "[{":
            depth += 1
            max_depth = max(max_depth, depth)
            if max_depth > MAX_TOML_DEPTH:
                raise ChainError(f"chain file {path}: nested deeper than {MAX_TOML_DEPTH} levels; a chain needs 2")
        if char in "]}":
            depth = max(0, depth - 1)
        if char == ".":
            dots += 1
            if dots >= MAX_TOML_KEY_PARTS:
                raise ChainError(f"chain file {path}: a dotted key has more than {MAX_TOML_KEY_PARTS} parts")
        elif char in "=,[]{}\n":
            dots = 0
        pos += 1


def read_chain_file(path: Path) -> list[StageSpec]:
    """Read ``[[stage]]`` tables from a TOML file; each has ``name`` and the stage's options.

    Files over :data:`MAX_CHAIN_FILE_BYTES`, or nested or dotted beyond the caps, are refused
    before parsing."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CHAIN_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ChainError(f"chain file {path}: no such file") from None
    except OSError as exc:
        raise ChainError(f"cannot read chain file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CHAIN_FILE_BYTES:
        raise ChainError(f"chain file {path} is over {MAX_CHAIN_FILE_BYTES // 1024} KiB; a chain file is a few [[stage]] tables")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ChainError(f"chain file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    _check_toml_shape(text, path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ChainError(f"chain file {path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ChainError(f"chain file {path}: nested too deeply") from None
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
    text = str(value)
    # Something shaped like a file name is one: a missing file says so, rather than failing to
    # parse as a chain spec.
    if isinstance(value, Path) or (text.lower().endswith(".toml") and not any(c.isspace() or c in ":=" for c in text)):
        return read_chain_file(Path(value))
    if str(value).startswith("@"):
        return read_chain_file(Path(str(value)[1:]))
    return parse_spec(str(value))


class Chain:
    """An ordered, validated list of configured stages, and the :class:`Runtime` they come from.

    Without a ``runtime``, one is loaded from the installed plugins (:meth:`Runtime.load`); the
    runs of a chain (``generate``, ``process_images``) use the chain's runtime for every hook.
    """

    def __init__(self, stages: list[Stage[Any]], runtime: Runtime | None = None) -> None:
        self.stages = stages
        self.runtime = runtime if runtime is not None else Runtime.load()
        for stage in stages:
            stage.runtime = self.runtime

    @classmethod
    def build(cls, specs: list[StageSpec] | str | Path | None, runtime: Runtime | None = None) -> Chain:
        """Turn specs into stage instances, typing every option; errors list the valid choices."""
        runtime = runtime if runtime is not None else Runtime.load()
        registry = runtime.stages
        if not isinstance(specs, list):
            specs = specs_from(specs)
        stages = []
        for number, spec in enumerate(specs):
            try:
                cls_ = registry.get(spec.name)
            except ChainError as exc:
                before = specs[number - 1] if number else None
                if before is not None and before.bare_last:
                    raise ChainError(f"{exc}. If {spec.name!r} is part of the value of {before.name}:{before.bare_last}, "
                                     f"quote the value: {before.name}:{before.bare_last}=\"... {spec.name}\"") from None
                raise
            stage = cls_.configure(spec.options, runtime, typed=spec.typed)
            stages.append(stage)
        return cls(stages, runtime)

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
        marked_by: Stage[Any] | None = None
        seen: dict[str, int] = {}
        for position, stage in enumerate(self.stages, 1):
            if stage.name in seen:
                warnings.append(
                    f"stage {stage.name!r} appears twice (positions {seen[stage.name]} and {position}): "
                    + ("the second mark is embedded over the first and may erase it; keep one watermark stage"
                       if stage.embeds_watermark else "it runs twice; remove one unless that is what you want")
                )
            elif marked_by is not None and stage.changes_pixels and "process" in stage.active_phases():
                warnings.append(
                    f"stage {stage.name!r} changes pixels after {marked_by.name!r}: the watermark may be "
                    f"lost; put {stage.name!r} before {marked_by.name!r}"
                )
            seen.setdefault(stage.name, position)
            if stage.embeds_watermark:
                marked_by = stage
        return warnings

    def check_size(self, width: int, height: int) -> None:
        """Refuse, before any work, an image size some stage cannot handle (e.g. a watermark method's
        minimum), following the size through stages that change it (``upscale``)."""
        for stage in self.stages:
            problem = stage.unfit_size(width, height)
            if problem:
                raise ChainError(f"{stage.name}: {problem}")
            size = stage.output_size(width, height)
            if size is None:
                return
            width, height = size

    def check_safety(self, mode: str, safety: str, warn: Callable[[str], None]) -> None:
        """Enforce the safety rules before any work.

        ``generate`` and ``process`` with ``safety="on"`` need a safety-checking stage (sdmark
        fails closed, in the Python API as on the command line, where ``sdmark process`` adds the
        stage unless ``--no-safety``); ``safety="off"`` is the explicit opt-out, recorded in every
        image's record (``safety: disabled``), and must not contradict the chain.
        """
        has_safety = any(stage.checks_safety for stage in self.stages)
        if safety == "off":
            if has_safety:
                raise ChainError("safety is turned off but the chain has a safety stage; remove one or the other")
            warn("safety checking is OFF: images are written unchecked (recorded in their metadata)")
        elif not has_safety:
            raise ChainError(f"the chain has no safety stage, so {mode} would write unchecked images: add 'safety' "
                             "to it, or turn safety off explicitly (safety='off' in the Python API, --no-safety on "
                             "the command line; recorded in each image's metadata)")

    def setup(self, context: RunContext) -> None:
        for stage in self.stages:
            stage.setup(context)

    def run_latent_phase(self, phase: str, batch: DenoiseBatch, context: RunContext, records: list[Any]) -> None:
        """Run ``before_denoise`` or ``after_denoise`` of every stage that has it, in chain order."""
        for stage in self.stages:
            if phase in stage.active_phases():
                result = getattr(stage, phase)(batch, context)
                for record in records:
                    record.add(stage.name, phase, stage.option_values(), result)

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


def parse_chain(value: str | Path | None, runtime: Runtime | None = None) -> Chain:
    """Build a :class:`Chain` from a spec string or a TOML file path (plugins load from the
    entry points when no ``runtime`` is given)."""
    return Chain.build(specs_from(value), runtime)
