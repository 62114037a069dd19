"""Stages: the units a user composes into a chain, and the objects they work on.

A stage is a :class:`Stage` subclass with a ``name``, typed options (a :class:`StageOptions`
dataclass, see :mod:`sdmark.core.options`) and one or more phases: ``before_denoise`` and
``after_denoise`` see latents during ``generate``; ``process`` sees decoded images in ``generate``
and ``process`` alike.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Mapping, TypeVar, cast

from sdmark.core.errors import ChainError, StageError
from sdmark.core.options import (
    ConfiguredOptions,
    DeclaresOptions,
    Option,
    OptionGroup,
    Opts,
    StageOptions,
    configure,
    option,
    shown,
)
from sdmark.core.records import ProvenanceRecord

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from sdmark.core.runtime import Runtime

__all__ = [
    "PHASES", "DenoiseBatch", "ImageItem", "Option", "OptionGroup", "RunContext", "Stage", "StageOptions",
    "StageRegistry", "default_warn", "option",
]

PHASES = ("before_denoise", "after_denoise", "process")
T = TypeVar("T", bound=StageOptions)


@dataclass
class DenoiseBatch:
    """Latents of one batch during generation; hooks and latent phases may replace ``latents``."""

    latents: torch.Tensor
    seeds: list[int]
    prompts: list[str]


@dataclass
class ImageItem:
    """One image moving through the chain.

    ``text`` holds the text metadata that will be written (``parameters`` and friends);
    ``source_metadata`` what an input file carried (see :func:`sdmark.core.metadata.read_metadata`);
    ``error`` or ``dropped`` say why it will not be written. Stages change ``image`` and add to
    ``record``; ``notes`` are short remarks shown to the user; ``checks`` what was verified on the
    written file.
    """

    image: Image.Image
    record: ProvenanceRecord
    name: str
    index: int = 0
    source: Path | None = None
    seed: int | None = None
    prompt: str | None = None
    text: dict[str, str] = field(default_factory=dict)
    source_metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    dropped: str | None = None
    notes: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    """Checks made on the written file (the watermark read-back): reported with the result, never
    added to ``record``, which is already in the file by then (the file's records must agree)."""

    @property
    def alive(self) -> bool:
        return self.error is None and self.dropped is None

    def fail(self, message: str) -> None:
        """Mark the image as failed: it will be reported and not written."""
        self.error = message


def default_warn(message: str) -> None:
    """Where warnings go when the caller gives no ``warn``: one line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


@dataclass
class RunContext:
    """What a stage knows about the run it is part of.

    ``mode`` is ``generate`` or ``process``. ``settings`` is the generation settings (``None`` in
    ``process``); ``pipeline`` the loaded diffusers pipeline (``None`` in ``process``).
    ``cache`` is shared by stages that load models, so a model loads once per run.
    ``runtime`` is the :class:`~sdmark.core.runtime.Runtime` whose plugins run (its registries and
    hook calls); ``None`` only for contexts that run no hook (reserving output names).
    """

    mode: str
    device: str = "cpu"
    settings: Any = None
    pipeline: Any = None
    model: str | None = None
    cache: dict[Any, Any] = field(default_factory=dict)
    warn: Callable[[str], None] = default_warn
    runtime: Runtime | None = None

    def require_runtime(self) -> Runtime:
        """The run's runtime; an error when the context was built without one."""
        if self.runtime is None:
            raise StageError("this run context has no runtime (build it from a Chain)")
        return self.runtime


class Stage(DeclaresOptions[Opts]):
    """Base class of every stage.

    Subclasses set the class attributes, name their options dataclass as the type argument
    (``class Mirror(Stage[MirrorOptions])``: ``self.options.times``) and override the phase methods
    they list in ``phases``. :meth:`configure` builds a stage from raw option values;
    :meth:`~sdmark.core.chain.Chain.build` then sets ``self.runtime`` to the runtime the stage was
    found in, so a stage can look up what other plugins registered before a run context exists.
    """

    runtime: Runtime | None = None
    options: Opts
    """This stage's own options (an instance of :attr:`Options`)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    phases: ClassVar[tuple[str, ...]] = ("process",)
    changes_pixels: bool = True
    """Whether ``process`` changes pixels (such a stage after ``watermark`` may erase the mark); a
    stage may set it per instance when its options decide (safety's ``flag`` policy changes none)."""
    embeds_watermark: ClassVar[bool] = False
    """Whether this stage embeds an invisible watermark (pixel changes after it trigger a warning)."""
    checks_safety: ClassVar[bool] = False
    """Whether this stage is a safety check (``generate`` refuses to run without one unless told)."""
    kind: ClassVar[str | None] = None
    """What other plugins may read from this stage's results (:mod:`sdmark.core.results`):
    ``watermark``, ``safety`` or ``resize``; by default ``watermark`` when ``embeds_watermark``,
    ``safety`` when ``checks_safety``, else ``None``."""

    def __init__(self, options: Opts | None = None, chosen: Mapping[str, StageOptions] | None = None,
                 everything: Mapping[str, Any] | None = None) -> None:
        """A stage with typed ``options`` (the defaults when ``None``); ``chosen`` holds the options
        of the chosen value of each :meth:`option_groups` group, ``everything`` what the record shows
        (both as :meth:`configure` computes them)."""
        self.options = options if options is not None else cast(Opts, self.Options())
        self.chosen: dict[str, StageOptions] = dict(chosen or {})
        self._everything = dict(everything) if everything is not None else self.options.values()

    @classmethod
    def option_groups(cls, runtime: Runtime) -> tuple[OptionGroup, ...]:
        """Options that belong to one value of one of this stage's options (backends, policies)."""
        return ()

    @classmethod
    def configure(cls, values: Mapping[str, Any], runtime: Runtime, typed: bool = False) -> Stage[Any]:
        """A stage with ``values`` (raw, from a spec; typed, from TOML) converted and checked."""
        done: ConfiguredOptions = configure(cls.Options, cls.option_groups(runtime), values, cls.name, runtime, typed)
        stage = cls(cast(Opts, done.own), done.chosen, done.everything)
        stage.runtime = runtime
        return stage

    @classmethod
    def describe_options(cls, runtime: Runtime) -> list[Option]:
        """Every option the stage accepts, its own then each group's (``sdmark stages`` lists them)."""
        described = list(cls.Options.declared())
        for group in cls.option_groups(runtime):
            described += group.merged(cls.name).values()
        return described

    def chosen_options(self, selector: str, kind: type[T]) -> T:
        """The options of the chosen value of ``selector``'s :meth:`option_groups` group, which the
        caller expects to be a ``kind`` (a :class:`TypeError` when they are not)."""
        chosen = self.chosen.get(selector)
        if not isinstance(chosen, kind):
            raise TypeError(f"stage {self.name!r}: the options of {selector}={getattr(self.options, selector, '?')} "
                            f"are {type(chosen).__name__}, not {kind.__name__}")
        return chosen

    def option_values(self) -> dict[str, Any]:
        """Every option the stage accepts with the value it runs with (what its record entries show)."""
        return dict(self._everything)

    @classmethod
    def declared_kind(cls) -> str | None:
        """:attr:`kind`, or the kind the ``embeds_watermark`` / ``checks_safety`` flags imply."""
        if cls.kind is not None:
            return cls.kind
        if cls.embeds_watermark:
            return "watermark"
        return "safety" if cls.checks_safety else None

    def __repr__(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self._everything.items())
        return f"{self.name}:{opts}" if opts else self.name

    def active_phases(self) -> tuple[str, ...]:
        """The phases this configured stage runs in (may depend on its options)."""
        return self.phases

    def check(self, mode: str) -> None:
        """Validate option combinations for ``mode`` before any work; raise :class:`ChainError`."""

    def unfit_size(self, width: int, height: int) -> str | None:
        """Why an image of this size cannot go through this stage (checked before any work), or ``None``."""
        return None

    def output_size(self, width: int, height: int) -> tuple[int, int] | None:
        """The size of a ``width`` x ``height`` image after this stage, or ``None`` when it cannot be
        known before the run (then later stages are not size-checked up front)."""
        return width, height

    def setup(self, context: RunContext) -> None:
        """Load what the stage needs (models, fonts), once per run, before the first image."""

    def before_denoise(self, batch: DenoiseBatch, context: RunContext) -> dict[str, Any] | None:
        """Change ``batch.latents`` (unscaled N(0, 1) noise); return a result for the record."""
        raise NotImplementedError

    def after_denoise(self, batch: DenoiseBatch, context: RunContext) -> dict[str, Any] | None:
        """Change ``batch.latents`` (final latents); return a result for the record."""
        raise NotImplementedError

    def process(self, items: list[ImageItem], context: RunContext) -> None:
        """Change the images of a batch; the default calls :meth:`process_one` per image.

        A failure on one image marks that image failed (:meth:`ImageItem.fail`) and the others go on.
        """
        for item in items:
            if not item.alive:
                continue
            try:
                result = self.process_one(item, context)
            except StageError as exc:
                item.fail(f"{self.name}: {exc}")
                continue
            except Exception as exc:  # one bad image must not stop the batch
                item.fail(f"{self.name}: {type(exc).__name__}: {exc}")
                continue
            item.record.add(self.name, "process", self.option_values(), result)

    def process_one(self, item: ImageItem, context: RunContext) -> dict[str, Any] | None:
        """Change one image (``item.image``) and return a result for its record."""
        raise NotImplementedError


class StageRegistry:
    """Stage classes by name, filled through the ``sdmark_register_stages`` hook."""

    def __init__(self) -> None:
        self._stages: dict[str, type[Stage[Any]]] = {}
        self._owners: dict[str, str] = {}

    def register(self, stage: type[Stage[Any]], owner: str = "?") -> None:
        name = getattr(stage, "name", None)
        if not isinstance(name, str) or not name:
            raise ChainError(f"stage class {stage!r} from {owner} has no name")
        if isinstance(stage.__dict__.get("options"), tuple):
            raise ChainError(f"stage {name!r} from {owner} declares its options as a tuple of Option; declare a "
                             "StageOptions dataclass and name it as the type argument: class MyStage(Stage[MyOptions]) "
                             "(docs/plugins.md)")
        stage.Options.declared()  # a malformed declaration is the plugin's error, named now
        bad = set(stage.phases) - set(PHASES)
        if bad:
            raise ChainError(f"stage {name!r} from {owner} declares unknown phases {sorted(bad)}")
        if name in self._stages and self._stages[name] is not stage:
            raise ChainError(f"stage {name!r} is registered twice: by {self._owners[name]} and by {owner}")
        self._stages[name] = stage
        self._owners[name] = owner

    def get(self, name: str) -> type[Stage[Any]]:
        try:
            return self._stages[name]
        except KeyError:
            valid = ", ".join(sorted(self._stages)) or "none (no plugins loaded)"
            raise ChainError(f"unknown stage {shown(name)}; installed stages: {valid}") from None

    def owner(self, name: str) -> str:
        return self._owners.get(name, "?")

    def names(self) -> list[str]:
        return sorted(self._stages)

    def __iter__(self) -> Iterator[type[Stage[Any]]]:
        return iter(self._stages[name] for name in self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._stages
