"""BCH coding shared by sdmark's payloads (the dwt payload and the spectral mark's code word)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np


@lru_cache(maxsize=None)
def codec(t: int, m: int) -> Any:
    """The ``bchlib`` codec correcting ``t`` bits over GF(2^m); one per process, as building its
    Galois-field tables costs more than a decode."""
    import bchlib

    return bchlib.BCH(t, m=m)


def decode_whitened(bits: np.ndarray, whitening: np.ndarray, data_bytes: int, code: Any) -> tuple[bytes, int] | None:
    """Unwhiten a read, split it into data and parity, and correct it with ``code``.

    Returns the corrected data bytes and how many bits were fixed, or ``None`` when the read is
    beyond what the code corrects.
    """
    raw = np.packbits(bits ^ whitening).tobytes()
    data, parity = bytearray(raw[:data_bytes]), bytearray(raw[data_bytes:])
    fixes = code.decode(data, parity)
    if fixes < 0:
        return None
    if fixes:
        code.correct(data, parity)
    return bytes(data), fixes
