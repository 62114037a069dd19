"""Synchronisation for the ``sdmark`` spectral watermark: find the tile lattice, then fold the image on it.

The mark repeats with period ``TILE`` pixels, so the spectrum of the image's (whitened) detail has
spikes at the tile's harmonics: at the carriers' frequencies divided by the resize factor ``s``, and
turned with the image if it was rotated. :func:`lattice_candidates` scores every ``s`` of a fine grid
(0.45x to 2.2x) by the whitened power summed at those harmonics (a matched filter for the mark's known
spectral support) and, for rotated images, matches the same template at every turn and scale at once
by correlating the spectrum's log-polar image with it; the best few lattices are returned without
being told the original size.
:func:`fold` resamples the image onto a candidate lattice and sums all its tiles into one ``TILE x
TILE`` tile, in which the mark adds up coherently and the image does not; the tile's unknown offset
(a crop at any position) is then found by cyclic correlation with the sync carrier (see
:mod:`.spectral`), and :func:`refined` corrects the lattice from how that offset drifts between the
quarters of the fold.

All sizes here are bounded: the lattice search reads a centred window of at most ``SEARCH_WINDOW``
pixels a side and the fold one of at most ``WINDOW``, so detection costs grow with the pixel count
only through the luminance conversion and stop growing beyond those windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import cv2
import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from sdmark.plugins.watermark.spectral_pattern import TILE

WINDOW = 1024
"""Largest side of the window that the detector analyses."""
SCALE_MIN, SCALE_MAX = 0.45, 2.2
"""Resize factors (relative to the marked image) the lattice search covers."""
ANGLE_MAX = 15.0
"""Largest rotation, in degrees, the lattice search covers."""
ROTATED_CANDIDATES = 3
"""Rotated candidates refined and offered after the screening."""


@dataclass(frozen=True)
class Lattice:
    """The tile's two period vectors in image pixels (x, y), and the harmonic template's score for them
    (robust standard deviations above the scale search's median)."""

    v1: tuple[float, float]
    v2: tuple[float, float]
    score: float

    @property
    def scale(self) -> float:
        (x1, y1), (x2, y2) = self.v1, self.v2
        return float(np.sqrt(abs(x1 * y2 - y1 * x2)) / TILE)

    @property
    def angle(self) -> float:
        """Rotation in degrees, counter-clockwise on screen."""
        return -float(np.degrees(np.arctan2(self.v1[1], self.v1[0])))


def whitened_detail(y: np.ndarray) -> np.ndarray:
    """Local-contrast-normalised detail of a luminance window: the mark's share of it is roughly even.

    The host image is predicted by an edge-preserving (bilateral) filter and subtracted: digital art
    is mostly flat regions and sharp edges, which the filter keeps, while the mark (a few grey levels)
    falls inside its range tolerance and is smoothed away, so the residual holds the mark without the
    edges that would swamp it (text on a clipped background reads at 0.97 of its bits instead of
    0.57). Subtracting a wide blur then removes what is left of illumination and low frequencies;
    dividing by the local detail level keeps a textured region (where the embedder put a strong mark,
    and where the image itself is loud) from outweighing a smooth one. Brightness and contrast
    changes cancel out.
    """
    tolerance = max(HOST_RANGE, 2 * noise_level(y))
    detail = y - cv2.bilateralFilter(y, HOST_DIAMETER, tolerance, HOST_SPACE)
    detail -= smooth(detail, 6.0)
    level = np.sqrt(np.maximum(smooth(detail * detail, 8.0), 0))
    return detail / (level + 0.7)


HOST_DIAMETER, HOST_RANGE, HOST_SPACE = 5, 10.0, 3.0
"""Bilateral host predictor: 5x5 neighbourhood, tolerance at least 10 grey levels (several times the
mark's amplitude, a fraction of an edge's), spatial sigma 3 px."""

_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32) / 6
"""A second difference with unit gain on white noise: flat and linear regions give 0."""


def noise_level(y: np.ndarray) -> float:
    """Robust estimate of the image's pixel noise (grey levels, standard deviation).

    The bilateral host predictor must tolerate the image's own grain: with a tolerance below it,
    every neighbour looks like an edge, the predictor returns the pixel itself and the residual (mark
    included) vanishes (a grainy image then reads nothing). The median absolute second difference
    over a sample of pixels ignores the edges and texture that a mean would count.
    """
    response = cv2.filter2D(y, -1, _NOISE_KERNEL)[1:-1:3, 1:-1:3]
    return float(np.median(np.abs(response))) / 0.6745


def smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur of ``x`` (float32); wide ones run at a quarter of the resolution (same result
    to within a few percent, a fraction of the cost)."""
    h, w = x.shape
    if sigma < 4 or min(h, w) < 64:
        return cv2.GaussianBlur(x, (0, 0), sigma)
    small = cv2.resize(x, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / 4)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _centre(shape: tuple[int, int], size: int) -> tuple[slice, slice]:
    h, w = shape
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return slice(top, top + min(h, size)), slice(left, left + min(w, size))


def window(y: np.ndarray) -> np.ndarray:
    """The centred analysis window (at most ``WINDOW`` a side) of a luminance (or RGB) image."""
    return y[_centre(y.shape[:2], WINDOW)]


def _refine(acf: np.ndarray, r: int, c: int) -> tuple[float, float]:
    """Sub-pixel peak position by a parabola through each axis' neighbours."""

    def vertex(a: float, b: float, d: float) -> float:
        denom = a - 2 * b + d
        return 0.0 if denom >= 0 else float(np.clip(0.5 * (a - d) / denom, -0.5, 0.5))

    h, w = acf.shape
    b = acf[r, c]
    dr = vertex(acf[(r - 1) % h, c], b, acf[(r + 1) % h, c])
    dc = vertex(acf[r, (c - 1) % w], b, acf[r, (c + 1) % w])
    return r + dr, c + dc


SEARCH_WINDOW = 640
"""Largest side of the centred window whose spectrum the scale search reads."""
TAPER = 0.25
"""Share of each side given to the cosine edges of the Tukey taper before the FFT."""


def whitened_power(window: np.ndarray) -> np.ndarray:
    """Tapered power spectrum of ``window``, each ring divided by its mean, capped, minus 1.

    The tile's harmonics are sharp spikes on top of the image's smooth spectrum; after whitening they
    are values well above 0 while the rest averages 0. The cap keeps one strong periodicity of the
    image from outweighing hundreds of harmonics; the band keeps only where the mark can be. A Tukey
    taper (flat in the middle) keeps most of the window's area while softening its edges.
    """
    h, w = window.shape
    spectrum = sfft.rfft2(window * _taper(h, w), workers=1)
    power = spectrum.real**2
    power += spectrum.imag**2
    ring, band = _spectral_geometry(h, w)
    means = np.bincount(ring.ravel(), power.ravel()) / _ring_counts(h, w)
    power /= np.maximum(means, 1e-12).astype(np.float32)[ring]
    np.minimum(power, 20.0, out=power)
    power -= 1.0
    power *= band
    return power


def _tukey(n: int) -> np.ndarray:
    from scipy.signal.windows import tukey

    return tukey(n, TAPER).astype(np.float32)


@lru_cache(maxsize=16)
def _taper(h: int, w: int) -> np.ndarray:
    return _tukey(h)[:, None] * _tukey(w)[None, :]


@lru_cache(maxsize=16)
def _harmonics(key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The tile's carrier frequencies (fy, fx) in cycles per pixel, float32."""
    from sdmark.plugins.watermark.spectral_pattern import TILE, carriers

    c = carriers(key)
    fy = np.where(c.rows < TILE // 2, c.rows, c.rows - TILE) / TILE
    return fy.astype(np.float32), (c.cols / TILE).astype(np.float32)


def _indices(h: int, w: int, key: bytes, scales: np.ndarray, angles: np.ndarray | float = 0.0) -> np.ndarray:
    """Flat indices into a ``whitened_power`` of an ``h x w`` window of the tile's harmonics, one row
    per scale (``angles``, in degrees, is one angle or one per scale)."""
    fy, fx = _harmonics(key)
    scales = np.asarray(scales, dtype=np.float32).reshape(-1, 1)
    angles = np.broadcast_to(np.asarray(angles, dtype=np.float32), (scales.size,)).reshape(-1, 1)
    if angles.any():
        # The image turned by ``angle`` (counter-clockwise on screen, y down): its spectrum turns alike.
        # The searches ask for each angle at several scales: turn the harmonics once per angle.
        turns, which = np.unique(angles, return_inverse=True)
        ca, sa = np.cos(np.radians(turns))[:, None], np.sin(np.radians(turns))[:, None]
        x, y = fx * ca + fy * sa, fy * ca - fx * sa
        mirror = x < 0  # rfft2 holds half the plane
        np.negative(x, out=x, where=mirror)
        np.negative(y, out=y, where=mirror)
        x, y = x[which.ravel()], y[which.ravel()]
    else:
        x, y = np.broadcast_to(fx, (scales.size, fx.size)), np.broadcast_to(fy, (scales.size, fy.size))
    half = w // 2
    col = np.rint(x * (w / scales))
    row = np.rint(y * (h / scales))
    np.add(row, h, out=row, where=row < 0)
    row *= half + 1
    beyond = col > half  # beyond Nyquist: reads the (zeroed) DC bin
    row += np.minimum(col, half, out=col)  # exact in float32: below 2^24
    row[beyond] = 0
    return row.astype(np.int32)


@lru_cache(maxsize=32)
def _template(h: int, w: int, key: bytes, low: float = SCALE_MIN, high: float = SCALE_MAX) -> tuple[np.ndarray, np.ndarray]:
    """The scale search grid and, for each scale, the flat indices of the tile's harmonics.

    The grid is uniform in 1/scale with steps that move the outermost harmonic by half a frequency
    bin, the finest a windowed spectrum resolves.
    """
    from sdmark.plugins.watermark.spectral_pattern import F_HI

    steps = int(np.ceil(2 * max(h, w) * F_HI * (1 / low - 1 / high))) + 1
    scales = 1 / np.linspace(1 / high, 1 / low, steps)
    return scales, _indices(h, w, key, scales)


def _turned(power: np.ndarray, shape: tuple[int, int], key: bytes, centre: float, spread: float) -> list[Lattice]:
    """Candidates for a rotated image: the tile's harmonic template matched at every turn and scale.

    In log-polar coordinates of the spectrum a rotation is a shift in angle and a resize a shift in
    log-radius, so one FFT correlation of the log-polar power with the log-polar template scores every
    (angle, scale) pair at once, all harmonics counted (a Fourier-Mellin matched filter). The
    ``SCREENED_PEAKS`` best local maxima, on a grid too coarse for a final answer, are screened with
    the exact template within a frequency bin, and the ``ROTATED_CANDIDATES`` that match best are refined
    on a half-bin grid.
    """
    from sdmark.plugins.watermark.spectral_pattern import F_HI

    h, w = shape
    polar = _log_polar(h, w, key)
    image = cv2.remap(np.roll(power, h // 2, axis=0), polar.map_x, polar.map_y, cv2.INTER_LINEAR)
    image -= image.mean()
    # irfft2's two passes by hand, the second only on the turns searched (a sixth of them), and its
    # one scaling at the end: the same values, bit for bit.
    angular = sfft.ifft(sfft.rfft2(image, workers=1) * polar.template, axis=0, norm="forward", workers=1)
    scores = sfft.irfft(angular[polar.turns], n=image.shape[1], axis=1, norm="forward", workers=1)
    scores = scores[:, polar.shifts] * np.float32(1 / image.size)  # the search range and one neighbour around it
    maxima = (scores == ndimage.maximum_filter(scores, size=3))[1:-1, 1:-1]
    scores = scores[1:-1, 1:-1]
    maxima[polar.angles == 0] = False  # unturned: the scale search's own
    r, c = np.nonzero(maxima)
    order = np.argsort(scores[r, c])[::-1][:SCREENED_PEAKS]
    peaks = np.column_stack([polar.scales[c[order]], polar.angles[r[order]]])
    if not len(peaks):
        return []
    step = 1 / (2 * max(h, w) * F_HI)  # half a frequency bin at the outermost harmonic
    chosen = np.array(_screen(power, shape, key, peaks, step)[:ROTATED_CANDIDATES])
    # Refine all of them at once on a half-bin grid: 5 angles x 7 scales around each.
    grid = np.array([(a, b) for a in range(-3, 4) for b in range(-2, 3)], dtype=np.float64)
    scales = (chosen[:, None, 0] * (1 + step * grid[None, :, 0])).reshape(len(chosen), -1)
    angles = (chosen[:, None, 1] + np.degrees(step) * grid[None, :, 1]).reshape(len(chosen), -1)
    template = power.ravel()[_indices(h, w, key, scales.ravel(), angles.ravel())].sum(axis=1)
    template = template.reshape(len(chosen), -1)
    out = []
    for i, k in enumerate(template.argmax(axis=1)):
        v = TILE * scales[i, k]
        ca, sa = np.cos(np.radians(angles[i, k])), np.sin(np.radians(angles[i, k]))
        out.append(Lattice((v * ca, -v * sa), (v * sa, v * ca), float(template[i, k] - centre) / spread))
    return out


ROTATED_PENALTY = 1.0
"""What a rotated candidate's score gives up when ranked against unrotated ones, in robust standard
deviations. The turn-and-scale search tries about 70 times as many lattices as the scale search, so
its best chance peak is higher: unpenalised, they crowded a faint but true unrotated lattice out."""
SCREENED_PEAKS = 16
"""Log-polar correlation peaks screened with the exact template."""
POLAR_ANGLES = 300
"""Samples of the log-polar spectrum over its half turn (0.6 degrees apart)."""
POLAR_STEP = 0.0075
"""Step of the log-polar spectrum in log-radius (0.75% in scale)."""


@dataclass(frozen=True)
class _LogPolar:
    """How to resample a ``whitened_power`` into log-polar coordinates, and the template to match there.

    ``map_x``/``map_y`` give, for each (angle, log-radius) sample, its place in the power spectrum
    with its rows rolled so that frequency 0 is in the middle; ``template`` is the conjugate spectrum
    of the tile's harmonics drawn in the same coordinates. ``turns``/``shifts`` index the correlation
    shifts within the search range in order, with one more on each side (its true neighbour: angle
    and the FFT's shifts are cyclic); ``angles`` (degrees, counter-clockwise on screen) and ``scales``
    are what the inner ones mean.
    """

    map_x: np.ndarray
    map_y: np.ndarray
    template: np.ndarray
    turns: np.ndarray
    shifts: np.ndarray
    angles: np.ndarray
    scales: np.ndarray


@lru_cache(maxsize=8)
def _log_polar(h: int, w: int, key: bytes) -> _LogPolar:
    from sdmark.plugins.watermark.spectral_pattern import F_HI, F_LO

    n = max(h, w)  # radii in bins of an n-point transform; rows and columns are scaled to theirs
    low, high = np.log(F_LO * n / SCALE_MAX) - 0.02, np.log(F_HI * n / SCALE_MIN) + 0.02
    phi = -np.pi / 2 + np.arange(POLAR_ANGLES) * (np.pi / POLAR_ANGLES)
    rho = np.arange(low, high, POLAR_STEP)
    radius = np.exp(rho)[None, :]
    map_x = (radius * np.cos(phi)[:, None] * (w / n)).astype(np.float32)
    map_y = (radius * np.sin(phi)[:, None] * (h / n) + h // 2).astype(np.float32)

    fy, fx = _harmonics(key)
    mirror = np.where(fx < 0, -1, 1)  # the half plane the rfft holds
    fx, fy = fx * mirror, fy * mirror
    at_phi = (np.arctan2(fy, fx) + np.pi / 2) / (np.pi / POLAR_ANGLES)
    at_rho = (np.log(np.hypot(fx, fy) * n) - low) / POLAR_STEP
    template = np.zeros((POLAR_ANGLES, rho.size), np.float32)
    i, j = np.floor(at_phi).astype(int), np.floor(at_rho).astype(int)
    a, b = at_phi - i, at_rho - j
    for di, wi in ((0, 1 - a), (1, a)):  # bilinear splats, as the image is sampled
        for dj, wj in ((0, 1 - b), (1, b)):
            np.add.at(template, ((i + di) % POLAR_ANGLES, j + dj), (wi * wj).astype(np.float32))

    turn = np.arange(POLAR_ANGLES)
    turn = np.where(turn < POLAR_ANGLES // 2, turn, turn - POLAR_ANGLES)
    index = np.arange(rho.size)
    shift = np.where(index < rho.size // 2, index, index - rho.size) * POLAR_STEP
    # A spectrum shifted by +d in angle is an image turned by d clockwise on screen (y points down).
    angles = -np.degrees(turn * (np.pi / POLAR_ANGLES))
    scales = np.exp(-shift)
    turns = np.flatnonzero(np.abs(angles) <= ANGLE_MAX)
    turns = turns[np.argsort(turn[turns])]
    shifts = np.flatnonzero((scales >= SCALE_MIN) & (scales <= SCALE_MAX))
    shifts = shifts[np.argsort(shift[shifts])]
    return _LogPolar(map_x, map_y, np.conj(sfft.rfft2(template, workers=1)), _widened(turns, POLAR_ANGLES),
                     _widened(shifts, rho.size), angles[turns], scales[shifts])


def _widened(run: np.ndarray, period: int) -> np.ndarray:
    """A run of consecutive cyclic indices with one more at each end."""
    return np.concatenate([[run[0] - 1], run, [run[-1] + 1]]) % period


def _screen(power: np.ndarray, shape: tuple[int, int], key: bytes, peaks: np.ndarray,
            step: float) -> list[tuple[float, float]]:
    """``peaks`` (scale, angle) ordered by the best template score within one frequency bin of each."""
    grid = np.array([(a, b) for a in (-2, 0, 2) for b in (-2, 0, 2)], dtype=np.float64)
    scales = (peaks[:, None, 0] * (1 + step * grid[None, :, 0])).ravel()
    angles = (peaks[:, None, 1] + np.degrees(step) * grid[None, :, 1]).ravel()
    scores = power.ravel()[_indices(*shape, key, scales, angles)].sum(axis=1).reshape(len(peaks), -1)
    best = scores.argmax(axis=1)
    order = np.argsort(scores.max(axis=1))[::-1]
    return [(float(scales.reshape(len(peaks), -1)[i, best[i]]), float(angles.reshape(len(peaks), -1)[i, best[i]]))
            for i in order]


def lattice_candidates(detail: np.ndarray, key: bytes, count: int = 4, scales: tuple[float, float] = (SCALE_MIN, SCALE_MAX),
                       turns: bool = True) -> Iterator[Lattice]:
    """Up to ``count`` lattices suggested by the spectrum of ``detail``, as the caller asks for them.

    Each scale of a fine grid is scored by the whitened power summed at the harmonics the tile would
    have at that scale (a matched filter for the mark's known spectral support); the strongest local
    maxima, refined by a parabola, are the candidates, scored in robust standard deviations. The best
    of them comes first, before the rotated candidates are even looked for: most images are not
    rotated, and a marked one then costs a third less. The rest, unrotated and rotated, follow best
    first, rotated ones ranked ``ROTATED_PENALTY`` lower for their larger search. ``scales`` bounds
    the unrotated search (the rotated one covers ``SCALE_MIN..SCALE_MAX``); ``turns=False`` leaves
    the rotated search out.
    """
    region = detail[_centre(detail.shape, SEARCH_WINDOW)]
    power = whitened_power(region)
    grid, index = _template(*region.shape, key, *scales)
    scores = power.ravel()[index].sum(axis=1)
    centre = np.median(scores)
    spread = 1.4826 * np.median(np.abs(scores - centre)) or 1.0
    z = (scores - centre) / spread
    peaks = np.flatnonzero((z[1:-1] >= z[:-2]) & (z[1:-1] > z[2:])) + 1
    peaks = peaks[np.argsort(z[peaks])[::-1][:count]]  # rotated candidates may displace some below
    scaled = []
    inverse = 1 / grid
    for i in peaks:
        a, b, d = z[i - 1], z[i], z[i + 1]
        denom = a - 2 * b + d
        offset = 0.0 if denom >= 0 else float(np.clip(0.5 * (a - d) / denom, -0.5, 0.5))
        step = inverse[1] - inverse[0]
        scale = 1 / (inverse[i] + offset * step)
        length = TILE * scale
        scaled.append(Lattice((length, 0.0), (0.0, length), float(b)))
    if count < 1:
        return
    yield from scaled[:1]
    ranked = [(lattice.score, lattice) for lattice in scaled[1:]]
    if turns:
        ranked += [(lattice.score - ROTATED_PENALTY, lattice)
                   for lattice in _turned(power, region.shape, key, centre, spread)]
    ranked.sort(key=lambda pair: -pair[0])
    yield from (lattice for _, lattice in ranked[:count - len(scaled[:1])])


@lru_cache(maxsize=32)
def _ring_counts(h: int, w: int) -> np.ndarray:
    """How many bins each ring of :func:`_spectral_geometry` holds (at least 1)."""
    counts = np.maximum(np.bincount(_spectral_geometry(h, w)[0].ravel()), 1)
    counts.setflags(write=False)
    return counts


@lru_cache(maxsize=32)
def _spectral_geometry(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    from sdmark.plugins.watermark.spectral_pattern import F_HI, F_LO

    fy = sfft.fftfreq(h)[:, None]
    fx = sfft.rfftfreq(w)[None, :]
    radius = np.sqrt(fy * fy + fx * fx)
    ring = np.minimum((radius * min(h, w)).astype(np.int32), min(h, w) // 2)
    band = ((radius >= 0.8 * F_LO / SCALE_MAX) & (radius <= min(0.49, 1.1 * F_HI / SCALE_MIN))).astype(np.float32)
    band[0, :] = band[:, 0] = 0  # the window's cross: not the mark
    # JPEG's 8x8 block edges put power on the rows and columns at multiples of 1/8 cycle/pixel, which
    # would favour every scale whose harmonics fall there: leave those lines out.
    for k in range(1, 5):
        rows = round(k * h / 8) + np.arange(-1, 2)
        band[rows % h, :] = 0
        band[-rows % h, :] = 0
        band[:, np.clip(round(k * w / 8) + np.arange(-1, 2), 0, w // 2)] = 0
    return ring, band


@dataclass(frozen=True)
class Folded:
    """The window summed onto one tile, split in up to 2 x 2 parts (``parts[i, j]``, each ``TILE x TILE``).

    ``centres[i, j]`` is the centre of part (i, j) in resampled pixels (x, y); the parts' sum is the
    whole fold. Comparing where the mark sits in each part tells how far the lattice is off.
    """

    parts: np.ndarray
    centres: np.ndarray

    @property
    def tile(self) -> np.ndarray:
        return self.parts.sum(axis=(0, 1))


def _split(blocks: int) -> list[slice]:
    if blocks < 2:
        return [slice(0, blocks)]
    return [slice(0, blocks // 2), slice(blocks // 2, blocks)]


def fold(detail: np.ndarray, lattice: Lattice) -> Folded:
    """Resample ``detail`` so that ``lattice`` becomes ``TILE x TILE`` squares, and sum the squares.

    The result's offset is arbitrary (the origin of the window); the caller finds it by correlation.
    """
    h, w = detail.shape
    basis = np.array([lattice.v1, lattice.v2], dtype=np.float64).T / TILE  # resampled -> image pixels
    if lattice.scale > 1.05:
        # Shrinking: blur first so the image's fine detail does not alias into the mark's band.
        detail = cv2.GaussianBlur(detail, (0, 0), 0.5 * lattice.scale)
    if basis[0, 1] == 0 and basis[1, 0] == 0:
        # No rotation: a plain resize is several times cheaper than an affine warp.
        cw, ch = size = (max(1, round(w / basis[0, 0])), max(1, round(h / basis[1, 1])))
        ph, pw = -ch % TILE, -cw % TILE
        # Resampled straight into the zero-padded canvas (each output pixel depends only on its own
        # place, so the values are those of resizing and then padding, without the copy).
        canon = np.zeros((ch + ph, cw + pw), dtype=np.float32)
        resized = cv2.resize(detail, size, dst=canon[:ch, :cw], interpolation=cv2.INTER_LINEAR)
        if not np.shares_memory(resized, canon):  # OpenCV made its own (another dtype): copy it in
            canon[:ch, :cw] = resized
    else:
        inverse = np.linalg.inv(basis)
        corners = inverse @ np.array([[0, w, 0, w], [0, 0, h, h]], dtype=np.float64)
        low = np.floor(corners.min(axis=1))
        ch, cw = (np.ceil(corners.max(axis=1) - low).astype(int) + 1)[::-1]
        ph, pw = -ch % TILE, -cw % TILE
        affine = np.hstack([basis, (basis @ low)[:, None]])
        # (Warping only the bounding box into the padded canvas, as the resize above does, moved
        # some values by up to 1e-4: the warp's result depends on the output size. Left whole.)
        canon = cv2.warpAffine(detail, affine, (int(cw + pw), int(ch + ph)),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    by, bx = (ch + ph) // TILE, (cw + pw) // TILE
    blocks = canon.reshape(by, TILE, bx, TILE)
    rows, cols = _split(by), _split(bx)
    parts = np.zeros((len(rows), len(cols), TILE, TILE), dtype=np.float32)
    centres = np.zeros((len(rows), len(cols), 2))
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            # Block by block, in the order numpy's sum over both block axes takes (the same bits),
            # a fifth faster than that strided reduction.
            for a in range(r.start, r.stop):
                for b in range(c.start, c.stop):
                    parts[i, j] += blocks[a, :, b, :]
            centres[i, j] = (TILE * (c.start + c.stop) / 2, TILE * (r.start + r.stop) / 2)
    return Folded(parts, centres)


def refined(lattice: Lattice, offsets: np.ndarray, centres: np.ndarray) -> Lattice | None:
    """The lattice corrected by how the mark's offset drifts across the parts of a fold.

    If the lattice is off by a small linear map ``E`` (scale error, rotation), the mark found in a part
    centred at ``u`` sits at ``d0 - E u``: a least-squares fit of the parts' offsets gives ``E``, and
    the true basis is ``B (I + E)^-1``. ``None`` when the parts cannot tell (one part only).
    """
    u = centres.reshape(-1, 2)
    d = offsets.reshape(-1, 2)
    if len(u) < 2:
        return None
    design = np.hstack([np.ones((len(u), 1)), u - u.mean(axis=0)])
    gradient = np.zeros((2, 2))
    for axis in range(2):
        solution, *_ = np.linalg.lstsq(design, d[:, axis], rcond=None)
        gradient[axis] = solution[1:]
    # Directions with a single part carry no information: lstsq gives 0 there, i.e. no correction.
    basis = np.array([lattice.v1, lattice.v2], dtype=np.float64).T
    new = basis @ np.linalg.inv(np.eye(2) - gradient)
    return Lattice(tuple(new[:, 0]), tuple(new[:, 1]), lattice.score)
