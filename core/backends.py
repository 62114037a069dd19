"""A registry of backend classes by name: what the safety and upscale stages choose from.

Each backend is a class with a ``name`` and its own options (:class:`~sdmark.core.options.DeclaresOptions`);
plugins add them through a ``register`` callback hook (:meth:`sdmark.core.runtime.Runtime.collect`).
Subclasses name the kind of backend and check what a backend of that kind must have.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar

from sdmark.core.errors import ChainError, PluginError
from sdmark.core.options import DeclaresOptions, StageOptions

B = TypeVar("B", bound=DeclaresOptions[Any])


class BackendRegistry(Generic[B]):
    """Backend classes by name; a name taken twice is an error, so two plugins never fight silently."""

    kind: ClassVar[str] = "backend"
    """How errors name a backend: ``"safety backend"``, ``"upscale backend"``."""
    sorted_names: ClassVar[bool] = False
    """List names sorted (else in registration order)."""

    def __init__(self) -> None:
        self._backends: dict[str, type[B]] = {}

    def check(self, backend: Any) -> str:
        """``backend``'s name, once it has all a backend of this kind needs (else :class:`PluginError`)."""
        return self.name_of(backend)

    def name_of(self, backend: Any) -> str:
        """``backend.name``, which must be a non-empty string."""
        name = getattr(backend, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"{self.kind} {backend!r} has no name")
        return name

    def register(self, backend: type[B]) -> None:
        """Add a backend class (see :meth:`check`); its options declaration is checked now."""
        name = self.check(backend)
        options: type[StageOptions] = backend.Options
        options.declared()  # a malformed declaration is the plugin's error, named now
        other = self._backends.get(name)
        if other is not None and other is not backend:
            raise PluginError(f"{self.kind} {name!r} is registered twice: by {other.__module__} and by {backend.__module__}")
        self._backends[name] = backend

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._backends)) if self.sorted_names else tuple(self._backends)

    def get(self, name: str) -> type[B]:
        try:
            return self._backends[name]
        except KeyError:
            raise ChainError(f"unknown {self.kind} {name!r}; installed: {', '.join(self.names()) or 'none'}") from None

    def options(self) -> dict[str, type[StageOptions]]:
        """Each backend's options class, by name, in :meth:`names` order (the stage's option group)."""
        return {name: self._backends[name].Options for name in self.names()}
