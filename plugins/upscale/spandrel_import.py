"""Importing spandrel where torchvision is absent.

spandrel's package import pulls in every architecture it knows, and two of them (LaMa inpainting
and RestoreFormer face restoration, neither a super-resolution model) import torchvision at module
level. torchvision has no CPU-only build on PyPI that matches a CPU torch (the PyPI wheel fails on
import with ``operator torchvision::nms does not exist``), so sdmark installs spandrel without it.

While spandrel is imported, and only then, placeholder ``torchvision`` modules stand in for the
names those two architectures import; they are removed again afterwards so that no other library
(transformers checks for torchvision) ever sees them. Running a model of those two architectures
raises a clear error instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

_PLACEHOLDER_NAMES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
_MISSING = "this model architecture needs torchvision, which is not installed (sdmark's super-resolution models do not)"


class _NeedsTorchvision:
    """Stands in for a torchvision function or enum; any use says torchvision is missing."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{self._name}: {_MISSING}")

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return _NeedsTorchvision(f"{self._name}.{attribute}")


def _placeholder(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__getattr__ = lambda attribute: _NeedsTorchvision(f"{name}.{attribute}")  # type: ignore[method-assign]
    return module


def import_spandrel() -> types.ModuleType:
    """Import and return the ``spandrel`` package, with or without torchvision installed."""
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    if importlib.util.find_spec("spandrel") is None:
        from sdmark.core.errors import SdmarkError

        raise SdmarkError("upscale:backend=model needs spandrel: pip install einops && pip install --no-deps 'spandrel>=0.4'")
    if importlib.util.find_spec("torchvision") is not None:
        return importlib.import_module("spandrel")
    installed = [name for name in _PLACEHOLDER_NAMES if name not in sys.modules]
    for name in installed:
        sys.modules[name] = _placeholder(name)
    try:
        return importlib.import_module("spandrel")
    finally:
        for name in installed:
            sys.modules.pop(name, None)
