"""The payload code of the ``sdmark`` spectral watermark: user bytes -> keyed, checked, BCH-protected bits.

Layout (version 1)::

    data  = payload (8 bytes, the user's 64 bits) + check (2 bytes: HMAC-SHA256(key, "v1" + payload)[:2])
    word  = data (80 bits) + BCH(t=12, GF(2^8)) parity of data (96 bits)              -> 176 bits
    bits  = word XOR keyed whitening mask (176 bits)

BCH comes from ``bchlib`` (the Linux kernel's BCH code); it corrects any 12 wrong bits of the 176.
Reading is soft: the detector hands over one real number per bit (its sign is the bit, its size the
confidence), and :func:`decode` runs a Chase-2 search, flipping every subset of the ``CHASE_BITS``
least reliable bits before each hard BCH decode, so that some reads with more than 12 errors are
fixed too. (t=12 read best among t=8..24 in a simulation at equal mark energy: more parity bits
means fewer carrier bins per bit.)

Why a random word almost never decodes: the check and BCH parity are functions of the payload, so
``2^64`` of the ``2^176`` words are codewords. A word is accepted when it lies within Hamming
distance 12 of one (the balls are disjoint: the code's minimum distance is at least 25). For a read
whose bits are fair coins, one BCH decode therefore accepts with probability::

    q(e) = 2^64 * V(176, e) / 2^176,   V(n, e) = sum_{i <= e} C(n, i)
    q(12) = 2.6e-16

and a Chase search is ``2^CHASE_BITS`` = 16 decodes, so at most ``4.2e-15`` per alignment tried.
The detector tries a bounded number of alignments (see :mod:`.spectral`); :func:`false_positive_bound`
is the union bound over them. The keyed whitening mask makes structured reads (an image whose
carriers all correlate alike, reading all zeros or all ones) land on pseudo-random words rather than
on the all-zero codeword of the linear code.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache
from itertools import product
from math import comb
from typing import Any

import numpy as np

from sdmark.plugins.watermark import bch

PAYLOAD_BYTES = 8
"""User payload: 64 bits."""
CHECK_BYTES = 2
BCH_T = 12
BCH_M = 8
DATA_BITS = 8 * (PAYLOAD_BYTES + CHECK_BYTES)
PARITY_BITS = BCH_T * BCH_M
CODE_BITS = DATA_BITS + PARITY_BITS
"""Bits carried by the image: 176."""
CHASE_BITS = 4
"""The least reliable bits whose 16 flip patterns a soft decode tries."""


def _bch() -> Any:
    return bch.codec(BCH_T, BCH_M)


VERSIONS = (b"v1", b"v2")
"""The formats' labels in the key derivations (``sdmark/spectral/v1/...``, ``sdmark/spectral/v2/...``):
the same code, with a whitening mask and a check of its own per format."""


@lru_cache(maxsize=16)
def _whitening(key: bytes, version: bytes = b"v1") -> np.ndarray:
    stream = hashlib.sha256(b"sdmark/spectral/" + version + b"/whitening\0" + key).digest()
    stream += hashlib.sha256(stream).digest()
    return np.unpackbits(np.frombuffer(stream, dtype=np.uint8))[:CODE_BITS]


def _check(payload: bytes, key: bytes, version: bytes = b"v1") -> bytes:
    return hmac.new(key, b"sdmark/spectral/" + version + b"\0" + payload, hashlib.sha256).digest()[:CHECK_BYTES]


def encode(payload: bytes, key: bytes, version: bytes = b"v1") -> np.ndarray:
    """The ``CODE_BITS`` bits (uint8 0/1) that carry ``payload`` under ``key`` in format ``version``."""
    if not isinstance(payload, (bytes, bytearray)) or len(payload) != PAYLOAD_BYTES:
        size = len(payload) if isinstance(payload, (bytes, bytearray)) else type(payload).__name__
        raise ValueError(f"the sdmark payload is exactly {PAYLOAD_BYTES} bytes ({8 * PAYLOAD_BYTES} bits); got {size}")
    data = bytes(payload) + _check(bytes(payload), key, version)
    word = np.unpackbits(np.frombuffer(data + bytes(_bch().encode(data)), dtype=np.uint8))[:CODE_BITS]
    return word ^ _whitening(key, version)


def decode_probability(corrected: int) -> float:
    """P(one hard BCH decode of fair-coin bits succeeds with at most ``corrected`` fixes and the check passes)."""
    volume = sum(comb(CODE_BITS, i) for i in range(min(corrected, BCH_T) + 1))
    return volume * 2.0 ** (8 * PAYLOAD_BYTES - CODE_BITS)


def false_positive_bound(alignments: int, corrected: int = BCH_T + CHASE_BITS) -> float:
    """Union bound: P(an unmarked image yields a payload in ``alignments`` tries, each a Chase search).

    ``corrected`` is the number of bits the accepted word differs from what was read (BCH fixes plus
    Chase flips); the bound with the observed number is the p-value of a detection.
    """
    bch_fixes = min(corrected, BCH_T)
    return min(1.0, alignments * (2 ** CHASE_BITS) * decode_probability(bch_fixes))


@dataclass(frozen=True)
class Decoded:
    """A payload read back, and how many bits differed from the soft read (BCH fixes + Chase flips)."""

    payload: bytes
    corrected: int


def _hard_decode(bits: np.ndarray, key: bytes, version: bytes) -> tuple[bytes, int] | None:
    decoded = bch.decode_whitened(bits, _whitening(key, version), DATA_BITS // 8, _bch())
    if decoded is None:
        return None
    data, fixes = decoded
    payload, check = data[:PAYLOAD_BYTES], data[PAYLOAD_BYTES:]
    if not hmac.compare_digest(check, _check(payload, key, version)):
        return None
    return payload, fixes


def decode(soft: np.ndarray, key: bytes, version: bytes = b"v1") -> Decoded | None:
    """Read a payload from ``CODE_BITS`` soft values (positive means bit 1) in format ``version``;
    ``None`` when none checks out."""
    soft = np.asarray(soft, dtype=np.float64).ravel()
    if soft.size != CODE_BITS:
        raise ValueError(f"expected {CODE_BITS} soft bits, got {soft.size}")
    hard = (soft > 0).astype(np.uint8)
    weakest = np.argsort(np.abs(soft))[:CHASE_BITS]
    best: Decoded | None = None
    # Fewest flips first: the most likely error pattern is tried first, and a clean read stops at once.
    for flips in sorted(product((0, 1), repeat=CHASE_BITS), key=sum):
        trial = hard.copy()
        trial[weakest] ^= np.asarray(flips, dtype=np.uint8)
        result = _hard_decode(trial, key, version)
        if result is not None:
            found = Decoded(result[0], result[1] + sum(flips))
            if best is None or found.corrected < best.corrected:
                best = found
            if found.corrected <= BCH_T // 2:
                break
    return best
