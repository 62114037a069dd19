"""Embedding methods the ``watermark`` stage offers (``watermark:method=NAME``), by name.

A method embeds an sdmark mark into an RGB array and names the scheme
(:mod:`~sdmark.plugins.watermark.schemes`) that reads it back, which the stage uses to check its
own output. A plugin adds a method by passing a :class:`Method` to ``register`` in its
``sdmark_register_watermark_methods`` hook; the stage's ``method``
option lists whatever is registered. This module is imported on every CLI start, so
embedders import their heavy dependencies when they run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from sdmark.core.errors import PluginError

if TYPE_CHECKING:
    from sdmark.core.runtime import Runtime

INVISIBLE_WATERMARK_MIN_PIXELS = 256 * 256
"""invisible-watermark refuses images with fewer pixels than 256x256: the floor of its methods
(dwtDct, dwtDctSvd, rivaGan), which each declare it; sdmark's own method has its own (128 a side)."""


@dataclass(frozen=True)
class Method:
    """One way to embed a mark.

    ``embed(rgb, ident)`` returns a marked copy of an ``(H, W, 3)`` uint8 array;
    ``ident`` is the 8-byte id (ignored when ``carries_id`` is false). ``scheme`` is the name of the
    registered scheme that detects this method's marks. ``min_pixels`` and ``min_side`` are the
    smallest image the method can mark (in pixels, and along the shorter side; 0: no floor);
    ``sure_pixels`` is the size from which the method's mark read back on every image measured (0: not
    measured), so that a refusal between the two can blame the size rather than the content; and
    ``min_carriers`` the least number of 4x4 DWT blocks it needs (0 when it does not use them). ``require()`` raises
    :class:`RuntimeError` with an install hint when a dependency is missing.

    ``strengths`` are the strengths the stage tries in turn, weakest first, until the mark reads back
    with a p-value at or under ``margin_p()``: a mark that barely reads back on the clean image would
    not survive what happens to the image next. A method without a strength knob keeps ``(1.0,)``
    and its ``embed`` needs no ``strength`` argument; one with other strengths must accept
    ``embed(rgb, ident, strength=s)`` with 1.0 as its default. Call :meth:`mark`, which passes the
    strength only when it is not 1.
    """

    name: str
    description: str
    embed: Callable[..., np.ndarray]
    scheme: str
    carries_id: bool = True
    min_carriers: int = 0
    require: Callable[[], None] = lambda: None
    min_side: int = 0
    min_pixels: int = 0
    sure_pixels: int = 0
    strengths: tuple[float, ...] = (1.0,)
    margin_p: Callable[[], float] = lambda: 1e-6  # a function: computing it may import the method's code

    def __post_init__(self) -> None:
        if not self.strengths or list(self.strengths) != sorted(set(self.strengths)) or self.strengths[0] <= 0:
            raise ValueError(f"watermark method {self.name!r}: strengths must be positive and rising, "
                             f"weakest first (got {self.strengths})")

    def mark(self, rgb: np.ndarray, ident: bytes, strength: float = 1.0) -> np.ndarray:
        """A marked copy of ``rgb`` at ``strength`` (one of :attr:`strengths`); ``rgb`` is not changed."""
        if strength not in self.strengths:
            have = ", ".join(f"{s:g}" for s in self.strengths)
            raise ValueError(f"{self.name} has no strength {strength:g} (it has {have})")
        if strength == 1.0:
            return self.embed(rgb, ident)
        return self.embed(rgb, ident, strength=strength)

    def unfit(self, width: int, height: int) -> str | None:
        """Why an image of this size cannot carry the mark, or ``None`` when it can."""
        if width * height < self.min_pixels:
            side = round(self.min_pixels ** 0.5)
            square = f" ({side}x{side})" if side * side == self.min_pixels else ""
            return (f"image is {width}x{height}: {self.name} needs at least {self.min_pixels} pixels{square}; "
                    "upscale it before the watermark stage or leave it unmarked")
        if min(width, height) < self.min_side:
            return f"image is {width}x{height}: {self.name} needs at least {self.min_side} pixels a side"
        if self.min_carriers:
            from sdmark.plugins.watermark.dwt import capacity

            if capacity(height, width) < self.min_carriers:
                return (f"image is {width}x{height}: too thin for {self.name} "
                        f"(needs {self.min_carriers} 8x8-pixel cells, has {capacity(height, width)})")
        return None


class MethodRegistry:
    """Embedding methods by name, filled through ``sdmark_register_watermark_methods``."""

    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}

    def register(self, method: Method) -> None:
        """Add a method (a name already taken is an error, so two plugins never fight silently)."""
        if not isinstance(method, Method):
            raise PluginError(f"{method!r} is not a watermark Method")
        if method.name in self._methods and self._methods[method.name] != method:
            raise PluginError(f"watermark method {method.name!r} is registered twice")
        self._methods[method.name] = method

    def get(self, name: str) -> Method:
        try:
            return self._methods[name]
        except KeyError:
            raise KeyError(f"unknown watermark method {name!r}; choose one of {', '.join(self.names())}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._methods)


def method_registry(runtime: Runtime) -> MethodRegistry:
    """The methods of ``runtime``'s plugins (built once per runtime)."""
    return runtime.collect("sdmark_register_watermark_methods", MethodRegistry, MethodRegistry.register)


def method_names(runtime: Runtime) -> tuple[str, ...]:
    """The ``watermark:method=`` choices."""
    return method_registry(runtime).names()


def builtin_method(name: str) -> Method:
    """One of the methods this plugin ships, by name, without a runtime (tests, benchmarks)."""
    for method in builtin_methods():
        if method.name == name:
            return method
    raise KeyError(f"no built-in watermark method {name!r}")


# -- built-in methods ---------------------------------------------------------------------------


def _dwt_embedder(method: str) -> Callable[..., np.ndarray]:
    def embed(rgb: np.ndarray, ident: bytes) -> np.ndarray:
        from sdmark.plugins.watermark import dwt, payload

        return dwt.embed(rgb, payload.encode(ident, method), method)

    return embed


def _rivagan_embed(rgb: np.ndarray, ident: bytes) -> np.ndarray:
    from sdmark.plugins.watermark import payload, rivagan

    return rivagan.encode(rgb, payload.RIVAGAN_PATTERN)


def _rivagan_require() -> None:
    from sdmark.plugins.watermark import rivagan

    try:
        rivagan.session("encoder")
        rivagan.session("decoder")
    except rivagan.RivaGanUnavailable as exc:
        raise RuntimeError(str(exc)) from None


def spectral_key() -> bytes:
    """The key of the ``sdmark`` mark: ``SDMARK_WATERMARK_KEY`` (a deployment's secret) or the public one.

    An environment variable, not a stage option, so the secret never lands in a chain file or in
    the provenance record written into every image.
    """
    import os

    from sdmark.plugins.watermark import spectral

    secret = os.environ.get("SDMARK_WATERMARK_KEY")
    return secret.encode("utf-8") if secret else spectral.PUBLIC_KEY


def _spectral_embed(rgb: np.ndarray, ident: bytes, strength: float = 1.0) -> np.ndarray:
    from sdmark.plugins.watermark import spectral

    return spectral.embed(rgb, ident, key=spectral_key(), strength=strength)


def _spectral_margin() -> float:
    from sdmark.plugins.watermark import spectral, spectral_code

    # Half of what BCH can correct is left for the image's later life (JPEG, resizing, ...).
    return spectral_code.false_positive_bound(spectral.ALIGNMENTS, spectral_code.BCH_T // 2)


def builtin_methods() -> tuple[Method, ...]:
    """The methods this plugin registers (the order ``sdmark stages`` lists them in)."""
    return (
        Method(
            "dwtDctSvd", "invisible-watermark dwtDctSvd with the sdmark payload (survives JPEG 75 and resizing)",
            _dwt_embedder("dwtDctSvd"), scheme="sdmark-dwtDctSvd", min_carriers=4 * 152,
            min_pixels=INVISIBLE_WATERMARK_MIN_PIXELS),
        Method(
            "dwtDct", "invisible-watermark dwtDct with the sdmark payload (fast, fragile: JPEG 90 can erase it)",
            _dwt_embedder("dwtDct"), scheme="sdmark-dwtDct", min_carriers=4 * 152,
            min_pixels=INVISIBLE_WATERMARK_MIN_PIXELS),
        Method(
            "rivaGan", "invisible-watermark rivaGan (neural, survives crops and brightness) with sdmark's keyed "
            "32-bit pattern; no room for an id, and ~1 s an image on a CPU",
            _rivagan_embed, scheme="sdmark-rivaGan", carries_id=False, require=_rivagan_require,
            min_pixels=INVISIBLE_WATERMARK_MIN_PIXELS),
        Method(
            "sdmark", "sdmark's own spread-spectrum mark with self-synchronisation (survives crops, resizing, "
            "JPEG and tone changes); 64-bit id", _spectral_embed, scheme="sdmark", min_side=128,
            # spectral.MIN_EMBED_PIXELS (not imported here: that pulls in numpy's FFT code and OpenCV);
            # benchmarks/size_floor.py (48 images): from 208x208 pixels every image read back.
            min_pixels=176 * 176, sure_pixels=208 * 208,
            strengths=(1.0, 1.5, 2.0, 3.0), margin_p=_spectral_margin),
    )
