"""Safety backends: the NSFW checkers behind the ``safety`` stage, and their registry.

A backend is a :class:`SafetyBackend` subclass that names its own options dataclass as its type
argument (``class NudeNetBackend(SafetyBackend[NudeNetOptions])``): the ``safety`` stage accepts
every backend's options and refuses one set for a backend other than the chosen one. Plugins
contribute more through the ``sdmark_register_safety_backends(register)`` hook;
``safety:backend=NAME`` picks one. A backend loads its model in ``__init__`` (once per run:
instances are kept by the runtime, see :func:`load_backend`) and judges a batch of images in
:meth:`SafetyBackend.check`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from sdmark.core.backends import BackendRegistry
from sdmark.core.errors import PluginError
from sdmark.core.options import DeclaresOptions, Opts, StageOptions

if TYPE_CHECKING:
    from PIL import Image

    from sdmark.core.runtime import Runtime
    from sdmark.core.stages import RunContext

@dataclass
class Verdict:
    """What a backend concluded about one image.

    ``reasons`` are the (label, score) pairs that made it unsafe, worst first; ``scores`` every
    score the backend wants recorded; ``why`` a short human reason (built from ``reasons`` when
    empty); ``details`` anything else for the provenance record (thresholds, boxes).
    """

    flagged: bool
    reasons: list[tuple[str, float]] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    why: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.why:
            return self.why
        return ", ".join(f"{label} {score:.2f}" for label, score in self.reasons[:3]) or "flagged"


class SafetyBackend(DeclaresOptions[Opts]):
    """Base class of a safety backend.

    Subclasses set ``name`` (what users write after ``backend=``) and ``description``, name their
    options (a :class:`~sdmark.core.options.StageOptions` dataclass; none by default) as the type
    argument, and implement ``__init__`` (load the model; raise
    :class:`~sdmark.core.errors.ModelLoadError` naming what was tried) and :meth:`check` (called
    from several threads at once in ``sdmark serve``: keep no per-call state on the instance).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    options: Opts

    def __init__(self, options: Opts, context: RunContext) -> None:
        self.options = options

    @classmethod
    def validate(cls, options: Opts, mode: str) -> None:
        """Check this backend's options before any work; raise :class:`ChainError`."""

    @classmethod
    def cache_key(cls, options: StageOptions, context: RunContext) -> tuple[Any, ...]:
        """What makes two loaded instances interchangeable within a run."""
        return (cls.name, tuple(str(value) for value in options.values().values()), context.device, context.model)

    def check(self, images: list[Image.Image]) -> list[Verdict]:
        """Judge a batch of RGB or RGBA images; one :class:`Verdict` per image, in order.

        Raise on failure: the stage retries images one by one and fails those that still raise
        (they are never written unchecked).
        """
        raise NotImplementedError


class SafetyBackendRegistry(BackendRegistry[SafetyBackend[Any]]):
    """Safety backends by name, filled through ``sdmark_register_safety_backends``."""

    kind = "safety backend"
    sorted_names = True

    def check(self, backend: Any) -> str:
        name = self.name_of(backend)
        if not callable(getattr(backend, "check", None)):
            raise PluginError(f"safety backend {name!r} ({backend.__module__}) has no check() method")
        if "uses" in vars(backend):
            raise PluginError(f"safety backend {name!r} ({backend.__module__}) lists the options it reads in `uses`; "
                              "declare them as a StageOptions dataclass instead: class MyBackend(SafetyBackend[MyOptions])")
        options = getattr(backend, "Options", None)
        if not (isinstance(options, type) and issubclass(options, StageOptions)):
            raise PluginError(f"safety backend {name!r} ({backend.__module__}) is not a SafetyBackend subclass")
        return name


def backend_registry(runtime: Runtime) -> SafetyBackendRegistry:
    """Every backend ``runtime``'s plugins register (built once per runtime)."""
    return runtime.collect("sdmark_register_safety_backends", SafetyBackendRegistry, SafetyBackendRegistry.register)


def backend_names(runtime: Runtime) -> tuple[str, ...]:
    """The names users can give to ``safety:backend=`` (the option's choices)."""
    return backend_registry(runtime).names()


def get_backend(name: str, runtime: Runtime) -> type[SafetyBackend[Any]]:
    return backend_registry(runtime).get(name)


def backend_options(runtime: Runtime) -> dict[str, type[StageOptions]]:
    """Each backend's options class, by backend name (the ``safety`` stage's option group)."""
    return backend_registry(runtime).options()


def load_backend(name: str, options: StageOptions, context: RunContext) -> SafetyBackend[Any]:
    """The backend instance for this run, loaded once and kept by the run's runtime (a resource,
    so a server that runs many short runs on one runtime loads it once per process; the run's
    driver forgets it when the run ends). Backends are shared between a server's threads, so
    :meth:`SafetyBackend.check` must be safe to call from several at once."""
    runtime = context.require_runtime()
    cls = get_backend(name, runtime)
    key = ("safety-backend", context.mode, *cls.cache_key(options, context))
    backend: SafetyBackend[Any] = runtime.resource(repr(key), lambda: cls(options, context))
    return backend
