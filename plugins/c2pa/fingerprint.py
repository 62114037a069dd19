"""A perceptual fingerprint of an image's content, signed into its C2PA manifest.

A watermark payload says only that *some* sdmark image once carried this id: the mark can be
estimated from one image and added to another (the copy attack). So the signed manifest also binds
the content: a PDQ hash (Meta's perceptual hash, made for matching at scale; ``pdqhash``), a small
greyscale thumbnail (long side :data:`THUMB_SIDE` px) and a Cr/Cb thumbnail at half that, all of
the pixels as written. Recovery
compares the image under test with them, never with anything a registry row says.

Why PDQ over a thumbnail: measured on photos and flat illustrations (``benchmarks/attribution.py
--fingerprints``), PDQ, imagehash's pHash-256 and the ISCC image code separate re-encoded copies
from unrelated images about equally well on whole images, and none of them survives a crop (all
three are global DCT hashes). PDQ is computed in C++ in 0.08 ms from the thumbnail (pHash 2.4 ms,
ISCC's pure-Python DCT 4 ms), which is what lets verify compare a crop region by region: the
watermark's synchronisation gives the scale, the thumbnail gives the position, and the hash and a
correlation are computed on the matching region only.

Since the attack review, the fingerprint also signs a finer binding: a luma thumbnail at
:data:`FINE_SIDE` px and the detail energy per cell at :data:`ENERGY_SIDE` px scale, so a local
edit the 64 px thumbnail cannot see (a blurred face, drawn text, a mirrored or pasted region) reads
``locally edited``. What it cannot see is an edit under about one cell (16 px on a 512 px image) or
one that keeps an area's coarse structure and amount of detail (docs/content-credentials.md).

Pure functions over arrays; nothing here touches files or the ``c2pa`` package.
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ALG = "dev.sdmark.fingerprint.pdq-thumb64"
"""The soft-binding ``alg`` of the fingerprint assertion (sdmark's namespace: PDQ over our thumbnail)."""
THUMB_SIDE = 64
HASH_BITS = 256
# Thresholds measured by benchmarks/attribution.py (see docs/content-credentials.md for the table).
MATCH_DISTANCE = 0.30
"""Largest PDQ distance (fraction of the 256 bits) of the aligned region that still counts as the same content."""
MATCH_CORRELATION = 0.80
"""Smallest correlation of the aligned thumbnails that counts as the same content."""
EDIT_BLOCK = 8
EDIT_RESIDUAL = 0.5
"""An 8x8 thumbnail block whose residual (after fitting gain and offset) exceeds this share of the
image's contrast is a local change: the copy was drawn on, captioned or partly replaced."""
EDIT_FLAG = 0.7
"""A block residual above this (but under :data:`EDIT_RESIDUAL`) still marks the copy ``locally edited``."""
CHROMA_EDIT = 40.0
"""A chroma block residual (8-bit units) above this marks the copy ``locally edited``."""
MIN_AGREEING = 0.75
"""Smallest share of agreeing blocks for a locally edited copy to still count as the same content."""
MAX_EDITED_BOX = 0.3
"""Largest share of the area that the changed blocks of a locally edited copy may span (one compact edit)."""
EDITED_CORRELATION = 0.9
"""Smallest correlation over the agreeing blocks of a locally edited copy."""
WHOLE = 0.97
"""A region at least this share of the signed image on both axes is compared as the whole image."""
FINE_SIDE = 128
"""Long side of the finer luma thumbnail (a 512 px image: 4 px a thumbnail pixel)."""
ENERGY_SIDE = 256
"""Long side of the plane whose detail energy is signed per cell (a 512 px image: 2 px a pixel)."""
ENERGY_CELL = 8
"""Side of an energy cell in that plane (a 512 px image: 16 px cells, 32 x 32 of them)."""
FINE_BLOCK = 4
"""Side of a residual block in the finer thumbnail (a 512 px image: 16 px)."""
FINE_BLUR = 1.0
"""Gaussian blur (finer-thumbnail pixels) on both sides: an area-averaged thumbnail of fine texture
aliases, and a copy cropped off the thumbnail's pixel grid samples it at another phase."""
FINE_EDIT = 0.45
"""A finer-thumbnail block whose residual (share of the image's contrast, after fitting gain and
offset) exceeds this is a local change of structure: a mirrored, pasted or inverted region."""
ENERGY_EDIT = 1.0
"""A cell whose detail energy differs from the image-wide change by more than this (log2: a factor
of 2) is a local change of detail: a blurred face, drawn text, a patch of other texture."""
ENERGY_FLOOR = 1.5
"""Detail energy (8-bit units) added on both sides before the ratio, so flat areas' noise does not count."""


@dataclass(frozen=True)
class Fingerprint:
    """The signed content fingerprint of one image: its size, PDQ hash and greyscale thumbnail."""

    width: int
    height: int
    pdq: bytes
    thumbnail: np.ndarray = field(repr=False, compare=False)
    chroma: np.ndarray | None = field(default=None, repr=False, compare=False)
    """Cr and Cb at half the thumbnail's resolution, ``(h, w, 2)``: what a grey thumbnail cannot
    see (a red box drawn over a green field of the same luma)."""
    fine: np.ndarray | None = field(default=None, repr=False, compare=False)
    """The luma thumbnail at long side :data:`FINE_SIDE` (``None`` in fingerprints signed before it)."""
    energy: np.ndarray | None = field(default=None, repr=False, compare=False)
    """Quantised log detail energy per cell (:func:`energy_grid`; ``None`` in older fingerprints)."""
    signed_thumbnail: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    """The thumbnail's JSON as the signed manifest has it (:meth:`from_json`), so that showing it
    needs no second compression."""

    @property
    def detailed(self) -> bool:
        """Whether local edits can be looked for (the fingerprint has its finer binding)."""
        return self.fine is not None and self.energy is not None

    def thumbnail_json(self) -> dict[str, Any]:
        """The small greyscale thumbnail as plain JSON (zlib-compressed base64 bytes, row by row)."""
        if self.signed_thumbnail is not None:
            return dict(self.signed_thumbnail)
        thumb = np.ascontiguousarray(self.thumbnail, dtype=np.uint8)
        return {"width": int(thumb.shape[1]), "height": int(thumb.shape[0]),
                "grey_zlib_b64": base64.b64encode(zlib.compress(thumb.tobytes(), 9)).decode("ascii")}

    def to_json(self) -> dict[str, Any]:
        """The assertion's ``alg_params``: plain JSON (the thumbnails as zlib-compressed base64 bytes)."""
        out = {
            "width": int(self.width), "height": int(self.height), "pdq": self.pdq.hex(),
            "thumbnail": self.thumbnail_json(),
        }
        if self.chroma is not None:
            chroma = np.ascontiguousarray(self.chroma, dtype=np.uint8)
            out["chroma"] = {"width": int(chroma.shape[1]), "height": int(chroma.shape[0]),
                             "crcb_zlib_b64": base64.b64encode(zlib.compress(chroma.tobytes(), 9)).decode("ascii")}
        for name, plane in (("fine", self.fine), ("energy", self.energy)):
            if plane is not None:
                plane = np.ascontiguousarray(plane, dtype=np.uint8)
                out[name] = {"width": int(plane.shape[1]), "height": int(plane.shape[0]),
                             "zlib_b64": base64.b64encode(zlib.compress(plane.tobytes(), 9)).decode("ascii")}
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Fingerprint":
        """Parse :meth:`to_json` output; ``ValueError`` on anything malformed (it came from a file)."""
        try:
            thumb = data["thumbnail"]
            tw, th = int(thumb["width"]), int(thumb["height"])
            if not (0 < tw <= THUMB_SIDE and 0 < th <= THUMB_SIDE):
                raise ValueError("thumbnail size out of range")
            pixels = _plane(thumb["grey_zlib_b64"], tw * th)
            chroma = None
            if data.get("chroma") is not None:
                cw, ch = int(data["chroma"]["width"]), int(data["chroma"]["height"])
                if not (0 < cw <= tw and 0 < ch <= th):
                    raise ValueError("chroma size out of range")
                chroma = _plane(data["chroma"]["crcb_zlib_b64"], cw * ch * 2).reshape(ch, cw, 2).copy()
            fine = energy = None
            if data.get("fine") is not None or data.get("energy") is not None:
                fw, fh = int(data["fine"]["width"]), int(data["fine"]["height"])
                ew, eh = int(data["energy"]["width"]), int(data["energy"]["height"])
                if not (0 < fw <= FINE_SIDE and 0 < fh <= FINE_SIDE):
                    raise ValueError("fine thumbnail size out of range")
                limit = -(-ENERGY_SIDE // ENERGY_CELL)
                if not (0 < ew <= limit and 0 < eh <= limit):
                    raise ValueError("energy grid size out of range")
                fine = _plane(data["fine"]["zlib_b64"], fw * fh).reshape(fh, fw).copy()
                energy = _plane(data["energy"]["zlib_b64"], ew * eh).reshape(eh, ew).copy()
            pdq = bytes.fromhex(data["pdq"])
            if len(pdq) * 8 != HASH_BITS:
                raise ValueError("PDQ hash is not 256 bits")
            width, height = int(data["width"]), int(data["height"])
            if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
                raise ValueError("image size out of range")
            # The thumbnails must be the size this image's thumbnails would be: a fingerprint
            # claiming a huge image over a tiny thumbnail would divide the comparison by zero.
            if (tw, th) != _thumb_size(width, height, THUMB_SIDE):
                raise ValueError("thumbnail size does not fit the image size")
            if fine is not None and ((fine.shape[1], fine.shape[0]) != _thumb_size(width, height, FINE_SIDE)):
                raise ValueError("fine thumbnail size does not fit the image size")
        except (KeyError, TypeError, ValueError, zlib.error) as exc:
            raise ValueError(f"malformed fingerprint: {exc}") from None
        return cls(width=width, height=height, pdq=pdq, thumbnail=pixels.reshape(th, tw).copy(), chroma=chroma,
                   fine=fine, energy=energy,
                   signed_thumbnail={"width": tw, "height": th, "grey_zlib_b64": str(thumb["grey_zlib_b64"])})


MAX_SIDE = 1 << 16
"""Largest image side a fingerprint may claim (a file's claim: bounded before any arithmetic)."""


def _thumb_size(width: int, height: int, side: int) -> tuple[int, int]:
    k = side / max(width, height)
    return max(1, round(width * k)), max(1, round(height * k))


def _plane(text: str, size: int) -> np.ndarray:
    """``size`` bytes from zlib-compressed base64 (at most ``size`` + 1 inflated: no zip bomb)."""
    pixels = np.frombuffer(zlib.decompressobj().decompress(base64.b64decode(text), size + 1), dtype=np.uint8)
    if pixels.size != size:
        raise ValueError("thumbnail size does not match its pixels")
    return pixels


@dataclass
class Comparison:
    """How the image under test compares with a signed fingerprint."""

    matched: bool
    distance: float
    """PDQ distance of the aligned region, 0 (same bits) to 1; unrelated images sit near 0.5."""
    correlation: float
    changes: list[str]
    """What likely happened to a matched copy: ``resized``, ``cropped``, ``tone changed``, ``locally edited``."""
    region: tuple[int, int, int, int] | None = None
    """Where the image under test sits in the signed image (x, y, width, height, in its pixels)."""
    agreeing: float = 1.0
    """Share of the compared area that agrees with the signed content (the rest was changed)."""
    worst_block: float = 0.0
    """The largest block residual (share of the image's contrast) after fitting gain and offset."""
    worst_chroma: float = 0.0
    """The largest chroma block residual (8-bit units) after fitting a gain per channel."""
    local: dict[str, Any] | None = None
    """The finer binding's findings (``None`` when the signed fingerprint has none, or no match)."""
    resolution: int = 0
    """Side (signed pixels) of the smallest area compared on its own: edits smaller than this can pass."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"distance": round(self.distance, 4), "correlation": round(self.correlation, 4),
                               "agreeing": round(self.agreeing, 4), "worst_block": round(min(self.worst_block, 99.0), 4),
                               "worst_chroma": round(self.worst_chroma, 2),
                               "changes": self.changes, "local_edits_checked": self.local is not None,
                               "resolution_px": self.resolution}
        if self.local is not None:
            out["local"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in self.local.items()}
        if self.region is not None:
            out["region"] = list(self.region)
        return out


def grey(image: Any, reduce_to: int | None = None) -> np.ndarray:
    """``image`` (PIL image or ``(H, W[, C])`` uint8 array) as a 2-D uint8 luma array; with
    ``reduce_to``, first box-reduced by a whole factor while its short side stays at least that."""
    return planes(image, reduce_to)[0]


def planes(image: Any, reduce_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Luma ``(H, W)`` and Cr/Cb ``(H, W, 2)`` uint8 planes of ``image`` (see :func:`grey`)."""
    image = _reduced(image, reduce_to)
    return np.asarray(image.convert("L")), _chroma(image)


def _reduced(image: Any, reduce_to: int | None = None) -> Any:
    """``image`` as a PIL image, box-reduced by a whole factor while its short side stays at least ``reduce_to``."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image[..., :3]) if image.ndim == 3 else image)
    if reduce_to:
        factor = min(image.size) // reduce_to
        if factor >= 2:
            image = image.reduce(factor)
    return image


def _chroma(image: Any) -> np.ndarray:
    """Cr/Cb ``(H, W, 2)`` uint8 planes of a PIL image."""
    import cv2

    rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    # Contiguous: OpenCV resizes a strided two-channel view about ten times slower.
    return np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)[..., 1:])


def _resize(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    if (plane.shape[1], plane.shape[0]) == (width, height):
        return plane
    shrinking = width < plane.shape[1] and height < plane.shape[0]
    return cv2.resize(plane, (max(1, width), max(1, height)), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def thumbnail(plane: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """The greyscale thumbnail (long side ``side``) of a luma plane, area-averaged."""
    h, w = plane.shape
    k = side / max(h, w)
    return _resize(plane, max(1, round(w * k)), max(1, round(h * k)))


def pdq(plane: np.ndarray) -> bytes:
    """The 256-bit PDQ hash of a luma plane (of any size; ``pdqhash`` resamples it)."""
    import cv2
    import pdqhash

    bits, _quality = pdqhash.compute(cv2.cvtColor(np.ascontiguousarray(plane), cv2.COLOR_GRAY2RGB))
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes()


def fingerprint(image: Any) -> Fingerprint:
    """The fingerprint of ``image`` as it is (call it on the pixels as written)."""
    plane, crcb = planes(image)
    thumb = thumbnail(plane)
    th, tw = thumb.shape
    chroma = _resize(crcb, max(1, tw // 2), max(1, th // 2))
    h, w = plane.shape
    energy_plane = _resize(plane, *_thumb_size(w, h, ENERGY_SIDE))
    return Fingerprint(width=w, height=h, pdq=pdq(thumb), thumbnail=thumb, chroma=chroma,
                       fine=thumbnail(plane, FINE_SIDE), energy=_quantise(energy_grid(energy_plane)))


def detail(plane: np.ndarray) -> np.ndarray:
    """Per-pixel detail of a luma plane at :data:`ENERGY_SIDE` scale: the absolute band-pass
    (the plane minus its blur), the texture a blur removes and drawn text or a pasted patch adds."""
    import cv2

    p = plane.astype(np.float32)
    return np.abs(p - cv2.GaussianBlur(p, (0, 0), 1.0))


def energy_grid(plane: np.ndarray) -> np.ndarray:
    """Mean :func:`detail` per :data:`ENERGY_CELL` cell (partial cells at the edges included)."""
    return _cells(detail(plane), ENERGY_CELL)


def _cells(values: np.ndarray, cell: int) -> np.ndarray:
    h, w = values.shape
    gh, gw = -(-h // cell), -(-w // cell)
    if (gh * cell, gw * cell) == (h, w):
        return _block_means(values, cell)
    padded = np.zeros((gh * cell, gw * cell), dtype=np.float32)
    padded[:h, :w] = values
    counts = np.zeros_like(padded)
    counts[:h, :w] = 1
    return (padded.reshape(gh, cell, gw, cell).sum(axis=(1, 3))
            / counts.reshape(gh, cell, gw, cell).sum(axis=(1, 3)))


def _block_means(values: np.ndarray, block: int) -> np.ndarray:
    """Mean of each ``block`` x ``block`` block of a plane whose sides are whole blocks (float32).

    OpenCV's area resize by a whole factor is exactly the block mean, in a tenth of the time of
    numpy's mean over two strided axes (the sums differ in the last float bits only)."""
    import cv2

    h, w = values.shape
    return cv2.resize(np.ascontiguousarray(values, dtype=np.float32), (w // block, h // block), interpolation=cv2.INTER_AREA)


def _quantise(energy: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(32 * np.log2(1 + energy)), 0, 255).astype(np.uint8)


def _dequantise(energy: np.ndarray) -> np.ndarray:
    return np.exp2(energy.astype(np.float32) / 32) - 1


def hamming(a: bytes, b: bytes) -> float:
    """Share of differing bits between two equal-length hashes."""
    x = np.unpackbits(np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8))
    return float(x.mean())


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float32) - a.mean()
    b = b.astype(np.float32) - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def compare(signed: Fingerprint, image: Any, scale: float | None = None) -> Comparison:
    """Compare ``image`` with the signed fingerprint; ``scale`` is the watermark's estimate of the
    resize factor (test pixels per signed pixel), when its scheme synchronises.

    Without ``scale`` the image is taken as a resize of the whole (when its aspect ratio matches) or
    a crop along one axis. A smaller region is searched for in the thumbnail (normalised
    correlation, sub-pixel), and the PDQ hash and the correlation are computed on that region only.
    The same content is a PDQ distance of at most :data:`MATCH_DISTANCE` with a correlation of at
    least :data:`MATCH_CORRELATION`, or, for a copy with a local change (a caption band, a drawn box),
    the same correlation over at least :data:`MIN_AGREEING` of the area with the rest called edited.
    """
    import cv2

    full = image.size if hasattr(image, "size") and not isinstance(image, np.ndarray) else (image.shape[1], image.shape[0])
    # Nothing finer than the energy plane is compared, so the image is box-reduced first (a whole
    # factor, down to that plane's side): most of the cost of a large image is gone before luma.
    reduced = _reduced(image, reduce_to=ENERGY_SIDE)
    plane = np.asarray(reduced.convert("L"))  # its colour is read only for a match (_chroma_worst)
    h, w = plane.shape
    if (w, h) != tuple(full):
        scale = None if scale is None else scale * w / full[0]
        ratio = w / full[0]
    else:
        ratio = 1.0
    thumb = signed.thumbnail
    th, tw = thumb.shape
    if scale is None or not np.isfinite(scale) or scale <= 0:
        scale_w, scale_h = w / signed.width, h / signed.height
        scale = scale_w if abs(scale_w - scale_h) <= 0.02 * max(scale_w, scale_h) else max(scale_w, scale_h)
    k = tw / signed.width  # thumbnail pixels per signed pixel
    rw, rh = w / scale * k, h / scale * k
    changes: list[str] = []
    if abs(scale / ratio - 1) > 0.02:
        changes.append("resized")
    window = (0.0, 0.0, float(tw), float(th))  # the region in thumbnail pixels
    reference: np.ndarray
    probe: np.ndarray
    if rw >= WHOLE * tw and rh >= WHOLE * th:
        region = (0, 0, signed.width, signed.height)
        reference, probe = thumb.astype(np.float32), _resize(plane, tw, th).astype(np.float32)
    else:
        cw, ch = min(tw, max(8, round(rw))), min(th, max(8, round(rh)))
        probe8 = _resize(plane, cw, ch)
        scores = cv2.matchTemplate(thumb, probe8, cv2.TM_CCOEFF_NORMED)
        _, _, _, (x, y) = cv2.minMaxLoc(scores)
        fx, fy = x + _vertex(scores, x, y, axis=1), y + _vertex(scores, x, y, axis=0)
        centre = (fx + (cw - 1) / 2, fy + (ch - 1) / 2)
        reference = cv2.getRectSubPix(thumb.astype(np.float32), (cw, ch), centre)
        probe = probe8.astype(np.float32)
        region = (round(fx / k), round(fy / k), round(cw / k), round(ch / k))
        window = (fx, fy, float(cw), float(ch))
        changes.append("cropped")
    # A light blur on both sides: a thumbnail of fine texture aliases, and a sub-pixel shift of it
    # would otherwise read as a change of content.
    reference = cv2.GaussianBlur(reference, (0, 0), 0.6)
    probe = cv2.GaussianBlur(probe, (0, 0), 0.6)
    distance = hamming(pdq(np.clip(reference, 0, 255).astype(np.uint8)), pdq(np.clip(probe, 0, 255).astype(np.uint8)))
    correlation, agreeing, edited_box, tone, worst = _agreement(reference, probe)
    whole_match = distance <= MATCH_DISTANCE and correlation >= MATCH_CORRELATION
    edited_match = (agreeing >= MIN_AGREEING and edited_box <= MAX_EDITED_BOX
                    and correlation >= EDITED_CORRELATION)
    matched = whole_match or edited_match
    local = None
    if matched and signed.detailed:
        # The window was matched with a probe rounded to whole thumbnail pixels: its centre is
        # where the image sits, its size is the scale's.
        # A whole image is the whole signed image, whatever the watermark's scale estimate says.
        cx, cy = (window[0] + window[2] / 2) / k, (window[1] + window[3] / 2) / k
        whole = region == (0, 0, signed.width, signed.height)
        local = _local_edits(signed, plane, (0.0, 0.0, float(signed.width), float(signed.height)) if whole
                             else (cx - w / scale / 2, cy - h / scale / 2, w / scale, h / scale))
    if matched:
        if tone:
            changes.append("tone changed")
        colour = _chroma_worst(signed, _chroma(reduced), window)
        if (agreeing < 1.0 or worst > EDIT_FLAG or colour > CHROMA_EDIT
                or (local is not None and (local["detail_cells"] or local["structure_blocks"]))):
            changes.append("locally edited")
    else:
        colour = 0.0
    return Comparison(matched=matched, distance=distance, correlation=correlation, changes=changes, region=region,
                      agreeing=agreeing, worst_block=worst, worst_chroma=colour, local=local,
                      resolution=_resolution(signed))


def _resolution(signed: Fingerprint) -> int:
    """The side (signed pixels) of the smallest area the comparison looks at on its own: an edit
    smaller than this, or one that keeps an area's structure and detail, can pass unseen."""
    if signed.detailed:
        return max(1, round(max(ENERGY_CELL * signed.width / (ENERGY_SIDE * signed.width / max(signed.width, signed.height)),
                                FINE_BLOCK * max(signed.width, signed.height) / FINE_SIDE)))
    return max(1, round(EDIT_BLOCK * max(signed.width, signed.height) / THUMB_SIDE))


def _local_edits(signed: Fingerprint, plane: np.ndarray, region: tuple[float, float, float, float]) -> dict[str, Any]:
    """Local changes the coarse comparison cannot see, over ``region`` (x, y, w, h in signed
    pixels: where ``plane`` sits in the signed image).

    Two checks, both after the image-wide change is factored out (so a resize, JPEG, a light blur
    or a tone change is not an edit): the structure of the finer thumbnail per block (a mirrored,
    inverted or pasted region) and the detail energy per cell (a blurred face, drawn text, a patch
    of other texture).
    """
    import cv2

    if signed.fine is None or signed.energy is None:
        raise ValueError("the fingerprint has no finer binding (see Fingerprint.detailed)")
    rx, ry, rw, rh = region
    fine = signed.fine.astype(np.float32)
    kf = fine.shape[1] / signed.width
    cw, ch = max(8, round(rw * kf)), max(8, round(rh * kf))
    probe = cv2.GaussianBlur(_resize(plane, cw, ch).astype(np.float32), (0, 0), FINE_BLUR)
    # The probe was resampled to whole pixels: the reference is sampled at exactly its scale (a
    # rounding of half a pixel over the width would read as a change at the edges).
    zx, zy = cw / (rw * kf), ch / (rh * kf)
    x0, y0 = rx * kf, ry * kf
    reference = _window(fine, x0, y0, zx, zy, cw, ch)
    # Phase correlation takes the coarse alignment's shift below a tenth of a pixel: at this scale
    # a third of a pixel on a sharp edge already reads as a change of structure. OpenCV pads to a
    # fast DFT size, which moves the peak by half a pixel, so it gets a window of such a size (and
    # copies: it windows its inputs in place).
    nw, nh = _dft_size(cw), _dft_size(ch)
    ox, oy = (cw - nw) // 2, (ch - nh) // 2
    smoothed = cv2.GaussianBlur(reference, (0, 0), FINE_BLUR)
    (sx, sy), _ = cv2.phaseCorrelate(probe[oy:oy + nh, ox:ox + nw].copy(), smoothed[oy:oy + nh, ox:ox + nw].copy(),
                                     cv2.createHanningWindow((nw, nh), cv2.CV_32F))
    dx = dy = 0.0
    if abs(sx) < 3 and abs(sy) < 3:
        dx, dy = sx / zx, sy / zy
        reference = cv2.GaussianBlur(_window(fine, x0 + dx, y0 + dy, zx, zy, cw, ch), (0, 0), FINE_BLUR)
    else:
        reference = smoothed
    structure = _block_residuals(reference, probe, FINE_BLOCK)
    if rw < WHOLE * signed.width or rh < WHOLE * signed.height:
        structure = structure[1:-1, 1:-1]  # a crop's edge blocks are part resampled border
    structure_blocks = int((structure > FINE_EDIT).sum())

    # Detail energy, in the signed energy plane's frame: the test plane resampled to its scale,
    # its detail placed where the region sits (shifted by the finer alignment), then averaged per cell.
    signed_energy = _dequantise(signed.energy)
    eh, ew = signed.energy.shape
    frame_w, frame_h = _thumb_size(signed.width, signed.height, ENERGY_SIDE)
    ke = frame_w / signed.width
    pw, ph = max(8, round(rw * ke)), max(8, round(rh * ke))
    probe_e = _resize(plane, pw, ph)
    # Where the tone change clipped the copy to black or white, its detail is gone for a reason
    # that is not an edit (a brightness change): those cells are not compared.
    # (Most copies have no such pixel: then the mask is not placed, its cells are all zero.)
    clipped_pixels = (probe_e >= 250) | (probe_e <= 5)
    left, top = (rx + dx / kf) * ke, (ry + dy / kf) * ke
    shift = np.array([[1, 0, left], [0, 1, top]], dtype=np.float32)
    layers = np.dstack([detail(probe_e), clipped_pixels.astype(np.float32)]) if clipped_pixels.any() else detail(probe_e)
    placed = cv2.warpAffine(layers, shift, (frame_w, frame_h), flags=cv2.INTER_LINEAR)
    if placed.ndim == 3:
        test_energy = _cells(placed[..., 0], ENERGY_CELL)[:eh, :ew]
        clipped = _cells(placed[..., 1], ENERGY_CELL)[:eh, :ew]
    else:
        test_energy = _cells(placed, ENERGY_CELL)[:eh, :ew]
        clipped = np.zeros_like(test_energy)
    # Cells inside the region by a margin: the band-pass of a crop's edge is not content.
    edge = 4
    xs, ys = np.arange(ew) * ENERGY_CELL, np.arange(eh) * ENERGY_CELL
    inside_x = (xs >= left + edge) & (xs + ENERGY_CELL <= left + pw - edge) if pw < frame_w - 1 else np.ones(ew, bool)
    inside_y = (ys >= top + edge) & (ys + ENERGY_CELL <= top + ph - edge) if ph < frame_h - 1 else np.ones(eh, bool)
    covered = inside_y[:, None] & inside_x[None, :] & (clipped < 0.3)
    changed = np.zeros_like(covered)
    if covered.sum() >= 4:
        ratio = np.log2(test_energy + ENERGY_FLOOR) - np.log2(signed_energy + ENERGY_FLOOR)
        deviation = ratio - float(np.median(ratio[covered]))
        changed = covered & (np.abs(deviation) > ENERGY_EDIT)
    detail_cells = int(changed.sum())
    return {"detail_cells": detail_cells, "detail_changed": detail_cells / max(1, int(covered.sum())),
            "structure_blocks": structure_blocks, "worst_structure": float(structure.max()) if structure.size else 0.0}


def _dft_size(n: int) -> int:
    """The largest size up to ``n`` that OpenCV's DFT takes without padding."""
    import cv2

    while n > 1 and cv2.getOptimalDFTSize(n) != n:
        n -= 1
    return n


def _window(plane: np.ndarray, x0: float, y0: float, zx: float, zy: float, width: int, height: int) -> np.ndarray:
    """``plane`` resampled so that its point (``x0``, ``y0``) (pixel edges, not centres) lands on
    the output's top-left corner and one of its pixels spans ``zx`` x ``zy`` output pixels."""
    import cv2

    inverse = np.array([[1 / zx, 0, x0 + 0.5 / zx - 0.5], [0, 1 / zy, y0 + 0.5 / zy - 0.5]], dtype=np.float32)
    return cv2.warpAffine(plane, inverse, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def _block_residuals(reference: np.ndarray, probe: np.ndarray, block: int) -> np.ndarray:
    """Per-block mean residual of ``probe`` against ``reference`` after a robust gain and offset
    fit (clipped to 0-255, as a brightness change clips), as a share of the reference's contrast."""
    h, w = reference.shape
    hb, wb = h // block, w // block
    if not hb or not wb:
        return np.zeros((0, 0), dtype=np.float32)
    a = reference[:hb * block, :wb * block]
    b = probe[:hb * block, :wb * block]
    spread = float(a.std()) or 1.0
    # The fit is made on every fourth pixel (a quarter of the cost, the same line); clipped pixels
    # of the copy say nothing about the gain (a brightness change clips highlights). Contiguous
    # copies: every step below reads them whole.
    sa, sb = np.ascontiguousarray(a[::2, ::2]), np.ascontiguousarray(b[::2, ::2])
    unclipped = (sb > 5) & (sb < 250)
    keep = unclipped if unclipped.mean() > 0.5 else np.ones(sa.shape, dtype=bool)
    variance = float(sa.var())
    for _ in range(2):
        x, y = sa[keep], sb[keep]
        spread_x = x.var() if x.size >= 16 else 0.0
        if spread_x == 0:  # too few pixels, or no contrast to fit a gain on
            return np.full((1, 1), np.inf, dtype=np.float32)
        mean_x, mean_y = x.mean(), y.mean()
        gain = float(((x - mean_x) * (y - mean_y)).mean() / spread_x)
        offset = float(mean_y - gain * mean_x)
        residual = np.abs(sb - np.clip(gain * sa + offset, 0, 255))
        # Refit without the worst tenth (an edit must not drag the fit), unless what is left has
        # lost the image's range of tones (a flat illustration: the fit would be undetermined).
        refit = (residual <= np.quantile(residual, 0.9)) & keep
        if float(sa[refit].var()) < 0.25 * variance:
            break
        keep = refit
    residual = np.abs(b - np.clip(gain * a + offset, 0, 255))
    return _block_means(residual, block) / (max(abs(gain), 0.05) * spread)


def _chroma_worst(signed: Fingerprint, crcb: np.ndarray, window: tuple[float, float, float, float]) -> float:
    """The largest 2x2-block chroma residual (8-bit units, after a gain and offset per channel)
    between the signed chroma thumbnail's ``window`` (in luma-thumbnail pixels) and the image."""
    import cv2

    if signed.chroma is None:
        return 0.0
    x, y, w, h = (v / 2 for v in window)
    cw, ch = max(2, round(w)), max(2, round(h))
    worst = 0.0
    # Both channels resized in one call (OpenCV works channel by channel, with the same arithmetic).
    probes = _resize(crcb, cw, ch).astype(np.float32)
    for channel in range(2):
        reference = cv2.getRectSubPix(signed.chroma[..., channel].astype(np.float32), (cw, ch), (x + (w - 1) / 2, y + (h - 1) / 2))
        a, b = reference - 128, probes[..., channel] - 128
        gain = float((a * b).sum() / ((a * a).sum() or 1.0))
        gain = min(max(gain, 0.5), 2.0)
        residual = np.abs(b - gain * a)
        residual -= float(np.median(residual))
        bh, bw = ch // 2, cw // 2
        if bh and bw:
            blocks = residual[:bh * 2, :bw * 2].reshape(bh, 2, bw, 2).mean(axis=(1, 3))
            worst = max(worst, float(blocks.max()))
    return worst


def _vertex(scores: np.ndarray, x: int, y: int, axis: int) -> float:
    """Sub-pixel offset of a correlation peak along one axis (a parabola through three samples)."""
    line = scores[y, :] if axis == 1 else scores[:, x]
    i = x if axis == 1 else y
    if i <= 0 or i >= line.size - 1:
        return 0.0
    left, centre, right = float(line[i - 1]), float(line[i]), float(line[i + 1])
    curvature = left - 2 * centre + right
    return float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5)) if curvature < 0 else 0.0


def _agreement(reference: np.ndarray, probe: np.ndarray) -> tuple[float, float, float, bool, float]:
    """(correlation over the agreeing blocks, share of blocks agreeing, share of the area inside the
    bounding box of the disagreeing blocks, whether tone changed, the worst block's residual).

    Gain and offset are fitted on block means, first on all blocks, then on the better half, then on
    the blocks within :data:`EDIT_RESIDUAL` of the image's contrast, so a caption band or a drawn box
    neither drags the fit nor hides the rest. Unrelated images have no fit to begin with: few blocks
    agree, and those that do not are scattered rather than one compact region.
    """
    h, w = reference.shape
    hb, wb = max(1, h // EDIT_BLOCK), max(1, w // EDIT_BLOCK)
    bh, bw = h // hb, w // wb
    a = reference[:hb * bh, :wb * bw].reshape(hb, bh, wb, bw).transpose(0, 2, 1, 3).reshape(hb * wb, bh * bw)
    b = probe[:hb * bh, :wb * bw].reshape(hb, bh, wb, bw).transpose(0, 2, 1, 3).reshape(hb * wb, bh * bw)
    spread = float(a.std()) or 1.0
    keep = np.ones(hb * wb, dtype=bool)
    gain = offset = 0.0
    for step in range(3):
        x, y = a[keep].ravel(), b[keep].ravel()
        spread_x = x.var() if x.size >= 16 else 0.0
        if spread_x == 0:
            return 0.0, 0.0, 1.0, False, float("inf")
        mean_x, mean_y = x.mean(), y.mean()
        gain = float(((x - mean_x) * (y - mean_y)).mean() / spread_x)
        offset = float(mean_y - gain * mean_x)
        residual = np.abs(b - (gain * a + offset)).mean(axis=1) / (max(abs(gain), 0.05) * spread)
        keep = residual <= (np.median(residual) if step == 0 else EDIT_RESIDUAL)
        if not keep.any():
            return 0.0, 0.0, 1.0, False, float("inf")
    correlation = _correlation(a[keep], b[keep])
    worst = float(residual.max())
    bad = ~keep.reshape(hb, wb)
    if bad.any():
        rows, cols = np.flatnonzero(bad.any(axis=1)), np.flatnonzero(bad.any(axis=0))
        box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1) / (hb * wb)
    else:
        box = 0.0
    tone = abs(gain - 1) > 0.1 or abs(offset + (gain - 1) * float(a.mean())) > 0.1 * 255
    return correlation, float(keep.mean()), float(box), tone, worst


def thumbnail_png(signed: Fingerprint) -> bytes:
    """The thumbnail as a small greyscale PNG (the registry's copy, for listing; never compared against)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(signed.thumbnail, dtype=np.uint8), "L").save(buffer, "PNG", optimize=True)
    return buffer.getvalue()
