"""Keyed carrier patterns of the ``sdmark`` spectral watermark, defined on one periodic tile.

The mark is a ``tile x tile`` pattern repeated over the image. It is built in the tile's 2-D Fourier
domain: every frequency bin in the format's band (a ring: low enough to survive JPEG and downscaling,
high enough to stay clear of the image's own strong low frequencies) gets a keyed pseudo-random
phase, and the key also deals the bins out, at random, to

* the *sync* carrier (``SYNC_SHARE`` of the bins, a fixed keyed pattern the detector correlates with
  to find the tile's offset), and
* one carrier per code bit (the rest of the bins, the same number for each bit, spread over the whole
  ring so that an attack that removes part of the band costs every bit a little rather than some bits
  everything). A bit's carrier is added with sign +1 for bit 1 and -1 for bit 0.

Disjoint bins make all carriers orthogonal, so the detector reads each one independently from the
Fourier transform of the folded tile. Without the key, bins, phases and signs are unknown.

Two formats (:data:`FORMATS`) share one layout of *bins*: format 1 (:data:`V1`) has a 128 px tile and
the band 0.05..0.20 cycles/pixel, format 2 (:data:`V2`) a 256 px tile and the band 0.025..0.10, i.e.
format 1's bins on a tile twice the size: the same pattern drawn twice as large, with the energy
half as high in frequency, where downscaling and heavy JPEG keep it. Their keys are derived under
different labels, so the two formats' carriers are unrelated. The detector folds either onto a
``TILE`` (128) grid, where both have the bins :func:`carriers` lists.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from sdmark.plugins.watermark.spectral_code import CODE_BITS

TILE = 128
"""The grid the detector folds onto, in pixels; format 1's tile (format 2's tile is ``2 * TILE``)."""
BIN_LO, BIN_HI = 6.4, 25.6
"""The band in frequency bins of a tile (format 1: 0.05..0.20 cycles/pixel; format 2: 0.025..0.10)."""
F_LO = BIN_LO / TILE
F_HI = BIN_HI / TILE
"""The band of the carriers in cycles per pixel of the fold grid (format 1's band in its own pixels)."""
SYNC_SHARE = 0.15
"""Least share of the band's bins given to the sync carrier (it gets what the bits leave over)."""


@dataclass(frozen=True)
class Format:
    """One embedded format: its name, key-derivation label and tile size (pixels of the marked image).

    ``zoom`` is how many marked-image pixels one pixel of the ``TILE`` fold grid stands for.
    """

    name: str
    label: bytes
    tile: int

    @property
    def version(self) -> bytes:
        """The label's version part (``b"v1"``, ``b"v2"``), which the payload code is keyed with."""
        return self.label.rstrip(b"/").rsplit(b"/", 1)[1]

    @property
    def zoom(self) -> float:
        return self.tile / TILE

    @property
    def band(self) -> tuple[float, float]:
        """The carriers' band in cycles per pixel of the marked image."""
        return BIN_LO / self.tile, BIN_HI / self.tile


V1 = Format("sdmark-spectral/1", b"sdmark/spectral/v1/", TILE)
V2 = Format("sdmark-spectral/2", b"sdmark/spectral/v2/", 2 * TILE)
FORMATS = (V2, V1)
"""Every format the detector reads, the default first."""


@dataclass(frozen=True)
class Carriers:
    """Where each carrier lives in ``rfft2`` of a ``TILE x TILE`` fold, and with which phase.

    ``rows``/``cols`` index the half-spectrum (shape ``(TILE, TILE // 2 + 1)``); ``sync`` holds the
    sync bins' positions into those arrays; ``bits[i]`` those of code bit ``i``; ``phase`` is the unit
    complex coefficient of every bin.
    """

    rows: np.ndarray
    cols: np.ndarray
    phase: np.ndarray
    sync: np.ndarray
    bits: np.ndarray  # (CODE_BITS, bins_per_bit)

    @property
    def radius(self) -> np.ndarray:
        """Radial frequency of every bin, in bins of the tile."""
        fy = np.where(self.rows < TILE // 2, self.rows, self.rows - TILE)
        return np.hypot(fy, self.cols)

    @property
    def freq(self) -> np.ndarray:
        """Radial frequency of every bin, in cycles per pixel of the fold grid."""
        return self.radius / TILE


def _rng(key: bytes, label: bytes) -> np.random.Generator:
    seed = hashlib.sha256(label + b"\0" + key).digest()
    return np.random.default_rng(np.frombuffer(seed, dtype=np.uint32))


@lru_cache(maxsize=32)
def carriers(key: bytes, fmt: Format = V1) -> Carriers:
    """The carriers for ``key`` in format ``fmt`` (cached: a key's layout costs ~1 ms to deal)."""
    rows, cols = np.meshgrid(np.arange(TILE), np.arange(1, TILE // 2), indexing="ij")
    # Columns 0 and TILE/2 are their own mirror images in rfft2; leaving them out keeps every bin a
    # free complex coefficient.
    fy = np.where(rows < TILE // 2, rows, rows - TILE)
    radius = np.hypot(fy, cols)
    inside = (radius >= BIN_LO) & (radius <= BIN_HI)
    rows, cols = rows[inside], cols[inside]
    rng = _rng(key, fmt.label + b"carriers")
    order = rng.permutation(rows.size)
    rows, cols = rows[order], cols[order]
    phase = np.exp(2j * np.pi * rng.random(rows.size))
    per_bit = int(rows.size * (1 - SYNC_SHARE)) // CODE_BITS
    bits = np.arange(CODE_BITS * per_bit).reshape(CODE_BITS, per_bit)
    sync = np.arange(CODE_BITS * per_bit, rows.size)
    return Carriers(rows, cols, phase, sync, bits)


@lru_cache(maxsize=64)
def _tile_cached(key: bytes, code: bytes, fmt: Format) -> np.ndarray:
    c = carriers(key, fmt)
    bits = np.unpackbits(np.frombuffer(code, dtype=np.uint8))[:CODE_BITS].astype(np.float64) * 2 - 1
    coef = c.phase.copy()
    coef[c.bits] *= bits[:, None]
    t = fmt.tile
    spectrum = np.zeros((t, t // 2 + 1), dtype=np.complex128)
    rows = np.where(c.rows < TILE // 2, c.rows, c.rows - TILE) % t
    spectrum[rows, c.cols] = coef
    out = np.fft.irfft2(spectrum, s=(t, t))
    out /= np.sqrt(np.mean(out**2))
    result = out.astype(np.float32)
    result.setflags(write=False)
    return result


def tile(key: bytes, code_bits: np.ndarray, fmt: Format = V1) -> np.ndarray:
    """The unit-RMS ``fmt.tile`` square float32 pattern carrying ``code_bits`` (0/1) under ``key``."""
    return _tile_cached(key, np.packbits(np.asarray(code_bits, dtype=np.uint8)).tobytes(), fmt)
