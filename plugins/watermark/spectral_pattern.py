"""Keyed carrier patterns of the ``sdmark`` spectral watermark, defined on one periodic tile.

The mark is a ``TILE x TILE`` pattern repeated over the image. It is built in the tile's 2-D Fourier
domain: every frequency bin in the band ``F_LO..F_HI`` cycles/pixel (a ring: low enough to survive
JPEG 50 and a 2x downscale, high enough to stay clear of the image's own strong low frequencies)
gets a keyed pseudo-random phase, and the key also deals the bins out, at random, to

* the *sync* carrier (``SYNC_SHARE`` of the bins, a fixed keyed pattern the detector correlates with
  to find the tile's offset), and
* one carrier per code bit (the rest of the bins, the same number for each bit, spread over the whole
  ring so that an attack that removes part of the band costs every bit a little rather than some bits
  everything). A bit's carrier is added with sign +1 for bit 1 and -1 for bit 0.

Disjoint bins make all carriers orthogonal, so the detector reads each one independently from the
Fourier transform of the folded tile. Without the key, bins, phases and signs are unknown.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from sdmark.plugins.watermark.spectral_code import CODE_BITS

TILE = 128
"""Period of the pattern in pixels of the marked image."""
F_LO = 0.05
F_HI = 0.20
"""Band of the carriers, in cycles per pixel of the marked image."""
SYNC_SHARE = 0.15
"""Least share of the band's bins given to the sync carrier (it gets what the bits leave over)."""


@dataclass(frozen=True)
class Carriers:
    """Where each carrier lives in ``rfft2`` of a ``TILE x TILE`` tile, and with which phase.

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
    def freq(self) -> np.ndarray:
        """Radial frequency of every bin, in cycles per pixel."""
        fy = np.where(self.rows < TILE // 2, self.rows, self.rows - TILE) / TILE
        return np.hypot(fy, self.cols / TILE)


def _rng(key: bytes, label: bytes) -> np.random.Generator:
    seed = hashlib.sha256(b"sdmark/spectral/v1/" + label + b"\0" + key).digest()
    return np.random.default_rng(np.frombuffer(seed, dtype=np.uint32))


@lru_cache(maxsize=16)
def carriers(key: bytes) -> Carriers:
    """The carriers for ``key`` (cached: a key's layout costs ~1 ms to deal)."""
    rows, cols = np.meshgrid(np.arange(TILE), np.arange(1, TILE // 2), indexing="ij")
    # Columns 0 and TILE/2 are their own mirror images in rfft2; leaving them out keeps every bin a
    # free complex coefficient.
    fy = np.where(rows < TILE // 2, rows, rows - TILE) / TILE
    radius = np.hypot(fy, cols / TILE)
    inside = (radius >= F_LO) & (radius <= F_HI)
    rows, cols = rows[inside], cols[inside]
    rng = _rng(key, b"carriers")
    order = rng.permutation(rows.size)
    rows, cols = rows[order], cols[order]
    phase = np.exp(2j * np.pi * rng.random(rows.size))
    per_bit = int(rows.size * (1 - SYNC_SHARE)) // CODE_BITS
    bits = np.arange(CODE_BITS * per_bit).reshape(CODE_BITS, per_bit)
    sync = np.arange(CODE_BITS * per_bit, rows.size)
    return Carriers(rows, cols, phase, sync, bits)


@lru_cache(maxsize=64)
def _tile_cached(key: bytes, code: bytes) -> np.ndarray:
    c = carriers(key)
    bits = np.unpackbits(np.frombuffer(code, dtype=np.uint8))[:CODE_BITS].astype(np.float64) * 2 - 1
    coef = c.phase.copy()
    coef[c.bits] *= bits[:, None]
    spectrum = np.zeros((TILE, TILE // 2 + 1), dtype=np.complex128)
    spectrum[c.rows, c.cols] = coef
    tile = np.fft.irfft2(spectrum, s=(TILE, TILE))
    tile /= np.sqrt(np.mean(tile**2))
    tile.setflags(write=False)
    return tile.astype(np.float32)


def tile(key: bytes, code_bits: np.ndarray) -> np.ndarray:
    """The unit-RMS ``TILE x TILE`` float32 pattern carrying ``code_bits`` (0/1) under ``key``."""
    return _tile_cached(key, np.packbits(np.asarray(code_bits, dtype=np.uint8)).tobytes())
