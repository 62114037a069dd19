"""The sdmark payload: a versioned, error-corrected, checked identifier carried by our marks.

Layout (version 1), 152 bits on the image::

    data  = header (1 byte: version << 4 | method tag) + id (8 bytes) + CRC-16/CCITT of those 9 bytes
    word  = data (88 bits) + BCH(t=8, GF(2^8)) parity of data (64 bits)         -> 152 bits
    bits  = word XOR whitening mask (152 bits from SHA-256 of a fixed label)

The BCH code (``bchlib``, the Linux kernel's BCH) corrects up to 8 wrong bits anywhere in the 152.
The whitening mask makes structured reads (a flat image decodes to all zeros or all ones) land on
pseudo-random words rather than on the all-zero codeword of a linear code.

False-positive bound, on paper
------------------------------
Call a read "sdmark mark found" when the 152 bits, de-whitened, BCH-decode with ``e <= 8``
corrections into data whose header is version 1 with the tag of the method that was read and
whose CRC matches. Header and CRC are functions of the id, so exactly ``2^64`` of the ``2^152``
words are valid codewords for a given method. A word is accepted iff it lies within Hamming
distance 8 of one of them; the balls of radius 8 around codewords are disjoint (the code's minimum
distance is at least 17), so for a read that is uniform over the ``2^152`` words::

    P(found) = 2^64 * V(152, 8) / 2^152,    V(n, t) = sum_{i<=t} C(n, i) = 6.2e12 ~ 2^42.5
             = 2.0e-14

and ``sdmark verify`` reads two methods (``dwtDct`` and ``dwtDctSvd``), so at most 4.0e-14 per
image: well under the 1e-6 asked for. The CRC and header are 24 bits of that margin; without them
(``2^88`` codewords) the bound would be 3.4e-7, still under 1e-6. The uniformity assumption is what
the whitening mask is for: an unmarked image's bits do not depend on a fixed mask that it has never
seen, so ``read XOR mask`` is as good as uniform for this count (tests check flat, constant and
periodic images explicitly, and ``python -m sdmark.plugins.watermark.calibration`` counts false
positives on unmarked images). A found mark's p-value is the same count with ``e`` in place of 8:
the probability that an unmarked image decodes with at most as many corrections as this one did.
"""

from __future__ import annotations

import binascii
import hashlib
import secrets
from dataclasses import dataclass
from math import comb
from typing import Any

import numpy as np

from sdmark.plugins.watermark import bch

VERSION = 1
ID_BYTES = 8
BCH_T = 8
BCH_M = 8
DATA_BYTES = 1 + ID_BYTES + 2
PARITY_BITS = BCH_T * BCH_M
LENGTH = DATA_BYTES * 8 + PARITY_BITS
"""Bits on the image: 152."""

METHOD_TAGS = {"dwtDct": 1, "dwtDctSvd": 2}
"""Method tag in the header, so a payload read by one method is never taken for another's."""


def _mask(label: bytes, bits: int) -> np.ndarray:
    stream = b""
    counter = 0
    while len(stream) * 8 < bits:
        stream += hashlib.sha256(label + counter.to_bytes(4, "big")).digest()
        counter += 1
    return np.unpackbits(np.frombuffer(stream, dtype=np.uint8))[:bits]


WHITENING = _mask(b"sdmark/payload/v1/whitening", LENGTH)


def _bch() -> Any:
    return bch.codec(BCH_T, BCH_M)


def false_positive_bound(corrected: int = BCH_T, methods: int = 1) -> float:
    """P(an unmarked image decodes as a valid payload with at most ``corrected`` bit fixes)."""
    volume = sum(comb(LENGTH, i) for i in range(corrected + 1))
    return min(1.0, methods * volume * 2.0 ** (8 * ID_BYTES - LENGTH))


def parse_id(text: str | None) -> bytes:
    """The 8-byte id for an ``id`` option: ``auto``/empty -> random, else 1-16 hex digits."""
    if text is None or text.strip().lower() in ("", "auto"):
        return secrets.token_bytes(ID_BYTES)
    value = text.strip().lower().removeprefix("0x")
    if not value or len(value) > 2 * ID_BYTES or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"id must be 1 to {2 * ID_BYTES} hex digits or 'auto'; got {text!r}")
    return bytes.fromhex(value.rjust(2 * ID_BYTES, "0"))


def encode(ident: bytes, method: str) -> np.ndarray:
    """The 152 bits (uint8 0/1) to embed for ``ident`` with ``method``."""
    if len(ident) != ID_BYTES:
        raise ValueError(f"the payload id is {ID_BYTES} bytes, got {len(ident)}")
    head = bytes([VERSION << 4 | METHOD_TAGS[method]]) + ident
    data = head + binascii.crc_hqx(head, 0xFFFF).to_bytes(2, "big")
    parity = _bch().encode(data)
    word = np.unpackbits(np.frombuffer(data + parity, dtype=np.uint8))[:LENGTH]
    return word ^ WHITENING


@dataclass(frozen=True)
class Decoded:
    """A payload read back: the id, how many bits BCH corrected, and the false-positive bound."""

    ident: bytes
    corrected: int
    p_value: float

    @property
    def hex(self) -> str:
        return self.ident.hex()


def decode(bits: np.ndarray, method: str, methods_tried: int = 1) -> Decoded | None:
    """Read a payload from 152 decoded bits; ``None`` unless BCH, header and CRC all agree."""
    bits = np.asarray(bits, dtype=np.uint8).ravel()
    if bits.size != LENGTH:
        raise ValueError(f"an sdmark payload is {LENGTH} bits, got {bits.size}")
    decoded = bch.decode_whitened(bits, WHITENING, DATA_BYTES, _bch())
    if decoded is None:
        return None
    data, corrected = decoded
    head, check = data[:-2], data[-2:]
    if head[0] != (VERSION << 4 | METHOD_TAGS[method]):
        return None
    if binascii.crc_hqx(head, 0xFFFF).to_bytes(2, "big") != check:
        return None
    return Decoded(ident=head[1:], corrected=corrected, p_value=false_positive_bound(corrected, methods_tried))


# -- rivaGan: 32 bits leave no room for an id, so it carries a fixed keyed pattern ---------------

RIVAGAN_BITS = 32
RIVAGAN_PATTERN = _mask(b"sdmark/rivaGan/v1/pattern", RIVAGAN_BITS)
