"""Typed stage options: declared once as a frozen dataclass, converted once from chain specs and TOML.

A stage (or a backend of one) declares its options as a frozen :func:`~dataclasses.dataclass`
that subclasses :class:`StageOptions`, one field per option made with :func:`option`::

    @dataclass(frozen=True)
    class MirrorOptions(StageOptions):
        times: int = option(1, "how many flips", minimum=0)

    class Mirror(Stage[MirrorOptions]):
        ...  # self.options.times

A field's annotation is its type: ``str``, ``int``, ``float``, ``bool`` or ``Path`` (``X | None``
when the default is ``None``). Values are converted with click's parameter types, the same ones the
command line uses: a string from a chain spec is parsed (``"3"`` -> 3, ``"yes"`` -> True); a value
from a typed source (TOML) must already have the option's type. ``choices`` and
``minimum``/``maximum`` are checked with ``click.Choice`` and click's range types.

Options that belong to one value of another option (a backend's, a policy's) are an
:class:`OptionGroup`: each value declares its own :class:`StageOptions`, the stage accepts all of
them, and one given for a value other than the chosen one is an error naming the values it is for.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Generic, Mapping, Sequence, TypeVar, Union

import click

from sdmark.core.errors import ChainError, PluginError

if TYPE_CHECKING:
    from typing import Self

    from sdmark.core.runtime import Runtime

MAX_OPTION_CHARS = 4096
"""Longest option value accepted (a caption, a path or a hex id fit many times over)."""
OPTION_TYPES: tuple[type, ...] = (str, int, float, bool, Path)
_SHOWN_CHARS = 60
_META = "sdmark.option"

Choices = Union[Sequence[str], Callable[["Runtime"], Sequence[str]], None]


def shown(value: Any) -> str:
    """``repr(value)`` cut to a readable length, so an error never echoes a huge value back."""
    text = repr(value)
    if len(text) <= _SHOWN_CHARS:
        return text
    return f"{text[:_SHOWN_CHARS]}... ({len(str(value))} characters)"


@dataclass(frozen=True)
class _Meta:
    help: str
    choices: Choices
    minimum: float | None
    maximum: float | None


def option(default: Any, help: str, *, choices: Choices = None, minimum: float | None = None,
           maximum: float | None = None) -> Any:
    """A field of a :class:`StageOptions` dataclass: its default, its help text and its limits.

    ``choices`` is a tuple of allowed strings, or a callable taking the
    :class:`~sdmark.core.runtime.Runtime` and returning one (for choices other plugins extend, such
    as ``watermark:method``).
    """
    return field(default=default, metadata={_META: _Meta(help, choices, minimum, maximum)})


@dataclass(frozen=True)
class Option:
    """One declared option, as :meth:`StageOptions.declared` reads it from the dataclass.

    ``type`` is one of :data:`OPTION_TYPES`. ``applies_to`` names, for an option of an
    :class:`OptionGroup`, the selecting option and the values it belongs to (``("backend",
    ("nudenet",))``); ``None`` for a stage's own options.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: Choices = None
    minimum: float | None = None
    maximum: float | None = None
    applies_to: tuple[str, tuple[str, ...]] | None = None

    def allowed(self, runtime: Runtime) -> tuple[str, ...] | None:
        """The allowed values (what ``runtime``'s plugins offer, for extensible choices), or ``None``."""
        if self.choices is None:
            return None
        return tuple(self.choices(runtime) if callable(self.choices) else self.choices)

    def param_type(self) -> click.ParamType:
        """The click type that parses a string into this option's type."""
        if self.type is Path:
            return click.Path(path_type=Path)
        return {str: click.STRING, int: click.INT, float: click.FLOAT, bool: click.BOOL}[self.type]

    def limits(self, runtime: Runtime) -> click.ParamType | None:
        """The click type that checks a converted value against ``choices`` or the range, if any."""
        allowed = self.allowed(runtime)
        if allowed is not None:
            return click.Choice(allowed)
        if self.minimum is None and self.maximum is None:
            return None
        if self.type is int:
            return click.IntRange(None if self.minimum is None else math.ceil(self.minimum),
                                  None if self.maximum is None else math.floor(self.maximum))
        return click.FloatRange(self.minimum, self.maximum)

    def convert(self, value: Any, stage: str, runtime: Runtime, typed: bool = False) -> Any:
        """``value`` as this option's type, or a :class:`ChainError` naming the stage, the option and
        what it accepts.

        Strings from a chain spec are parsed by :meth:`param_type`; with ``typed`` (TOML) a number
        or boolean must already be one.
        """
        where = f"option {stage}:{self.name}"
        if isinstance(value, (str, Path)) and len(str(value)) > MAX_OPTION_CHARS:
            raise ChainError(f"{where} is {len(str(value))} characters long; the limit is {MAX_OPTION_CHARS}")
        if not self._fits(value, typed):
            raise ChainError(f"{where} expects {self.type.__name__}, got {shown(value)}")
        try:
            result = self.param_type().convert(value, None, None)
        except click.BadParameter:
            raise ChainError(f"{where} expects {self.type.__name__}, got {shown(value)}") from None
        if self.type is Path:
            result = result.expanduser()
        if self.type is float and not math.isfinite(result):
            # NaN passes every range check (each comparison with it is false): a threshold of NaN
            # would flag nothing.
            raise ChainError(f"{where} expects a finite number, got {shown(value)}")
        limits = self.limits(runtime)
        if limits is not None:
            try:
                limits.convert(result, None, None)
            except click.BadParameter:
                raise ChainError(f"{where} {self._limit_broken(result, runtime)}; got {shown(value)}") from None
        return result

    def _fits(self, value: Any, typed: bool) -> bool:
        """Whether ``value``'s Python type may become this option's type (click would also take a
        float for an int, or a bool for a number, silently)."""
        if isinstance(value, str):
            # A typed source wrote a string on purpose: "2" is not a number there. An empty string
            # is no value for anything but text (click reads "" as False and as the path ".").
            return self.type in (str, Path) or (not typed and value.strip() != "")
        if self.type is bool:
            return isinstance(value, bool)
        if self.type is int:
            return isinstance(value, int) and not isinstance(value, bool)
        if self.type is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        return self.type is Path and isinstance(value, Path)

    def _limit_broken(self, value: Any, runtime: Runtime) -> str:
        allowed = self.allowed(runtime)
        if allowed is not None:
            return f"must be one of {', '.join(allowed)}"
        if self.minimum is not None and value < self.minimum:
            return f"must be >= {self.minimum}"
        return f"must be <= {self.maximum}"


@dataclass(frozen=True)
class StageOptions:
    """Base of the options dataclasses of stages and backends (it declares no option itself)."""

    @classmethod
    def declared(cls) -> tuple[Option, ...]:
        """The options this dataclass declares, in field order; :class:`PluginError` for a field that
        is not a plain option (made with :func:`option`, of one of :data:`OPTION_TYPES`)."""
        if not dataclasses.is_dataclass(cls):
            raise PluginError(f"{cls.__qualname__} must be a @dataclass(frozen=True) (it declares options)")
        try:
            hints = typing.get_type_hints(cls, localns={"Path": Path})
        except Exception as exc:  # an annotation naming something the module does not import
            raise PluginError(f"{cls.__qualname__}: cannot read its option types ({exc})") from None
        declared = []
        for item in dataclasses.fields(cls):
            meta = item.metadata.get(_META)
            if meta is None:
                raise PluginError(f"{cls.__qualname__}.{item.name} is not declared with sdmark.core.options.option()")
            kind = _plain_type(hints.get(item.name))
            if kind is None:
                raise PluginError(f"{cls.__qualname__}.{item.name}: an option's type is one of "
                                  f"{', '.join(t.__name__ for t in OPTION_TYPES)} (or that | None); "
                                  f"got {hints.get(item.name)!r}")
            declared.append(Option(item.name, kind, item.default, meta.help, meta.choices, meta.minimum, meta.maximum))
        return tuple(declared)

    @classmethod
    def from_values(cls, values: Mapping[str, Any], stage: str, runtime: Runtime, typed: bool = False) -> Self:
        """The options with ``values`` (names this class declares) converted, the others at their defaults."""
        known = {opt.name: opt for opt in cls.declared()}
        return cls(**{name: known[name].convert(value, stage, runtime, typed) for name, value in values.items()})

    def values(self) -> dict[str, Any]:
        """Every option with its value, in declaration order."""
        return {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}


def _plain_type(hint: Any) -> type | None:
    """``int`` for ``int``, ``Path`` for ``Path | None``; ``None`` for anything else."""
    if isinstance(hint, type):
        return hint if hint in OPTION_TYPES else None
    if typing.get_origin(hint) in (Union, types.UnionType):
        rest = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(rest) == 1:
            return _plain_type(rest[0])
    return None


Opts = TypeVar("Opts", bound=StageOptions)


class DeclaresOptions(Generic[Opts]):
    """A class whose options are a :class:`StageOptions` dataclass named as its type argument:
    ``class Mirror(Stage[MirrorOptions])`` sets ``Mirror.Options = MirrorOptions`` (subclasses inherit it)."""

    Options: ClassVar[type[StageOptions]] = StageOptions

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in cls.__dict__.get("__orig_bases__", ()):
            origin = typing.get_origin(base)
            args = typing.get_args(base)
            if isinstance(origin, type) and issubclass(origin, DeclaresOptions) and args:
                if isinstance(args[0], type) and issubclass(args[0], StageOptions):
                    cls.Options = args[0]


@dataclass(frozen=True)
class OptionGroup:
    """Options that belong to one value of another option of the stage (its ``selector``).

    ``choices`` maps each value of the selector that has options to its :class:`StageOptions`
    class (a value without options may be left out). ``misplaced`` is the error given when an option
    is set for another value: ``{stage}``, ``{name}``, ``{selector}``, ``{chosen}`` and ``{users}``
    (the values it is for) are filled in.
    """

    selector: str
    choices: Mapping[str, type[StageOptions]]
    misplaced: str = "option {stage}:{name} does not apply to {selector} {chosen!r} (it is for {users})"

    def merged(self, stage: str) -> dict[str, Option]:
        """Every option of every value, by name, in the order the values declare them; an option
        several values declare must have one type and one default."""
        merged: dict[str, Option] = {}
        users: dict[str, list[str]] = {}
        helps: dict[str, dict[str, list[str]]] = {}
        for value, options in self.choices.items():
            for opt in options.declared():
                first = merged.setdefault(opt.name, opt)
                if (first.type, first.default) != (opt.type, opt.default):
                    raise PluginError(f"option {stage}:{opt.name} is declared twice with different types or defaults "
                                      f"({self.selector} {users[opt.name][0]!r} and {value!r})")
                users.setdefault(opt.name, []).append(value)
                helps.setdefault(opt.name, {}).setdefault(opt.help, []).append(value)
        return {
            name: dataclasses.replace(
                opt, applies_to=(self.selector, tuple(users[name])),
                help="; ".join(f"{', '.join(values)}: {text}" for text, values in helps[name].items()))
            for name, opt in merged.items()
        }


@dataclass(frozen=True)
class ConfiguredOptions:
    """The options a configured stage runs with: its own, and each group's for the chosen value."""

    own: StageOptions
    chosen: Mapping[str, StageOptions]
    """Options of the chosen value of each group, by selector (an empty :class:`StageOptions` when
    the chosen value declares none)."""
    everything: Mapping[str, Any]
    """Every option the stage accepts with the value it runs with, own first then each group's (what
    the provenance record shows)."""


def configure(options_class: type[StageOptions], groups: Sequence[OptionGroup], values: Mapping[str, Any],
              stage: str, runtime: Runtime, typed: bool = False) -> ConfiguredOptions:
    """Convert a stage's raw ``values`` (from a spec or a TOML table) into its typed options.

    Errors name the stage and the option: an unknown option (listing the valid ones), a bad value
    (listing the allowed ones), an option of a group given for another value than the chosen one.
    """
    own = {opt.name: opt for opt in options_class.declared()}
    merged = [(group, group.merged(stage)) for group in groups]
    known: dict[str, Option] = dict(own)
    owners = dict.fromkeys(own, "the stage")
    for group, options in merged:
        if group.selector not in own:
            raise PluginError(f"stage {stage!r}: option group {group.selector!r} is not one of the stage's own options")
        for name, opt in options.items():
            owner = f"{group.selector} {', '.join(opt.applies_to[1]) if opt.applies_to else '?'}"
            if name in known:
                raise PluginError(f"option {stage}:{name} is declared twice (by {owners[name]} and by {owner})")
            known[name], owners[name] = opt, owner
    unknown = set(values) - set(known)
    if unknown:
        valid = ", ".join(sorted(known)) or "none"
        names = ", ".join(shown(u) if len(u) > _SHOWN_CHARS else u for u in sorted(unknown))
        raise ChainError(f"stage {stage!r} has no option {names}; valid options: {valid}")
    mine = options_class.from_values({k: v for k, v in values.items() if k in own}, stage, runtime, typed)
    # Every given value is converted (a bad value is reported as such) before it is placed.
    for _, options in merged:
        for name in sorted(values.keys() & options.keys()):
            options[name].convert(values[name], stage, runtime, typed)
    chosen: dict[str, StageOptions] = {}
    everything = mine.values()
    for group, options in merged:
        value = getattr(mine, group.selector)
        group_class = group.choices.get(value, StageOptions)
        for name in sorted(values.keys() & options.keys()):
            if name not in {opt.name for opt in group_class.declared()}:
                applies_to = options[name].applies_to
                users = applies_to[1] if applies_to else ()
                raise ChainError(group.misplaced.format(stage=stage, name=name, selector=group.selector, chosen=value,
                                                        users=", ".join(users)))
        picked = group_class.from_values({k: v for k, v in values.items() if k in options}, stage, runtime, typed)
        chosen[group.selector] = picked
        mine_values = picked.values()
        everything.update({name: mine_values.get(name, opt.default) for name, opt in options.items()})
    return ConfiguredOptions(mine, chosen, everything)
