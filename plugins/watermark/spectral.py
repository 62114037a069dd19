"""sdmark's own watermark: a keyed, tiled, spread-spectrum mark with self-synchronisation (``sdmark``).

What it is
----------
A keyed tile pattern (format 2, the default: 256 px, band 0.025..0.10 cycles/pixel, a keyed per-image
grid origin; format 1: 128 px, band 0.05..0.20, see :data:`FORMAT` and :mod:`.spectral_pattern`) is
added to the luminance, repeated over the whole image, and scaled pixel by pixel by a perceptual mask: up to 4 grey
levels (RMS) in textured regions, which hide it, 1.5 in flat ones; near black, white or a saturated
channel the change is kept whole rather than clipped (:func:`add_luma`). The tile's Fourier bins are dealt
by the key to a *sync* carrier and to one carrier per code bit (:mod:`.spectral_pattern`); the 64-bit
user payload is protected by a 16-bit keyed check and a BCH code that fixes 12 of its 176 bits
(:mod:`.spectral_code`).

Detection never needs the original (:mod:`.spectral_sync`). It reads the image's *detail*: what an
edge-preserving (bilateral) prediction of the host leaves, so that the flat regions and sharp edges
of digital art drop out and the mark stays. The whitened spectrum of that detail has spikes at the
tile's harmonics, and a matched template over a fine grid of resize factors (0.45x to 2.2x) finds
the scale; the same template matched in log-polar coordinates of the spectrum adds candidates for
images turned up to 15 degrees. The image is resampled onto each candidate lattice and all its tiles
are summed into one, where the mark adds up and the image averages out; a cyclic correlation with
the sync carrier finds the tile's offset (a crop at any position), read through each of the square's
8 symmetries (mirrors, quarter turns, transposes: :data:`ORIENTATIONS`); the drift of that offset across the quarters of
the image corrects the lattice (residual scale and rotation). Each code bit is then the sign of its
carrier's correlation, weighted per frequency ring by the mark strength measured on the sync
carrier, and a Chase/BCH decode with the keyed check gives the payload. Cost on one core at 512x512
(medians, quiet to busy machine): embed 10-35 ms (it reads a format-2 mark back, and marks a dense
texture twice), detect 7-20 ms for a marked image and 30-50 ms for an unmarked one (every candidate
is tried, through both formats).

False positives, on paper
-------------------------
``detect`` reports ``found`` only when a payload decodes *and* its keyed check matches. It tries at
most ``ALIGNMENTS`` = 24 alignments (4 lattice candidates x up to 3 refinements x 2 offsets), each a
Chase search of 16 hard BCH decodes in one format: the sync carriers choose the format of each
alignment as they choose its orientation, so reading both formats adds no decode. On an unmarked image (or one marked with another key) the 176
bits read at any alignment are signs of correlations between the image and keyed random-phase
carriers on frequency bins disjoint from the sync carrier's: symmetric, and XORed with a keyed
whitening mask, so they are fair coins for this count. One decode accepts with probability
``2^64 * V(176, 12) / 2^176 = 2.6e-16`` (:func:`.spectral_code.decode_probability`), so by the union
bound::

    P(found | unmarked) <= 24 * 16 * 2.6e-16 = 1.0e-13   per image,

The orientations and turns searched only choose which alignments are decoded (by the sync carrier
and the lattice template, never by the whitening mask), so they do not enter the count.

seven orders of magnitude under the 1e-6 asked for. The margin also covers reads that are not fair
coins: the acceptance region holds ``2^64 * V(176, 12) = 2^124.2`` words, so the bound stays under
1e-6 as long as no single 176-bit read is more likely than ``2^-152.7`` (i.e. the read keeps 153 of
its 176 bits of min-entropy). The ``p_value`` of a detection is the same union bound with the number
of bits the accepted word actually differed from the read: the probability that an unmarked image
decodes at least this cleanly. ``benchmarks/robustness.py --false-positives 10000`` counts detections
on unmarked images (crops and rescales of real photos, flat, gradient, text, noise and drawn images).
See ``docs/spectral-watermark.md`` for the measurements.

Keys
----
``PUBLIC_KEY`` is the documented default: anyone can verify a public mark, and anyone can also forge
it (embed with the public key) and remove it (the exact pattern is known): a label, not evidence.
A deployment that wants forgery resistance passes its own secret ``key``: carrier layout, phases,
whitening and check all derive from it (SHA-256/HMAC), so without it a detector reads random bits,
and a forger cannot produce a mark that verifies under it.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterator

import numpy as np
from scipy import fft as sfft

from sdmark.plugins.watermark import spectral_code as code
from sdmark.plugins.watermark import spectral_pattern as pattern
from sdmark.plugins.watermark import spectral_sync as sync

PUBLIC_KEY = b"sdmark-public-v1"
"""The default, documented key: marks made with it are readable (and forgeable) by anyone."""
FORMAT = pattern.V2.name
"""The format :func:`embed` writes by default: ``sdmark-spectral/2`` (key derivation label
``sdmark/spectral/v2/``, 256 px tile, band 0.025..0.10 cycles/pixel, a per-image tile origin, 176 code
bits), on images at least ``V2_MIN_SIDE`` a side; smaller ones get ``sdmark-spectral/1`` (label
``sdmark/spectral/v1/``, 128 px tile, band 0.05..0.20). Every detection reports the format it read
(``diagnostics["format"]``); the detector reads both."""
FORMATS = tuple(fmt.name for fmt in pattern.FORMATS)
"""The formats :func:`detect` reads."""
V2_MIN_SIDE = 2 * pattern.V2.tile
"""Smallest width/height marked in format 2 by default: two of its tiles, so that a crop to 75% or a
0.35x downscale still holds more than 1.5 of them; smaller images get format 1."""
PAYLOAD_BYTES = code.PAYLOAD_BYTES
"""User payload size: 8 bytes (64 bits)."""
MIN_EMBED_SIDE = pattern.TILE
"""Smallest width/height :func:`embed` accepts: one whole tile."""
MIN_EMBED_PIXELS = 176 * 176
"""Fewest pixels (width x height) :func:`embed` accepts. Below about 170 x 170 (1.3 tiles a side) the
scale search ranks only wrong lattices (scales 0.5 or 1.4 to 2), so the clean mark does not read back
at any strength, although it would decode at its true lattice (sync z 14 to 16 on 144 and 160 px
photos at strength 3). Measured by ``benchmarks/size_floor.py`` (48 images): from 176 x 176 pixels every size tested
(strips like 128 x 256 or 128 x 400 included) read back on every image but the dense grass and gravel
textures (read on all from 208 x 208), while at 168 x 168, 160 x 160, 128 x 192 and 128 x 176 photos
and illustrations failed too (at 128 x 128 all but one); the floor sits 10% above the largest of
those (28224 pixels)."""
MIN_DETECT_SIDE = 96
"""Smallest width/height :func:`detect` reads: below it, not even a 0.5x resize holds 1.5 tiles."""
LATTICES = 4
OFFSETS = 2
REFINES = 2
ALIGNMENTS = LATTICES * (REFINES + 1) * OFFSETS
"""Alignments one detection tries at most, both formats together; the false-positive union bound
counts them all."""
Z_REFINE = 5.5
"""Sync peak (standard deviations) above which a failed read refines the lattice and tries again:
the largest of 32,768 correlations of an unmarked tile is about 4.5."""
THRESHOLD = 1e-6
"""The p-value under which a decoded payload is reported as found (every decode is far below it)."""

# Perceptual mask: amplitude (grey levels, RMS of the unit pattern) = clip(GAIN * local detail, FLOOR, CAP).
MASK_GAIN = 0.3
MASK_FLOOR = 1.5
MASK_CAP = 4.0


_LUMA = np.array([[0.299, 0.587, 0.114]], dtype=np.float32)
_DIRECTION = _LUMA[0] / float(_LUMA[0] @ _LUMA[0])
"""The RGB change per grey level of luma change with the least squared error (25% less than adding
the same value to R, G and B): PSNR counts every channel, the detector only luma."""


class SpectralError(ValueError):
    """Bad input to :func:`embed` or :func:`detect` (wrong shape, type, size or payload length)."""


@dataclass(frozen=True)
class Detection:
    """What :func:`detect` found.

    ``found`` is true when a payload decoded and its keyed check matched; ``p_value`` is the bound on
    the probability that an unmarked image gives a detection at least this clean (1.0 when nothing
    decoded). ``scale`` is the estimated resize factor against the marked image, ``angle`` its rotation
    in degrees (counter-clockwise), ``offset`` the tile offset (x, y) in resampled pixels, ``sync_z``
    the sync carrier's correlation peak in standard deviations (about 4.5 on unmarked images, 10-20 on
    marked ones), ``corrected`` how many of the 176 code bits were fixed, and ``tried`` how many
    alignments were decoded (those whose sync peak reached ``Z_DECODE``). ``diagnostics["code_bits"]``
    holds the raw 176 bits read at the reported alignment (before error correction), for measuring
    the channel.
    """

    found: bool
    p_value: float
    payload: bytes | None = None
    scale: float | None = None
    angle: float | None = None
    offset: tuple[float, float] | None = None
    sync_z: float = 0.0
    corrected: int | None = None
    tried: int = 0
    diagnostics: dict = field(default_factory=dict)

    @property
    def hex(self) -> str | None:
        return None if self.payload is None else self.payload.hex()


def _check_image(rgb: np.ndarray, min_side: int, what: str) -> np.ndarray:
    if not isinstance(rgb, np.ndarray):
        raise SpectralError(f"{what} expects a numpy array, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8:
        raise SpectralError(f"{what} expects uint8 pixels, got {rgb.dtype}")
    if rgb.ndim == 3 and rgb.shape[2] == 3:
        pass
    elif rgb.ndim != 2:
        raise SpectralError(f"{what} expects an (H, W, 3) RGB or (H, W) grey array, got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    if min(h, w) < min_side:
        raise SpectralError(f"image is {w}x{h}: the sdmark watermark needs at least {min_side} pixels a side")
    return rgb


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or not key:
        raise SpectralError("the watermark key must be non-empty bytes")
    return bytes(key)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma as float32 (a grey image is returned as float32)."""
    import cv2

    if rgb.ndim == 2:
        return rgb.astype(np.float32)
    return cv2.transform(rgb.astype(np.float32), _LUMA)


def mask(y: np.ndarray) -> np.ndarray:
    """Per-pixel mark amplitude in grey levels: the local detail level, clipped to FLOOR..CAP.

    Detail at and above the mark's band hides it (texture masking), so the amplitude follows the
    local RMS (over ~2 px) of what a 1.5 px blur removes: the boost stays close to edges and texture,
    and flat regions get ``MASK_FLOOR`` (1.5 grey levels RMS, a few levels at most after rounding).
    """
    import cv2

    detail = y - cv2.GaussianBlur(y, (0, 0), 1.5)
    level = np.sqrt(np.maximum(sync.smooth(detail * detail, 2.0), 0))
    return np.clip(MASK_GAIN * level, MASK_FLOOR, MASK_CAP)


def embed(rgb: np.ndarray, payload: bytes, key: bytes = PUBLIC_KEY, strength: float = 1.0,
          fmt: str | None = None) -> np.ndarray:
    """A marked copy of ``rgb`` ((H, W, 3) or (H, W) uint8, at least 128 px a side and ``MIN_EMBED_PIXELS``
    in all) carrying ``payload``.

    ``payload`` is exactly 8 bytes; ``key`` selects the carriers (the public key by default);
    ``strength`` scales the amplitude (1.0: mean PSNR about 41 dB on photos); ``fmt`` names the
    format (:data:`FORMATS`; by default format 2 from ``V2_MIN_SIDE`` a side, else format 1). The
    input is not changed, and the same inputs give the same bytes. Raises :class:`SpectralError` for
    unusable input, a smaller image included.
    """
    rgb = _check_image(rgb, MIN_EMBED_SIDE, "embed")
    h, w = rgb.shape[:2]
    if h * w < MIN_EMBED_PIXELS:
        raise SpectralError(f"image is {w}x{h}: the sdmark watermark needs at least {MIN_EMBED_PIXELS} pixels "
                            f"(176x176, and {MIN_EMBED_SIDE} a side); its detector cannot read a mark on a smaller "
                            "image, so upscale it first or leave it unmarked")
    key = _check_key(key)
    if not 0 < strength <= 4:
        raise SpectralError(f"strength must be in (0, 4], got {strength}")
    chosen = _format(fmt, min(h, w))
    try:
        code.encode(payload, key)
    except ValueError as exc:
        raise SpectralError(str(exc)) from None
    payload = bytes(payload)
    marked = _mark(rgb, payload, key, strength, chosen)
    if fmt is None and chosen is pattern.V2:
        # Format 2 lives lower in frequency, where a dense texture is loudest: on such an image it
        # would read with too few bits to spare, so the image gets format 1 (higher band) instead.
        bits = code.encode(payload, key, chosen.version)
        if margin(marked, key, chosen, bits) < V2_MARGIN:
            marked = _mark(rgb, payload, key, strength, pattern.V1)
    return marked


V2_GAIN = 1.25
"""Format 2's amplitude relative to format 1's at the same strength (measured: mean PSNR 41.1 dB on
photos, where format 2 is written; the downscale + JPEG rows need it)."""
V2_MARGIN = 1.7
"""Least :func:`margin` a format-2 mark must show on the clean image, else format 1 is written."""


def _mark(rgb: np.ndarray, payload: bytes, key: bytes, strength: float, fmt: pattern.Format) -> np.ndarray:
    """``rgb`` marked with ``payload`` in format ``fmt`` (inputs already checked)."""
    h, w = rgb.shape[:2]
    unit = pattern.tile(key, code.encode(payload, key, fmt.version), fmt)
    if fmt is pattern.V2:
        strength *= V2_GAIN
    t = fmt.tile
    top_row, left = _origin(rgb, payload, key, fmt)
    columns = (np.arange(w) + left) % t
    out = np.empty_like(rgb)
    # Strips keep the float32 temporaries in cache: a 4096 px image done whole cost twice as much per
    # pixel as a 512 px one. The halo covers mask()'s two blurs, so the result is the same as whole.
    for top in range(0, h, STRIP_ROWS):
        bottom = min(h, top + STRIP_ROWS)
        above, below = max(0, top - STRIP_HALO), min(h, bottom + STRIP_HALO)
        inner = slice(top - above, bottom - above)
        y = luminance(rgb[above:below])
        amplitude = mask(y)[inner]
        if strength != 1.0:
            amplitude *= strength
        delta = unit[np.ix_((np.arange(top, bottom) + top_row) % t, columns)] * amplitude
        out[top:bottom] = add_luma(rgb[top:bottom], y[inner], delta, amplitude)
    return out


def margin(marked: np.ndarray, key: bytes, fmt: pattern.Format, bits: np.ndarray) -> float:
    """How clearly a just-marked image carries ``bits`` in ``fmt``: the code bits' soft values read at
    the known lattice (no resize, no turn), mean over spread (a clean, strong read is 5-10; below
    about 2.5 a few bits are already wrong before the image meets any attack)."""
    y = luminance(sync.window(marked))
    length = pattern.TILE * fmt.zoom
    folded = sync.fold(sync.whitened_detail(y), sync.Lattice((length, 0.0), (0.0, length), 0.0))
    spectrum = _fold_spectrum(folded.tile)
    c = pattern.carriers(key, fmt)
    values = _oriented_values(spectrum, key, fmt, range(1))[0]
    [(_, dx, dy)] = _offsets(_sync_maps([values], [c])[0], 1)
    t = pattern.TILE
    kr = np.where(c.rows < t // 2, c.rows, c.rows - t)
    aligned = values * np.exp(2j * np.pi * (kr * dy + c.cols * dx) / t)
    soft = (aligned.real * _channel_weights(aligned, c, _rings(c)))[c.bits].sum(axis=1)
    signed = soft * (2.0 * np.asarray(bits, dtype=np.float64) - 1)
    return float(signed.mean() / (signed.std() or 1.0))


def _format(name: str | None, side: int) -> pattern.Format:
    if name is None:
        return pattern.V2 if side >= V2_MIN_SIDE else pattern.V1
    for fmt in pattern.FORMATS:
        if fmt.name == name:
            if side < fmt.tile:
                raise SpectralError(f"format {name} needs at least {fmt.tile} pixels a side")
            return fmt
    raise SpectralError(f"unknown sdmark format {name!r}; known: {', '.join(FORMATS)}")


def _origin(rgb: np.ndarray, payload: bytes, key: bytes, fmt: pattern.Format) -> tuple[int, int]:
    """Where the tile grid starts (row, column), for format 2 a keyed function of the image and payload.

    Images marked alike would otherwise carry the mark at the same pixels, and averaging them pixel
    by pixel would estimate it; the detector finds the grid wherever it starts. Deterministic, so
    the same inputs still give the same bytes. Format 1's grid starts at (0, 0), as it always did.
    """
    if fmt is pattern.V1:
        return 0, 0
    digest = hashlib.blake2b(np.ascontiguousarray(rgb).data, digest_size=16).digest()
    mac = hmac.new(key, fmt.label + b"origin\0" + payload + digest, hashlib.sha256).digest()
    return int.from_bytes(mac[:4], "big") % fmt.tile, int.from_bytes(mac[4:8], "big") % fmt.tile


STRIP_ROWS = 128
"""Rows :func:`embed` marks at a time."""
STRIP_HALO = 16
"""Rows of context above and below a strip: more than the reach of :func:`mask`'s blurs (6 + 8)."""


HEADROOM = 1.0
"""Room (in units of the local mark amplitude) made below/above a pixel's luma before marking it."""


def add_luma(rgb: np.ndarray, y: np.ndarray, delta: np.ndarray, amplitude: np.ndarray) -> np.ndarray:
    """``rgb`` with its luma ``y`` changed by ``delta`` (grey levels), as uint8, without losing the
    change to clipping.

    A mark added to black, white or saturated pixels would be clipped to one sign, i.e. half its
    amplitude plus a rectified distortion (a near-black night sky kept 0.84 of its bits through
    JPEG 50 instead of 0.99). So the luma of pixels within ``HEADROOM * amplitude`` of 0 or 255 is
    first moved inside by up to that much. The shift follows the amplitude: ``MASK_FLOOR`` (1.5
    levels at strength 1) on flat black or white, where it is uniform and so no pattern, up to
    ``MASK_CAP`` (4 levels, times the strength) on dark pixels beside detail, where the detail
    hides it. Then the part of the change that a saturated channel cannot take is moved to the
    channels that can; those redistributed pixels change by at most ``3 * amplitude`` per channel.
    """
    import cv2

    room = HEADROOM * amplitude
    shift = np.maximum(room - y, 0) - np.maximum(y - (255 - room), 0)
    if rgb.ndim == 2:
        return np.clip(np.rint(rgb + shift + delta), 0, 255).astype(np.uint8)
    luma_change = delta + shift
    change = cv2.merge([luma_change * float(weight) for weight in _DIRECTION])  # 5x numpy's broadcast
    wanted = cv2.add(rgb, change, dtype=cv2.CV_32F)
    out = np.clip(wanted, 0, 255)
    lost = cv2.transform(wanted - out, _LUMA)
    clipped = np.flatnonzero(np.abs(lost) > 0.05)
    if clipped.size:
        flat = out.reshape(-1, 3)
        flat[clipped] = _redistribute(wanted.reshape(-1, 3)[clipped], rgb.reshape(-1, 3)[clipped],
                                      3 * amplitude.ravel()[clipped])
    return cv2.convertScaleAbs(out)  # rounds; out is already within 0..255


def _redistribute(wanted: np.ndarray, original: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Pixels ``wanted`` (N x 3, some channels out of 0..255) clipped, with the luma the clipping took
    moved onto the channels left free (least squares), no channel changing by more than ``cap``."""
    low = np.maximum(original - cap[:, None], 0)
    high = np.minimum(original + cap[:, None], 255)
    out = wanted
    for _ in range(2):  # a second round when the first pushes another channel to its bound
        bounded = np.clip(out, low, high)
        lost = (out - bounded) @ _LUMA[0]
        free = np.where(lost[:, None] > 0, bounded < high, bounded > low)
        weights = np.where(free, _LUMA[0], 0).astype(np.float32)
        norm = (weights * weights).sum(axis=1, keepdims=True)
        out = bounded + np.divide(lost[:, None] * weights, norm, out=np.zeros_like(weights), where=norm > 0)
    return np.clip(out, low, high)


@lru_cache(maxsize=1)
def _tile_rings() -> tuple[np.ndarray, np.ndarray]:
    """Each ``rfft2`` bin's ring of a tile (flat), and how many bins each ring has."""
    t = pattern.TILE
    fy = np.fft.fftfreq(t)[:, None]
    fx = np.fft.rfftfreq(t)[None, :]
    ring = np.minimum(np.rint(np.hypot(fy, fx) * t).astype(int), t // 2).ravel()
    return ring, np.maximum(np.bincount(ring, minlength=t // 2 + 1), 1)


def _whiten(spectrum: np.ndarray) -> np.ndarray:
    """Divide each ring of the tile's spectrum by its RMS, so every frequency counts alike."""
    ring, count = _tile_rings()
    power = spectrum.real**2 + spectrum.imag**2
    mean = np.bincount(ring, power.ravel(), minlength=count.size) / count
    return spectrum / np.sqrt(np.maximum(mean[ring], 1e-20)).reshape(spectrum.shape)


RINGS = 5
"""Frequency rings over which the detector estimates the mark's strength, to weigh the bits' bins."""


def _rings(c: pattern.Carriers) -> np.ndarray:
    position = (c.freq - pattern.F_LO) / (pattern.F_HI - pattern.F_LO)
    return np.clip((position * RINGS).astype(int), 0, RINGS - 1)


def _channel_weights(aligned: np.ndarray, c: pattern.Carriers, rings: np.ndarray) -> np.ndarray:
    """Per-bin weights signal/noise^2, estimated per ring from the sync bins (whose values are known).

    An attack that removes part of the band (JPEG, downscaling, blur) leaves those bins pure noise;
    weighing bins by the mark's measured strength there is the matched filter for the channel the
    image went through. The sync bins are disjoint from the bits' bins, so for an unmarked image the
    bits stay symmetric coins whatever the weights.
    """
    sync = aligned[c.sync]
    ring = rings[c.sync]
    count = np.maximum(np.bincount(ring, minlength=RINGS), 1)
    signal = np.bincount(ring, sync.real, minlength=RINGS) / count
    noise = np.bincount(ring, sync.imag**2, minlength=RINGS) / count
    weight = np.maximum(signal, 0) / np.maximum(noise, 1e-12)
    if not weight.any():
        weight[:] = 1.0
    return weight[rings]


def _offsets(corr: np.ndarray, count: int, stats: tuple[float, float] | None = None) -> list[tuple[float, float, float]]:
    """The ``count`` strongest cyclic correlation peaks (local maxima) as (z, dx, dy), sub-pixel;
    ``stats`` is the map's (mean, standard deviation) where the caller has them already."""
    mean, std = stats if stats is not None else (corr.mean(), corr.std())
    z = (corr - mean) / (std or 1.0)
    h, w = z.shape
    flat = z.ravel()
    # The strongest values hold the strongest local maxima; checking their 8 neighbours is ~10x cheaper
    # than a maximum filter over the whole map.
    top = np.argpartition(flat, -_PEAK_POOL)[-_PEAK_POOL:]
    top = top[np.argsort(flat[top])[::-1]]
    out = []
    for index in top:
        r, c = divmod(int(index), w)
        value = z[r, c]
        if value < z[np.ix_([(r - 1) % h, r, (r + 1) % h], [(c - 1) % w, c, (c + 1) % w])].max():
            continue
        rr, cc = sync._refine(z, r, c)
        out.append((float(value), cc, rr))
        if len(out) == count:
            return out
    from scipy import ndimage

    peaks = z == ndimage.maximum_filter(z, size=3, mode="wrap")  # a plateau-ridden map: look everywhere
    flat_peaks = np.flatnonzero(peaks.ravel())
    out = []
    for index in flat_peaks[np.argsort(flat[flat_peaks])[::-1][:count]]:
        r, c = divmod(int(index), w)
        rr, cc = sync._refine(z, r, c)
        out.append((float(z[r, c]), cc, rr))
    return out


_PEAK_POOL = 32
"""Largest correlation values searched for local maxima before falling back to a full filter."""


def _best_offsets(maps: np.ndarray, count: int) -> list[tuple[float, float, float, int]]:
    """The ``count`` strongest local maxima over a stack of cyclic correlation maps, as (z, dx, dy,
    map index), sub-pixel: what :func:`_offsets` gives per map, best first, for all maps at once.

    Maps are visited in the order of their highest value, and only while that can still beat the
    peaks already found (usually one or two of them): the stack is scanned once, not peak-searched.
    """
    m = len(maps)
    flat = maps.reshape(m, -1)
    mean = flat.mean(axis=1)
    std = flat.std(axis=1)
    spread = np.maximum(std, 1e-12)
    highest = (flat.max(axis=1) - mean) / spread
    out: list[tuple[float, float, float, int]] = []
    for k in np.argsort(highest)[::-1]:
        if len(out) >= count and highest[k] <= out[count - 1][0]:
            break
        out += [(z, dx, dy, int(k)) for z, dx, dy in _offsets(maps[k], count, (mean[k], std[k]))]
        out.sort(key=lambda peak: -peak[0])
    return out[:count]


def _sync_maps(values: list[np.ndarray], carriers: list[pattern.Carriers],
               dtype: type = np.complex128) -> np.ndarray:
    """Cyclic correlations with the sync carrier of folds whose de-phased carrier values are
    ``values[i]`` under ``carriers[i]`` (one map each, all in one batched inverse FFT), computed in
    ``dtype`` (``np.complex64``: float32 maps, made and searched in 60% of the time; their peaks move by
    about 1e-6 of a standard deviation and of a pixel)."""
    t = pattern.TILE
    width = int(pattern.BIN_HI) + 1  # the band's columns of the half spectrum; the rest are zero
    sync_only: np.ndarray = np.zeros((len(values), t, width), dtype=dtype)
    for i, (v, c) in enumerate(zip(values, carriers)):
        sync_only[i, c.rows[c.sync], c.cols[c.sync]] = v[c.sync]
    # irfft2's two passes by hand, the first over the band's columns only (a zero column stays zero):
    # the same values, bit for bit, for three quarters of the time (14 maps: 0.55 ms, not 0.72).
    spectrum: np.ndarray = np.zeros((len(values), t, t // 2 + 1), dtype=dtype)
    spectrum[..., :width] = sfft.ifft(sync_only, axis=-2, workers=1)
    return sfft.irfft(spectrum, n=t, axis=-1, workers=1)


def _fold_spectrum(tile: np.ndarray) -> np.ndarray:
    """The whitened ``rfft2`` of a folded tile, flat: every format's carriers are read from it."""
    return _whiten(sfft.rfft2(tile, workers=1)).ravel()


def _oriented_values(spectrum: np.ndarray, key: bytes, fmt: pattern.Format, which: range) -> np.ndarray:
    """Whitened, de-phased carrier values of format ``fmt`` in a fold's ``spectrum`` read through
    ``ORIENTATIONS[i]`` for each ``i`` in ``which`` (one row each): each orientation is a permutation
    of the one FFT's bins."""
    index, conjugate = _orientation_bins(key, fmt)
    values = spectrum[index[which.start:which.stop]]
    conj = conjugate[which.start:which.stop]
    values[conj] = np.conj(values[conj])
    return values * np.conj(pattern.carriers(key, fmt).phase)


@lru_cache(maxsize=16)
def _orientation_bins(key: bytes, fmt: pattern.Format) -> tuple[np.ndarray, np.ndarray]:
    """Per orientation, where each carrier bin of the reoriented tile lives in the fold's ``rfft2``.

    A tile read as ``T(u) = tile(G u)`` has ``T^(k) = tile^(G k)`` (``G`` is orthogonal); a bin that
    lands in the half plane ``rfft2`` does not store is the conjugate of its mirror image.
    """
    c = pattern.carriers(key, fmt)
    t = pattern.TILE
    k = np.stack([c.cols, np.where(c.rows < t // 2, c.rows, c.rows - t)]).astype(int)  # (kx, ky)
    index, conjugate = [], []
    for orientation in ORIENTATIONS:
        kx, ky = np.rint(orientation.matrix @ k).astype(int)
        flip = kx < 0
        kx, ky = np.where(flip, -kx, kx), np.where(flip, -ky, ky)
        index.append((ky % t) * (t // 2 + 1) + kx)
        conjugate.append(flip)
    return np.array(index), np.array(conjugate)


def _local_peak(corr: np.ndarray, dx: float, dy: float, reach: int = 6) -> tuple[float, float]:
    """The correlation peak within ``reach`` pixels of (dx, dy), sub-pixel, as an offset from it."""
    t = corr.shape[0]
    rows = (int(round(dy)) + np.arange(-reach, reach + 1)) % t
    cols = (int(round(dx)) + np.arange(-reach, reach + 1)) % t
    patch = corr[np.ix_(rows, cols)]
    r, col = np.unravel_index(int(np.argmax(patch)), patch.shape)
    if 0 < r < patch.shape[0] - 1 and 0 < col < patch.shape[1] - 1:
        rr, cc = sync._refine(patch, int(r), int(col))
    else:
        rr, cc = float(r), float(col)
    return (cc - reach + round(dx) - dx, rr - reach + round(dy) - dy)


Z_DECODE = 5.5
"""Sync peak below which an alignment is not decoded (its bits are still read, for the diagnostics):
every one of the 3,501 genuine detections of the benchmark's benign and adversary rows decoded at
6.51 or more, while an unmarked image's best peak is 4.66 (median of 3,000; 1% reach 5.5 and are
still decoded). Skipping a decode can only lose a detection, never make one, so the false-positive
bound is unchanged (``docs/spectral-watermark.md``, "Detector speed")."""


class _Reader:
    """Reads the payload at candidate alignments of one image, counting them for the p-value."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        t = pattern.TILE
        self.layout = {}
        for fmt in pattern.FORMATS:
            c = pattern.carriers(key, fmt)
            kr = np.where(c.rows < t // 2, c.rows, c.rows - t).astype(np.float64)
            self.layout[fmt] = (c, kr, c.cols.astype(np.float64), _rings(c))
        self.tried = 0
        self.best_z = -np.inf
        self.best: dict = {}

    def read(self, fmt: pattern.Format, values: np.ndarray, dx: float, dy: float, z: float, lattice: sync.Lattice,
             zoom: float, orientation: str = "identity") -> Detection | None:
        """Decode format ``fmt`` at offset (dx, dy) of a fold on ``lattice``, found in a detail image
        ``zoom`` times smaller than the image (for the scale reported)."""
        c, kr, kc, rings = self.layout[fmt]
        aligned = values * np.exp(2j * np.pi * (kr * dy + kc * dx) / pattern.TILE)
        soft = (aligned.real * _channel_weights(aligned, c, rings))[c.bits].sum(axis=1)
        decoded = None
        if z >= Z_DECODE:
            self.tried += 1
            decoded = code.decode(soft, self.key, fmt.version)
        where: dict[str, Any] = dict(scale=lattice.scale * zoom / fmt.zoom, angle=lattice.angle, offset=(dx, dy), sync_z=z,
                                     diagnostics={"code_bits": (soft > 0).astype(np.uint8), "orientation": orientation,
                                                  "format": fmt.name})
        if decoded is None:
            if z > self.best_z:
                self.best_z, self.best = z, where
            return None
        p = code.false_positive_bound(ALIGNMENTS, decoded.corrected)
        return Detection(p <= THRESHOLD, p, decoded.payload if p <= THRESHOLD else None,
                         corrected=decoded.corrected, tried=self.tried, **where)


@dataclass(frozen=True)
class _Orientation:
    """One element of the tile's symmetry group (mirrors, quarter turns, transposes).

    The tile read through it is ``T(u) = tile(G u)`` (``u`` = (x, y), mod ``TILE``; ``matrix`` is ``G``):
    a mark folded from an image that was mirrored or turned by a multiple of 90 degrees reads upright
    through the element that undoes it.
    """

    name: str
    transpose: bool
    flip_x: bool
    flip_y: bool

    @property
    def matrix(self) -> np.ndarray:
        base = np.array([[0.0, 1.0], [1.0, 0.0]]) if self.transpose else np.eye(2)
        return base @ np.diag([-1.0 if self.flip_x else 1.0, -1.0 if self.flip_y else 1.0])


ORIENTATIONS = tuple(_Orientation(name, t, fx, fy) for name, t, fx, fy in (
    ("identity", False, False, False), ("mirror-x", False, True, False), ("mirror-y", False, False, True),
    ("turn180", False, True, True), ("transpose", True, False, False), ("turn90", True, True, False),
    ("turn270", True, False, True), ("anti-transpose", True, True, True)))
"""The 8 symmetries of the square tile. The lattice search cannot tell them apart (the mark's
harmonics fill a ring, which every one of them maps onto itself), so each fold is read in all 8
and the sync carrier picks: ``OFFSETS`` alignments a fold are decoded whichever orientation they
come from, and the false-positive union bound, which counts decodes, is unchanged."""
Z_UPRIGHT = 7.0
"""Sync peak above which the upright reading is taken without trying the other 7 orientations: the
largest of the 8 x 16,384 correlations of an unmarked fold is about 5."""


_Peak = tuple[float, float, float, pattern.Format, int, np.ndarray]
"""A sync peak of a fold: (z, dx, dy, format, orientation index, carrier values read through it)."""


def _oriented_offsets(tile: np.ndarray, key: bytes, formats: tuple[pattern.Format, ...]) -> list[_Peak]:
    """The ``OFFSETS`` strongest sync peaks of a fold over the formats and orientations, best first.

    The upright readings come first and, when one's peak is far beyond chance, alone. One FFT of
    the fold serves every format and orientation (each a permutation of its bins).
    """
    spectrum = _fold_spectrum(tile)
    readings = [(fmt, 0, _oriented_values(spectrum, key, fmt, range(1))[0]) for fmt in formats]
    # Single precision: the maps only choose alignments (the bits are read from ``values``).
    maps = _sync_maps([v for _, _, v in readings], [pattern.carriers(key, fmt) for fmt, _, _ in readings], np.complex64)
    peaks = _best_offsets(maps, OFFSETS)
    if peaks[0][0] < Z_UPRIGHT:
        turned = range(1, len(ORIENTATIONS))
        more = [(fmt, i, v) for fmt in formats for i, v in zip(turned, _oriented_values(spectrum, key, fmt, turned))]
        more_maps = _sync_maps([v for _, _, v in more], [pattern.carriers(key, fmt) for fmt, _, _ in more], np.complex64)
        # The best over all maps is the best of the upright maps' best and the turned maps' best:
        # the same peaks as one search of the stack, without copying it or searching the upright twice.
        shift = len(readings)
        peaks += [(z, dx, dy, k + shift) for z, dx, dy, k in _best_offsets(more_maps, OFFSETS)]
        peaks = sorted(peaks, key=lambda peak: -peak[0])[:OFFSETS]
        readings += more
    return [(z, dx, dy, readings[k][0], readings[k][1], readings[k][2]) for z, dx, dy, k in peaks]


HALF_SCALES = (0.5 * sync.SCALE_MAX, 0.5 * sync.SCALE_MAX * pattern.V2.zoom)
"""Resize factors (of a format-2 mark) read at half resolution: beyond what the full-resolution
search covers for it (its 256 px tile is a 128 px lattice at twice the factor, up to 2.2)."""


HALF_SIDE = round(HALF_SCALES[0] * pattern.V2.zoom * V2_MIN_SIDE / 2)
"""Smallest side searched at half resolution: a format-2 image (at least ``V2_MIN_SIDE`` a side)
enlarged beyond the full-resolution search's reach (1.1x) is at least this large, uncropped."""


def _candidates(y: np.ndarray, detail: np.ndarray, key: bytes) -> Iterator[tuple[np.ndarray, sync.Lattice, float, tuple[pattern.Format, ...]]]:
    """Lattices to fold on, best first, as (detail image, lattice, zoom, formats to read there).

    The full-resolution search serves both formats (a format-2 mark at resize factor ``s`` has the
    lattice of a format-1 mark at ``2 s``); an enlarged format-2 mark, whose tile is beyond that
    search's reach, is looked for at half resolution. (Folding format 2 from the half-resolution
    detail reads photos about 15% clearer but loses brightened text posters, whose clipped paper
    leaves only thin letters: measured, not done.) The first candidate comes alone, before the rest are even
    computed; then the rest, both searches merged by score, up to ``LATTICES`` in all.
    """
    import cv2

    h, w = y.shape
    halves: list[np.ndarray] = []

    def half() -> np.ndarray:
        if not halves:
            halves.append(sync.whitened_detail(cv2.resize(y, (w // 2, h // 2), interpolation=cv2.INTER_AREA)))
        return halves[0]

    def entry(lattice: sync.Lattice) -> tuple[np.ndarray, sync.Lattice, float, tuple[pattern.Format, ...]]:
        return detail, lattice, 1.0, pattern.FORMATS

    full = sync.lattice_candidates(detail, key, count=LATTICES)
    for lattice in full:
        yield entry(lattice)
        break
    else:
        return
    pool = [(lattice.score, entry(lattice)) for lattice in full]
    if min(h, w) >= HALF_SIDE:
        pool += [(lattice.score, (half(), lattice, 2.0, (pattern.V2,)))
                 for lattice in sync.lattice_candidates(half(), key, count=LATTICES - 1, scales=HALF_SCALES, turns=False)]
    pool.sort(key=lambda pair: -pair[0])
    for _, candidate in pool[:LATTICES - 1]:
        yield candidate


def detect(rgb: np.ndarray, key: bytes = PUBLIC_KEY) -> Detection:
    """Look for an sdmark spectral mark made with ``key`` in ``rgb`` ((H, W, 3) or (H, W) uint8), in
    any format (:data:`FORMATS`).

    Handles resizing (format 2: 0.25x to 2.2x; format 1: 0.45x to 2.2x; without being told the
    original size), crops at any offset, rotations up to ``spectral_sync.ANGLE_MAX`` degrees, mirrors,
    quarter turns and transposes, compression, noise, blur and tone changes. Never raises for an
    unmarked image; raises :class:`SpectralError` for unusable input (wrong type, under
    ``MIN_DETECT_SIDE`` a side). ``diagnostics["format"]`` names the format read and
    ``diagnostics["orientation"]`` the symmetry (``ORIENTATIONS``) it was read through.
    """
    rgb = _check_image(rgb, MIN_DETECT_SIDE, "detect")
    key = _check_key(key)
    # Luma of the analysis window only (it is per pixel): the same values as the whole image's, cropped.
    window = sync.window(rgb)
    y = luminance(window) if rgb.ndim == 3 else window.astype(np.float32)
    detail = sync.whitened_detail(y)
    reader = _Reader(key)
    for image, lattice, zoom, formats in _candidates(y, detail, key):
        for _ in range(REFINES + 1):
            folded = sync.fold(image, lattice)
            offsets = _oriented_offsets(folded.tile, key, formats)
            for z, dx, dy, fmt, index, values in offsets:
                found = reader.read(fmt, values, dx, dy, z, lattice, zoom, ORIENTATIONS[index].name)
                if found is not None:
                    return found
            z, dx, dy, fmt, index, _ = offsets[0]
            if z < Z_REFINE:
                break
            orientation = ORIENTATIONS[index]
            which = range(index, index + 1)
            c = pattern.carriers(key, fmt)
            drift = np.array([[_local_peak(_sync_maps([_oriented_values(_fold_spectrum(part), key, fmt, which)[0]], [c])[0], dx, dy)
                               for part in row] for row in folded.parts])
            # Offsets read through the orientation move by G^-1 of the fold's own: map them back.
            drift = drift @ orientation.matrix.T
            better = sync.refined(lattice, drift, folded.centres)
            if better is None:
                break
            lattice = better
    return Detection(False, 1.0, tried=reader.tried, **reader.best)
