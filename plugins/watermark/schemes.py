"""Watermark schemes: the marks ``sdmark verify`` knows, each a named detector with a verdict.

A scheme is any object with the attributes and method of :class:`Scheme`. Built-in schemes and
third-party ones are registered alike, through the ``sdmark_register_watermark_schemes`` hook.
Detectors read the image through an :class:`ImageView`, which computes each shared transform
(a chroma plane, its Haar band, per-block scores) once per image however many schemes use it.

Confidence
----------
Every detection has a ``p_value``: the probability that an *unmarked* image gives a read at least
this good. For a fixed message of ``n`` bits with ``k`` bits matching it is the binomial tail
``P(Binomial(n, 1/2) >= k)`` of a count widened by the image's own null (its matches when its
blocks are read at 32 other lengths and with the message turned, :func:`dependence_adjusted_tail`),
since periodic and tiled images correlate the bits; for the sdmark payload it is the BCH bound of
:mod:`sdmark.plugins.watermark.payload`. A scheme that reads the image in several ways (SDXL: two
channel orders, uint8 or float embedding) multiplies its best p-value by the number of ways (Bonferroni).

The band turns the p-value into words, like Stability's ``detect.py``:

============  ===============  ==================================================================
band          p-value          meaning
============  ===============  ==================================================================
very likely   <= 1e-9          watermarked
likely        <= 1e-6          watermarked
partial       <= 1e-3          some bits agree; not enough to call it marked
none          > 1e-3           nothing found
============  ===============  ==================================================================

An image is reported *watermarked* when one scheme is ``likely`` or ``very likely``. The cut at
1e-6 per scheme is the stated false-positive rate for fair-coin bits. Decoded bits of real images
are not fair coins (flat and graphic images read long runs of equal bits), so the cuts were checked
on unmarked images, photos and flat/graphic ones, with crops and re-encodes: run
``python -m sdmark.plugins.watermark.calibration`` for the table of their best p-values per scheme.
On 259 unmarked images the smallest p-value of any scheme was 8.4e-3 (see that module's docstring), and
``tests/test_watermark_detect.py`` fails if any unmarked test image is reported watermarked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from math import comb
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol, runtime_checkable

import numpy as np

from sdmark.plugins.watermark import dwt, payload

if TYPE_CHECKING:
    from sdmark.core.runtime import Runtime

BANDS = (("very likely", 1e-9), ("likely", 1e-6), ("partial", 1e-3))
"""(band, largest p-value in it), strongest first; above the last cut the band is ``none``."""
WATERMARKED_BANDS = frozenset({"very likely", "likely"})


def band_for(p_value: float) -> str:
    """The band of a p-value (see the module docstring)."""
    for name, cut in BANDS:
        if p_value <= cut:
            return name
    return "none"


@lru_cache(maxsize=None)
def binomial_tail(n: int, k: int) -> float:
    """``P(Binomial(n, 1/2) >= k)``, exact."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return sum(comb(n, i) for i in range(k, n + 1)) / 2.0**n


NULL_LENGTHS = 32
"""Other message lengths a fixed-message read is repeated at, to measure the image's own null."""


@lru_cache(maxsize=None)
def null_lengths(n: int) -> tuple[int, ...]:
    """The ``NULL_LENGTHS`` lengths above ``n`` that share no factor with it: read at such a length,
    each bit of a marked image is a vote over the whole message, so the mark itself never lines up."""
    from math import gcd

    lengths: list[int] = []
    length = n
    while len(lengths) < NULL_LENGTHS:
        length += 1
        if gcd(length, n) == 1:
            lengths.append(length)
    return tuple(lengths)


def dependence_adjusted_tail(n: int, k: int, other_lengths: np.ndarray, turns: np.ndarray,
                             message: np.ndarray) -> float:
    """``P(matches >= k)`` for an ``n``-bit ``message`` whose read bits may be correlated (periodic images).

    The binomial tail assumes independent bits; on periodic, tiled or structured images the blocks
    repeat, the bits are correlated and chance matches spread far wider. Two nulls of the same image
    measure how wide, where no mark can line up:

    * ``other_lengths``: its matches with the message when its blocks are read at other lengths
      (:func:`null_lengths`); their variance. (Not their spread around ``n / 2``: a read that votes
      over many blocks is nearly constant, on a marked image or not, and matches the message in its
      share of ones or of zeros, far from ``n / 2`` for an unbalanced message and meaning nothing.)
    * ``turns``: the read's matches with the message turned cyclically by 1..n-1 bits. A read whose
      bits repeat with a period the message's own structure shares (ASCII's 8) matches every turn by
      a multiple of it as well as the message. A genuine read of accuracy ``a = k / n`` is expected to
      match a turn by ``s`` in ``A_s a + (n - A_s)(1 - a)`` bits (``A_s``: the message's agreement with
      itself turned), so only the excess over that counts, and the message's own self-similarity
      costs a genuine mark nothing.

    The larger of the two spreads, where above the fair-coin ``n / 4``, widens the
    count, and the binomial tail is taken of the count so adjusted. For fair, independent bits it is
    the plain binomial tail.
    """
    return _adjusted_tail(n, k, other_lengths, turns, _self_agreement(tuple(int(b) for b in message)))


def _adjusted_tail(n: int, k: int, other_lengths: np.ndarray, turns: np.ndarray, agreement: np.ndarray) -> float:
    """:func:`dependence_adjusted_tail` with the message's agreement with its own turns given."""
    accuracy = k / n
    lengths_spread = float(np.var(np.asarray(other_lengths, dtype=np.float64)))
    expected = agreement * accuracy + (n - agreement) * (1 - accuracy)
    turns_spread = float(np.mean((np.asarray(turns, dtype=np.float64) - expected) ** 2))
    inflation = max(1.0, max(lengths_spread, turns_spread) / (n / 4))
    adjusted = n / 2 + (k - n / 2) / np.sqrt(inflation)
    return binomial_tail(n, int(np.ceil(adjusted - 1e-9)))


@lru_cache(maxsize=64)
def _self_agreement(message: tuple[int, ...]) -> np.ndarray:
    bits = np.asarray(message, dtype=bool)
    agreement = np.array([int((bits == np.roll(bits, shift)).sum()) for shift in range(1, len(bits))], dtype=np.float64)
    agreement.setflags(write=False)
    return agreement


def turned_matches(read: np.ndarray, message: np.ndarray) -> np.ndarray:
    """The read's matches with ``message`` turned cyclically by 1..n-1 bits."""
    return (_turns(tuple(int(b) for b in message)) == np.asarray(read, dtype=bool)).sum(axis=1)


@lru_cache(maxsize=64)
def _turns(message: tuple[int, ...]) -> np.ndarray:
    bits = np.asarray(message, dtype=bool)
    turns = np.stack([np.roll(bits, shift) for shift in range(1, len(bits))])
    turns.setflags(write=False)
    return turns


@lru_cache(maxsize=64)
def _message_bits(message: tuple[int, ...]) -> np.ndarray:
    bits = np.asarray(message, dtype=bool)
    bits.setflags(write=False)
    return bits


@dataclass
class Detection:
    """What one scheme found in one image."""

    scheme: str
    p_value: float
    payload: str | None = None
    band: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.band:
            self.band = band_for(self.p_value)

    @property
    def watermarked(self) -> bool:
        return self.band in WATERMARKED_BANDS

    def to_json(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "p_value": float(self.p_value), "payload": self.payload,
                "band": self.band, **self.details}


STRIP_PIXELS = 1 << 19
"""About how many pixels each strip has where a large image is worked on in strips (its RGB array,
its block scores). Block-score strips are whole multiples of 8 rows (one block row of the low-low
band), so they give exactly the scores of the whole image."""


def rgb_array(image: Any) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 array of a PIL image or array, with no whole-image copy on the way.

    ``image.convert("RGB")`` copies even an RGB image, and ``np.asarray`` of a PIL image goes through
    ``tobytes()``, which holds its pieces and their join at once: up to 10 bytes per pixel at the
    peak for a 3-byte result. A large image is copied into the array in strips instead.
    """
    if not hasattr(image, "convert"):
        return np.asarray(image)
    width, height = image.size
    if width * height <= STRIP_PIXELS:
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    out = np.empty((height, width, 3), dtype=np.uint8)
    rows = max(1, STRIP_PIXELS // width)
    for top in range(0, height, rows):
        strip = image.crop((0, top, width, min(height, top + rows)))
        out[top:top + strip.height] = np.asarray(strip if strip.mode == "RGB" else strip.convert("RGB"))
    return out


MEMO_BLOCKS_PIXELS = 1 << 20
"""Up to this many pixels (1024x1024) the low-low blocks of each channel order are kept and shared
between methods; above it, each method's scores are made in strips so memory stays a fraction of
the image's."""


class ImageView:
    """One image as detectors see it, with every derived array computed at most once.

    ``rgb`` is an ``(H, W, 3)`` uint8 array (alpha dropped: marks live in the colour channels).
    """

    def __init__(self, rgb: np.ndarray) -> None:
        self.rgb = np.ascontiguousarray(rgb[:, :, :3], dtype=np.uint8)
        self._memo: dict[Any, Any] = {}

    @property
    def height(self) -> int:
        return self.rgb.shape[0]

    @property
    def width(self) -> int:
        return self.rgb.shape[1]

    def memo(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per image per ``key``: how schemes share any work of their own."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def block_scores(self, method: str, order: dwt.Order = "bgr", offset: float = 0.0) -> np.ndarray:
        """Per-block scores of a DWT method (``dwtDct``/``dwtDctSvd``) for a channel order.

        ``offset`` is subtracted from the low-low band first: :data:`dwt.FLOAT_OFFSET` reads a mark
        that was embedded in a float image (see there). Every method and offset of one channel
        order shares its U plane and Haar band, and every ``dwtDct`` offset its block extremes.
        """
        if method not in ("dwtDct", "dwtDctSvd"):
            raise ValueError(f"not a DWT method: {method!r}")
        key = ("scores", method, order, offset)
        if self.height * self.width <= MEMO_BLOCKS_PIXELS:
            def whole() -> np.ndarray:
                ll = self.memo(("ll", order), lambda: dwt.haar_ll(dwt.u_plane(self.rgb, order)))
                if method == "dwtDct":
                    return dwt.dct_scores(self.memo(("dct-extremes", order), lambda: dwt.dct_extremes(ll)), offset)
                blocks = self.memo(("blocks", order), lambda: dwt.to_blocks(ll))
                return dwt.scores_of_blocks(blocks - offset if offset else blocks, method)

            return self.memo(key, whole)
        rows = self.height // 8 * 8  # whole block rows: what the whole-image computation uses
        step = max(8, STRIP_PIXELS // self.width // 8 * 8)
        return self.memo(key, lambda: np.concatenate(
            [dwt.band_scores(dwt.haar_ll(dwt.u_plane(self.rgb[top:min(rows, top + step)], order)), method, offset)
             for top in range(0, rows, step)]))

    def bits(self, method: str, length: int, order: dwt.Order = "bgr", offset: float = 0.0) -> np.ndarray:
        """The ``length`` bits invisible-watermark would decode with ``method`` (bool array)."""
        return dwt.bits_from_scores(self.block_scores(method, order, offset), length)

    def carriers(self) -> int:
        """Blocks available to the DWT methods (each carries one copy of one bit)."""
        return dwt.capacity(self.height, self.width)


@runtime_checkable
class Scheme(Protocol):
    """What ``sdmark verify`` needs from a scheme.

    ``name`` is unique and shown to users; ``costly`` schemes (a neural decoder) run only when
    asked for by name or with ``--all-schemes``; ``decoder`` names the transform it reads (for
    ``sdmark verify --list-schemes``). ``detect`` returns a :class:`Detection` (any band) or
    ``None`` when the image cannot carry this mark (too small).
    """

    name: str
    description: str
    decoder: str
    costly: bool

    def detect(self, view: ImageView) -> Detection | None: ...


def _bits_of_bytes(message: bytes) -> tuple[int, ...]:
    return tuple(int(b) for b in np.unpackbits(np.frombuffer(message, dtype=np.uint8)))


@dataclass(frozen=True)
class FixedMessageScheme:
    """A tool that stamps the same message into every image; verdict from the count of matching bits.

    ``readings`` lists the ways the tool has been seen to hand images to invisible-watermark:
    (channel order, offset of the low-low band; :data:`dwt.FLOAT_OFFSET` for float images). Each is
    read and the best p-value, times the number of readings, is the verdict.
    """

    name: str
    description: str
    bits: tuple[int, ...]
    method: str = "dwtDct"
    readings: tuple[tuple[dwt.Order, float], ...] = (("bgr", 0.0),)
    text: str | None = None
    costly: bool = False

    @property
    def decoder(self) -> str:
        ways = sorted({order for order, _ in self.readings}) + (["float"] if any(o for _, o in self.readings) else [])
        return f"{self.method} ({'/'.join(ways)})"

    @classmethod
    def from_bytes(cls, name: str, description: str, message: bytes, **kwargs: Any) -> FixedMessageScheme:
        return cls(name, description, _bits_of_bytes(message), text=message.decode("latin-1"), **kwargs)

    def detect(self, view: ImageView) -> Detection | None:
        n = len(self.bits)
        if view.carriers() < n:
            return None
        expected = _message_bits(self.bits)
        turns, agreement, lengths = _turns(self.bits), _self_agreement(self.bits), null_lengths(n)
        best: tuple[float, int, dwt.Order, float] | None = None
        scores = np.stack([view.block_scores(self.method, order, offset) for order, offset in self.readings])
        others = (dwt.bits_at_lengths(scores, lengths, n) == expected).sum(axis=2)
        for (order, offset), reading, other in zip(self.readings, scores, others):
            read = dwt.bits_from_scores(reading, n)
            matches = int((read == expected).sum())
            tail = _adjusted_tail(n, matches, other, (turns == read).sum(axis=1), agreement)
            if best is None or tail < best[0]:
                best = (tail, matches, order, offset)
        assert best is not None
        tail, matches, order, offset = best
        p_value = min(1.0, tail * len(self.readings))
        details: dict[str, Any] = {"matched_bits": matches, "bits": n}
        if len(self.readings) > 1:
            details["channel_order"] = order
            details["embedded_as"] = "float" if offset else "uint8"
        payload_text = self.text if p_value <= BANDS[1][1] else None
        return Detection(self.name, p_value, payload_text, details=details)


@dataclass(frozen=True)
class SdmarkPayloadScheme:
    """Our own payload (:mod:`~sdmark.plugins.watermark.payload`) embedded with a DWT method."""

    name: str
    description: str
    method: str
    costly: bool = False
    methods_tried: int = 2
    """How many sdmark payload schemes a default verify runs (for the union bound)."""

    @property
    def decoder(self) -> str:
        return f"{self.method} (bgr), BCH"

    def detect(self, view: ImageView) -> Detection | None:
        if view.carriers() < payload.LENGTH:
            return None
        found = payload.decode(view.bits(self.method, payload.LENGTH), self.method, self.methods_tried)
        if found is None:
            return Detection(self.name, 1.0, None, details={"decoded": False})
        return Detection(self.name, found.p_value, found.hex,
                         details={"decoded": True, "corrected_bits": found.corrected, "method": self.method})


@dataclass(frozen=True)
class RivaGanPatternScheme:
    """sdmark's fixed keyed 32-bit pattern embedded with rivaGan; verdict from matching bits."""

    name: str = "sdmark-rivaGan"
    description: str = "sdmark's keyed pattern in rivaGan (32 bits; a neural decoder, ~0.6 s an image)"
    decoder: str = "rivaGan (ONNX)"
    costly: bool = True

    def detect(self, view: ImageView) -> Detection | None:
        from sdmark.plugins.watermark import rivagan

        bits = view.memo("rivaGan", lambda: rivagan.decode(view.rgb))
        matches = int((bits == payload.RIVAGAN_PATTERN.astype(bool)).sum())
        # With 32 bits the "likely" cut (1e-6) falls between 29 and 30 matches: the stated bound.
        p_value = binomial_tail(payload.RIVAGAN_BITS, matches)
        return Detection(self.name, p_value, None, details={"matched_bits": matches, "bits": payload.RIVAGAN_BITS})


@dataclass(frozen=True)
class SpectralScheme:
    """sdmark's own spread-spectrum mark (:mod:`~sdmark.plugins.watermark.spectral`), with the public
    key or the deployment's ``SDMARK_WATERMARK_KEY``."""

    name: str = "sdmark"
    description: str = "sdmark spread-spectrum mark (64-bit id, keyed check + BCH; survives crops and resizing)"
    decoder: str = "spectral (FFT)"
    costly: bool = False

    def detect(self, view: ImageView) -> Detection | None:
        from sdmark.plugins.watermark import spectral
        from sdmark.plugins.watermark.methods import spectral_key

        if min(view.height, view.width) < spectral.MIN_DETECT_SIDE:
            return None
        key = spectral_key()
        found = view.memo(("spectral", key), lambda: spectral.detect(view.rgb, key=key))
        if not found.found:
            return Detection(self.name, 1.0, None, details={"decoded": False})
        return Detection(self.name, found.p_value, found.hex,
                         details={"decoded": True, "format": found.diagnostics.get("format"),
                                  "corrected_bits": found.corrected, "scale": found.scale})


SDXL_MESSAGE = 0xB3EC907BB19E


def builtin_schemes() -> list[Any]:
    """The schemes sdmark ships: four other tools' fixed marks and our payload in each method."""
    sdxl_bits = tuple(int(b) for b in bin(SDXL_MESSAGE)[2:])
    return [
        FixedMessageScheme.from_bytes(
            "sd-v1", "Stable Diffusion v1 reference scripts (CompVis txt2img/img2img): 'StableDiffusionV1', dwtDct",
            b"StableDiffusionV1"),
        FixedMessageScheme.from_bytes(
            "sd-v2", "Stable Diffusion 2 reference scripts (Stability-AI/stablediffusion): 'SDV2', dwtDct", b"SDV2"),
        FixedMessageScheme(
            "sdxl", "SDXL in diffusers and Stability's generative-models: 48 bits 0xB3EC907BB19E, dwtDct on float "
            "images (also read as uint8, and in the swapped channel order of diffusers releases before the BGR fix)",
            # No known tool wrote uint8 images in the swapped order, so that fourth reading is not made.
            sdxl_bits, readings=(("bgr", 0.0), ("bgr", dwt.FLOAT_OFFSET), ("rgb", dwt.FLOAT_OFFSET)),
            text=f"0x{SDXL_MESSAGE:X}"),
        FixedMessageScheme.from_bytes("invokeai", "InvokeAI: 'InvokeAI', dwtDct", b"InvokeAI"),
        SdmarkPayloadScheme("sdmark-dwtDctSvd", "sdmark payload (versioned id, BCH + CRC) in dwtDctSvd", "dwtDctSvd"),
        SdmarkPayloadScheme("sdmark-dwtDct", "sdmark payload (versioned id, BCH + CRC) in dwtDct", "dwtDct"),
        SpectralScheme(),
        RivaGanPatternScheme(),
    ]


class SchemeRegistry:
    """Schemes by name, filled through the ``sdmark_register_watermark_schemes`` hook."""

    def __init__(self) -> None:
        self._schemes: dict[str, Any] = {}

    def register(self, scheme: Any) -> None:
        if not isinstance(scheme, Scheme):
            raise TypeError(f"{scheme!r} does not implement the watermark Scheme protocol "
                            "(name, description, decoder, costly, detect)")
        if scheme.name in self._schemes and self._schemes[scheme.name] is not scheme:
            from sdmark.core.errors import PluginError

            raise PluginError(f"watermark scheme {scheme.name!r} is registered twice")
        self._schemes[scheme.name] = scheme

    def get(self, name: str) -> Any:
        try:
            return self._schemes[name]
        except KeyError:
            from sdmark.core.errors import SdmarkError

            raise SdmarkError(f"unknown watermark scheme {name!r}; known schemes: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return list(self._schemes)

    def __iter__(self):
        return iter(self._schemes.values())

    def __contains__(self, name: object) -> bool:
        return name in self._schemes

    def select(self, names: Iterable[str] = (), all_schemes: bool = False) -> list[Any]:
        """Named schemes; with none named, every cheap one (all of them with ``all_schemes``)."""
        names = list(names)
        if names:
            return [self.get(name) for name in names]
        return [s for s in self if all_schemes or not s.costly]


def scheme_registry(runtime: Runtime) -> SchemeRegistry:
    """Every scheme ``runtime``'s plugins register (built once per runtime)."""
    return runtime.collect("sdmark_register_watermark_schemes", SchemeRegistry, SchemeRegistry.register)
