"""Safety backends: the NSFW checkers behind the ``safety`` stage, and their registry.

A backend is a :class:`SafetyBackend` subclass. Plugins contribute more through the
``sdmark_register_safety_backends(register)`` hook; ``safety:backend=NAME`` picks one. A backend
loads its model in ``__init__`` (once per run: instances are kept by the runtime, see
:func:`load_backend`) and judges a batch of images in :meth:`SafetyBackend.check`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from sdmark.core.errors import ChainError, PluginError

if TYPE_CHECKING:
    from PIL import Image

    from sdmark.core.runtime import Runtime
    from sdmark.core.stages import RunContext

BACKEND_OPTIONS = ("threshold", "classes", "model", "sensitivity")
"""Stage options that belong to backends; each backend lists the ones it reads in ``uses``."""


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


class SafetyBackend:
    """Base class of a safety backend.

    Subclasses set ``name`` (what users write after ``backend=``), ``description`` and ``uses`` (the
    stage options they read, among :data:`BACKEND_OPTIONS`), and implement ``__init__`` (load the
    model; raise :class:`~sdmark.core.errors.ModelLoadError` naming what was tried) and
    :meth:`check` (called from several threads at once in ``sdmark serve``: keep no per-call state
    on the instance).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    uses: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: dict[str, Any], context: RunContext) -> None:
        self.options = options

    @classmethod
    def validate(cls, options: dict[str, Any], mode: str) -> None:
        """Check this backend's options before any work; raise :class:`ChainError`."""

    @classmethod
    def cache_key(cls, options: dict[str, Any], context: RunContext) -> tuple[Any, ...]:
        """What makes two loaded instances interchangeable within a run."""
        return (cls.name, tuple(str(options.get(name)) for name in cls.uses), context.device, context.model)

    def check(self, images: list[Image.Image]) -> list[Verdict]:
        """Judge a batch of RGB or RGBA images; one :class:`Verdict` per image, in order.

        Raise on failure: the stage retries images one by one and fails those that still raise
        (they are never written unchecked).
        """
        raise NotImplementedError


class BackendRegistry:
    """Safety backends by name, filled through ``sdmark_register_safety_backends``."""

    def __init__(self) -> None:
        self._backends: dict[str, type[SafetyBackend]] = {}

    def register(self, backend: type[SafetyBackend]) -> None:
        name = getattr(backend, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"safety backend {backend!r} has no name")
        if not callable(getattr(backend, "check", None)):
            raise PluginError(f"safety backend {name!r} ({backend.__module__}) has no check() method")
        unknown = set(getattr(backend, "uses", ())) - set(BACKEND_OPTIONS)
        if unknown:
            raise PluginError(f"safety backend {name!r} uses unknown options {sorted(unknown)}; "
                              f"backends may use {', '.join(BACKEND_OPTIONS)}")
        other = self._backends.get(name)
        if other is not None and other is not backend:
            raise PluginError(f"safety backend {name!r} is registered twice: by {other.__module__} and by {backend.__module__}")
        self._backends[name] = backend

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._backends))

    def get(self, name: str) -> type[SafetyBackend]:
        try:
            return self._backends[name]
        except KeyError:
            raise ChainError(f"unknown safety backend {name!r}; installed: {', '.join(self.names()) or 'none'}") from None


def backend_registry(runtime: Runtime) -> BackendRegistry:
    """Every backend ``runtime``'s plugins register (built once per runtime)."""
    return runtime.collect("sdmark_register_safety_backends", BackendRegistry, BackendRegistry.register)


def backend_names(runtime: Runtime) -> tuple[str, ...]:
    """The names users can give to ``safety:backend=`` (the option's choices)."""
    return backend_registry(runtime).names()


def get_backend(name: str, runtime: Runtime) -> type[SafetyBackend]:
    return backend_registry(runtime).get(name)


def load_backend(name: str, options: dict[str, Any], context: RunContext) -> SafetyBackend:
    """The backend instance for this run, loaded once and kept by the run's runtime (a resource,
    so a server that runs many short runs on one runtime loads it once per process; the run's
    driver forgets it when the run ends). Backends are shared between a server's threads, so
    :meth:`SafetyBackend.check` must be safe to call from several at once."""
    runtime = context.require_runtime()
    cls = get_backend(name, runtime)
    key = ("safety-backend", context.mode, *cls.cache_key(options, context))
    return runtime.resource(repr(key), lambda: cls(options, context))
