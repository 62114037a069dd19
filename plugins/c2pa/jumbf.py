"""The signer's certificate of a C2PA manifest, read from the manifest store's own bytes.

The SDK's reader reports a signer's common name, issuer and serial number, and any of those can be
copied into a look-alike certificate. What tells two identities apart is the certificate itself: this
module finds the manifest store in a file (PNG ``caBX`` chunk, JPEG APP11 segments, WebP ``C2PA``
chunk), the ``c2pa.signature`` box of a manifest in it, decodes its COSE_Sign1 structure (``cbor2``)
and hashes the leaf of its ``x5chain`` header: the certificate the SDK verified the signature with.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Iterator

X5CHAIN = 33  # the COSE header label of the certificate chain (RFC 9360)
MAX_STORE = 64 * 1024 * 1024


def boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """``(type, body start, box end)`` for each ISO BMFF/JUMBF box in ``data[start:end]``."""
    while start + 8 <= end:
        size = int.from_bytes(data[start:start + 4], "big")
        kind = data[start + 4:start + 8]
        header = 8
        if size == 1 and start + 16 <= end:
            size, header = int.from_bytes(data[start + 8:start + 16], "big"), 16
        if size < header or start + size > end:
            return
        yield kind, start + header, start + size
        start += size


def box_label(data: bytes, start: int, end: int) -> str | None:
    """The label of a ``jumb`` superbox (its ``jumd`` description box comes first)."""
    for kind, body, stop in boxes(data, start, end):
        if kind == b"jumd" and stop - body > 17 and data[body + 16] & 0x02:
            return data[body + 17:stop].split(b"\x00", 1)[0].decode("utf-8", "replace")
        return None
    return None


def manifests(store: bytes) -> list[tuple[str, int, int]]:
    """``(label, start, end)`` of each manifest in a manifest store, in order (the active one last)."""
    for kind, body, stop in boxes(store, 0, len(store)):
        if kind == b"jumb":
            return [(name, cbody, cstop) for child, cbody, cstop in boxes(store, body, stop) if child == b"jumb"
                    for name in [box_label(store, cbody, cstop)] if name]
    return []


def signer_sha256(store: bytes, label: str | None) -> str | None:
    """SHA-256 (hex) of the leaf certificate that signed manifest ``label`` (the last one when
    ``None``), or ``None`` when the store holds no such signature."""
    import cbor2

    found = manifests(store)
    chosen = [m for m in found if m[0] == label] if label else found[-1:]
    if not chosen:
        return None
    _, start, end = chosen[-1]
    for kind, body, stop in boxes(store, start, end):
        if kind != b"jumb" or box_label(store, body, stop) != "c2pa.signature":
            continue
        for inner, cbody, cstop in boxes(store, body, stop):
            if inner != b"cbor":
                continue
            try:
                cose = cbor2.loads(store[cbody:cstop])
                fields = cose.value if isinstance(cose, cbor2.CBORTag) else cose
                protected = cbor2.loads(fields[0]) if fields[0] else {}
                chain = protected.get(X5CHAIN) or (fields[1] or {}).get(X5CHAIN)
            except (cbor2.CBORDecodeError, TypeError, IndexError, AttributeError, ValueError):
                return None
            leaf = chain[0] if isinstance(chain, list) and chain else chain
            return hashlib.sha256(leaf).hexdigest() if isinstance(leaf, bytes) else None
    return None


def store_from_file(path: Path) -> bytes | None:
    """The embedded C2PA manifest store of a PNG, JPEG or WebP file, or ``None``."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_STORE * 2)
    except OSError:
        return None
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        pos = 8
        while pos + 12 <= len(data):
            length, kind = struct.unpack(">I4s", data[pos:pos + 8])
            if kind == b"caBX":
                return data[pos + 8:pos + 8 + length]
            if kind == b"IEND":
                return None
            pos += 12 + length
        return None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        pos = 12
        while pos + 8 <= len(data):
            kind, length = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
            if kind == b"C2PA":
                return data[pos + 8:pos + 8 + length]
            pos += 8 + length + (length & 1)
        return None
    if data.startswith(b"\xff\xd8"):
        return _jpeg_store(data)
    return None


def _jpeg_store(data: bytes) -> bytes | None:
    """Reassemble the APP11 (JUMBF) segments of the ``c2pa`` superbox; each segment after the first
    repeats the superbox's 8-byte header, which is dropped."""
    segments: dict[int, list[tuple[int, bytes]]] = {}
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no more metadata
            break
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        body = data[pos + 4:pos + 2 + length]
        if marker == 0xEB and body[:2] == b"JP" and len(body) >= 8:
            instance, sequence = struct.unpack(">HI", body[2:8])
            segments.setdefault(instance, []).append((sequence, body[8:]))
        pos += 2 + length
    for parts in segments.values():
        parts.sort()
        store = parts[0][1] + b"".join(part[8:] for _, part in parts[1:])
        found = next(boxes(store, 0, len(store)), None)
        if found and found[0] == b"jumb" and box_label(store, found[1], found[2]) == "c2pa":
            return store
    return None
