"""Vectorised ``dwtDct`` and ``dwtDctSvd``: invisible-watermark's two frequency methods, in numpy.

Both methods work on one chroma plane, U of OpenCV's YUV (computed from the image in BGR order),
cropped to a multiple of 4, take the low-low band of a one-level Haar DWT and cut it into 4x4
blocks, row by row. Block ``k`` carries bit ``k % length``; a bit is read as the majority of its
blocks (ties read 1). Per block, with step ``SCALE = 36``:

``dwtDct``
    the coefficient with the largest magnitude, not counting the block's first one; the bit is
    ``(|c| mod 36) > 18``. (Despite the name, no DCT is taken: this is what the library does.)
``dwtDctSvd``
    the largest singular value ``s0`` of the block's 2-D DCT, which equals the block's own largest
    singular value because that DCT is orthonormal; the bit is ``(s0 mod 36) > 18``.

The library runs a Python loop over every block; here the per-block *scores* of a plane are
computed once with array operations, and any number of schemes then read bits of any length from
them (:func:`bits_from_scores`, and :func:`bits_at_lengths` for many lengths at once), so checking
five marks costs little more than checking one. ``dwtDct`` scores come from each block's largest
and smallest coefficient (:func:`dct_extremes`), which serve every offset of the band at once.
Decoded bits equal the library's (tests compare them on real photos); where they could differ is
float rounding of a value that lies exactly on a decision boundary.

Embedding quantises the same value to the centre of the half-step that encodes the bit, as the
library does, and writes the change back through the inverse Haar transform. Unlike the library it
does not swap the horizontal and vertical detail bands on the way back (which changes the image
for no purpose) and it rounds instead of truncating; its marks read back with the library's decoder.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

SCALE = 36.0
BLOCK = 4
Order = Literal["bgr", "rgb"]
"""Channel order a marking tool handed to invisible-watermark: ``bgr`` is what the library expects
(so the mark lives in the true U plane); ``rgb`` means an RGB array was passed as if it were BGR
(old diffusers SDXL releases did this)."""

FLOAT_OFFSET = 255.0
"""Low-low band offset of a mark embedded in a float image. OpenCV centres U at 128 for uint8 images
but at 0.5 for float ones, so diffusers and Stability's SDXL code, which hand invisible-watermark
float arrays in 0..255, quantise ``|U - 127.5|``-based coefficients; read back from the uint8 file
the band is 2 * 127.5 = 255 higher."""

# invisible-watermark's Haar low-pass tap; the product order below reproduces PyWavelets' rounding.
_TAP = float(np.sqrt(0.5))
# OpenCV's YUV: U = 0.492 (B - Y). Moving U by d with Y and V unchanged moves B and G only.
_DB_PER_DU = 1.0 / 0.492
_DG_PER_DU = -(0.114 / 0.587) * _DB_PER_DU


def u_plane(rgb: np.ndarray, order: Order = "bgr") -> np.ndarray:
    """The uint8 U plane the library would see for this RGB image handed over in ``order``."""
    import cv2

    code = cv2.COLOR_RGB2YUV if order == "bgr" else cv2.COLOR_BGR2YUV
    return cv2.cvtColor(np.ascontiguousarray(rgb[:, :, :3]), code)[:, :, 1]


def haar_ll(plane: np.ndarray) -> np.ndarray:
    """Low-low band of a one-level Haar DWT of ``plane`` cropped to a multiple of 4.

    Bit-identical to ``pywt.dwt2(plane, 'haar')[0]`` (same products, same order of additions).
    """
    rows, cols = plane.shape[0] // 4 * 4, plane.shape[1] // 4 * 4
    x = np.multiply(plane[:rows, :cols], _TAP, dtype=np.float64)  # convert and scale in one pass
    x = x.reshape(rows // 2, 2, cols)
    pairs = x[:, 0] + x[:, 1]
    pairs *= _TAP
    pairs = pairs.reshape(rows // 2, cols // 2, 2)
    return pairs[..., 0] + pairs[..., 1]


def to_blocks(ll: np.ndarray) -> np.ndarray:
    """``(n, 4, 4)`` blocks of ``ll`` in the library's order (row of blocks by row of blocks)."""
    rows, cols = ll.shape[0] // BLOCK, ll.shape[1] // BLOCK
    ll = ll[: rows * BLOCK, : cols * BLOCK]
    return ll.reshape(rows, BLOCK, cols, BLOCK).swapaxes(1, 2).reshape(-1, BLOCK, BLOCK)


def from_blocks(blocks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`to_blocks` for a band of ``shape`` (whole blocks only)."""
    rows, cols = shape[0] // BLOCK, shape[1] // BLOCK
    return blocks.reshape(rows, cols, BLOCK, BLOCK).swapaxes(1, 2).reshape(rows * BLOCK, cols * BLOCK)


def _max_coefficient_index(blocks: np.ndarray) -> np.ndarray:
    flat = np.abs(blocks.reshape(len(blocks), -1)[:, 1:])
    return np.argmax(flat, axis=1) + 1  # first maximum wins, as with the library's np.argmax


def dct_values(blocks: np.ndarray) -> np.ndarray:
    """Per block, the value ``dwtDct`` quantises: the largest-magnitude coefficient but the first."""
    flat = blocks.reshape(len(blocks), -1)
    return np.abs(flat[np.arange(len(flat)), _max_coefficient_index(blocks)])


def top_singular(blocks: np.ndarray, vectors: bool = False, iterations: int = 5):
    """Largest singular value of each 4x4 block (and its singular vectors when ``vectors``).

    Power iteration on ``G = B^T B`` from the all-ones vector converges in a few steps for image
    blocks, which are dominated by their mean. A block's value is accepted only with a certificate:
    if the Rayleigh quotient ``mu`` has residual ``r`` and ``2 (mu - r) > trace(G)``, the eigenvalue
    within ``r`` of ``mu`` outweighs all the others together, so it is the largest. Other blocks
    (all zero, checkerboards, ...) go to LAPACK. The arithmetic runs on ``(16, n)`` planes, one
    per matrix entry, so every step is a handful of long vector operations.
    """
    n = len(blocks)
    b = np.ascontiguousarray(blocks.reshape(n, BLOCK * BLOCK).T).reshape(BLOCK, BLOCK, n)
    gram = np.empty((BLOCK, BLOCK, n))
    for i in range(BLOCK):
        for j in range(i, BLOCK):
            gram[i, j] = b[0, i] * b[0, j] + b[1, i] * b[1, j] + b[2, i] * b[2, j] + b[3, i] * b[3, j]
            gram[j, i] = gram[i, j]

    def times_gram(x: np.ndarray) -> np.ndarray:
        return gram[:, 0] * x[0] + gram[:, 1] * x[1] + gram[:, 2] * x[2] + gram[:, 3] * x[3]

    v = np.full((BLOCK, n), 0.5)
    for _ in range(iterations):
        w = times_gram(v)
        norm = np.sqrt((w * w).sum(axis=0))
        np.divide(w, norm, out=v, where=norm > 0)
    gv = times_gram(v)
    mu = (v * gv).sum(axis=0)
    residual = np.sqrt(((gv - mu * v) ** 2).sum(axis=0))
    trace = gram[0, 0] + gram[1, 1] + gram[2, 2] + gram[3, 3]
    unsure = ~(2.0 * (mu - residual) > trace)
    s0 = np.sqrt(np.maximum(mu, 0.0))
    if not vectors:
        if unsure.any():
            s0[unsure] = np.linalg.svd(blocks[unsure], compute_uv=False)[:, 0]
        return s0
    u = b[:, 0] * v[0] + b[:, 1] * v[1] + b[:, 2] * v[2] + b[:, 3] * v[3]
    np.divide(u, s0, out=u, where=s0 > 0)
    u, v = u.T.copy(), v.T.copy()
    if unsure.any():
        uu, ss, vv = np.linalg.svd(blocks[unsure])
        s0[unsure], u[unsure], v[unsure] = ss[:, 0], uu[:, :, 0], vv[:, 0, :]
    return s0, u, v


def block_scores(ll: np.ndarray, method: str) -> np.ndarray:
    """Per-block bit scores (0/1, uint8) of a low-low band for ``dwtDct`` or ``dwtDctSvd``."""
    return band_scores(ll, method)


def scores_of_blocks(blocks: np.ndarray, method: str) -> np.ndarray:
    """Per-block bit scores (0/1, uint8) of ``(n, 4, 4)`` blocks for ``dwtDct`` or ``dwtDctSvd``."""
    if method == "dwtDct":
        values = dct_values(blocks)
    elif method == "dwtDctSvd":
        # Three steps already agree with LAPACK to ~1e-12 on photos; uncertified blocks still go to LAPACK.
        values = top_singular(blocks, iterations=3)
    else:
        raise ValueError(f"not a DWT method: {method!r}")
    return (np.mod(values, SCALE) > SCALE * 0.5).astype(np.uint8)


def bits_from_scores(scores: np.ndarray, length: int) -> np.ndarray:
    """The ``length`` bits the library would decode from these block scores (majority, ties -> 1)."""
    full = len(scores) // length * length
    ones = scores[:full].reshape(-1, length).sum(axis=0, dtype=np.int64)
    total = np.full(length, full // length, dtype=np.int64)
    rest = len(scores) - full
    ones[:rest] += scores[full:]
    total[:rest] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        # same float operations as the library: mean * 255 > 127; a bit with no block reads 0
        return np.where(total > 0, (ones / np.maximum(total, 1)) * 255 > 127, False)


def bits_at_lengths(scores: np.ndarray, lengths: tuple[int, ...], keep: int) -> np.ndarray:
    """The first ``keep`` bits :func:`bits_from_scores` gives at each of ``lengths`` (one row each):
    the same majority votes (ties -> 1). ``scores`` may be a stack ``(k, n)`` of score arrays of
    one length (several readings of one image); the result is then ``(k, len(lengths), keep)``.

    Read at length ``L``, bit ``i`` votes over blocks ``i, i + L, i + 2L, ...``: the columns of the
    scores laid out in rows of ``L``. One zero-padded copy of the scores serves every length as such
    a view, so the work is one column sum per length and the memory one copy of ``scores``.
    """
    stack = np.atleast_2d(scores)
    count = stack.shape[1]
    padded = np.zeros((len(stack), count + max(lengths)), dtype=np.int64)  # summed as stored: no cast per length
    padded[:, :count] = stack
    ones = np.empty((len(stack), len(lengths), keep), dtype=np.int64)
    for row, length in enumerate(lengths):
        rounds = -(-count // length)
        np.add.reduce(padded[:, : rounds * length].reshape(len(stack), rounds, length)[:, :, :keep], axis=1,
                      out=ones[:, row])
    # blocks behind bit i at length L: those of i, i + L, ... below count
    sizes = np.asarray(lengths, dtype=np.int64)[:, None]
    total = np.maximum(count - np.arange(keep)[None, :] + sizes - 1, 0) // sizes
    with np.errstate(invalid="ignore", divide="ignore"):
        bits = np.where(total > 0, (ones / np.maximum(total, 1)) * 255 > 127, False)
    return bits if np.ndim(scores) > 1 else bits[0]


def dct_extremes(ll: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per 4x4 block of ``ll`` (in :func:`to_blocks` order), the largest and smallest coefficient but
    the block's first one.

    ``dwtDct`` reads ``max |c - offset|`` over those coefficients, which is
    ``max(hi - offset, offset - lo)`` exactly (rounding is monotone and symmetric), so one pass over
    the band serves every offset (:func:`dct_scores`), with no block copy and no argmax.
    """
    rows, cols = ll.shape[0] // BLOCK * BLOCK, ll.shape[1] // BLOCK * BLOCK
    band = ll[:rows, :cols]
    first = band[0::BLOCK]  # each block's first row: its first coefficient is left out
    below = np.maximum(np.maximum(band[1::BLOCK], band[2::BLOCK]), band[3::BLOCK])
    hi = np.maximum(np.maximum(below[:, 0::BLOCK], below[:, 1::BLOCK]), np.maximum(below[:, 2::BLOCK], below[:, 3::BLOCK]))
    np.maximum(hi, np.maximum(np.maximum(first[:, 1::BLOCK], first[:, 2::BLOCK]), first[:, 3::BLOCK]), out=hi)
    below = np.minimum(np.minimum(band[1::BLOCK], band[2::BLOCK]), band[3::BLOCK])
    lo = np.minimum(np.minimum(below[:, 0::BLOCK], below[:, 1::BLOCK]), np.minimum(below[:, 2::BLOCK], below[:, 3::BLOCK]))
    np.minimum(lo, np.minimum(np.minimum(first[:, 1::BLOCK], first[:, 2::BLOCK]), first[:, 3::BLOCK]), out=lo)
    return hi.ravel(), lo.ravel()


def dct_scores(extremes: tuple[np.ndarray, np.ndarray], offset: float = 0.0) -> np.ndarray:
    """``dwtDct`` block scores (0/1, uint8) of the band ``extremes`` came from, less ``offset``:
    equal to :func:`scores_of_blocks` of the blocks minus ``offset``."""
    hi, lo = extremes
    values = np.maximum(hi - offset, offset - lo) if offset else np.maximum(hi, -lo)
    return (np.mod(values, SCALE) > SCALE * 0.5).astype(np.uint8)


def band_scores(ll: np.ndarray, method: str, offset: float = 0.0) -> np.ndarray:
    """Per-block bit scores (0/1, uint8) of a low-low band less ``offset``, for ``dwtDct`` or ``dwtDctSvd``."""
    if method == "dwtDct":
        return dct_scores(dct_extremes(ll), offset)
    blocks = to_blocks(ll)
    return scores_of_blocks(blocks - offset if offset else blocks, method)


def capacity(height: int, width: int) -> int:
    """Number of 4x4 blocks (bit carriers) in an image of this size."""
    return (height // 8) * (width // 8)


def _targets(values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """The library's quantiser: the centre of the half-step for the bit, in the value's own step."""
    return (values // SCALE + 0.25 + 0.5 * wanted) * SCALE


def embed(rgb: np.ndarray, bits: np.ndarray | list[int], method: str) -> np.ndarray:
    """Mark an RGB uint8 image (H, W, 3) with ``bits`` repeated over all blocks; returns a new array.

    Pixels outside the largest multiple-of-4 area, and the luma and V planes, are left alone. A
    block whose bit did not survive rounding and clipping (its pixels are saturated in the
    direction the quantiser moved it, as in pure white or pure blue areas) gets a corrected aim,
    then the neighbouring centre for the same bit on the other side, in up to three more passes.
    """
    bits = np.asarray(bits, dtype=np.float64).ravel()
    if bits.size == 0:
        raise ValueError("no bits to embed")
    ll = haar_ll(u_plane(rgb, "bgr"))
    blocks = to_blocks(ll)
    if len(blocks) == 0:
        raise ValueError("image too small to carry a mark")
    wanted = bits[np.arange(len(blocks)) % bits.size]
    if method == "dwtDct":
        flat = blocks.reshape(len(blocks), -1)
        index = _max_coefficient_index(blocks)
        rows = np.arange(len(flat))
        signed = flat[rows, index]
        values = np.abs(signed)

        def change(target: np.ndarray) -> np.ndarray:
            delta = np.zeros_like(flat)
            delta[rows, index] = np.where(signed >= 0, target, -target) - signed
            return delta.reshape(blocks.shape)
    elif method == "dwtDctSvd":
        values, u0, v0 = top_singular(blocks, vectors=True)
        directions = np.einsum("ni,nj->nij", u0, v0)

        def change(target: np.ndarray) -> np.ndarray:
            return (target - values)[:, None, None] * directions
    else:
        raise ValueError(f"not a DWT method: {method!r}")
    target = _targets(values, wanted)
    command = target.copy()
    out = _apply(rgb, ll.shape, change(command))
    for attempt in range(3):
        marked = to_blocks(haar_ll(u_plane(out, "bgr")))
        missed = scores_of_blocks(marked, method) != wanted
        if not missed.any():
            break
        if attempt == 1:
            # Still wrong after a correction: saturated pixels block this direction; go the other way.
            other = np.where(target > values, target - SCALE, target + SCALE)
            switch = missed & (other >= 0)
            target = np.where(switch, other, target)
            command = np.where(switch, other, command)
        else:
            # Rounding and clipping moved the value: aim off by what was lost.
            if method == "dwtDct":
                reached = np.abs(marked.reshape(len(marked), -1)[np.arange(len(marked)), index])
            else:
                reached = top_singular(marked)
            command = np.where(missed, command + (target - reached), command)
        out = _apply(rgb, ll.shape, change(command))
    return out


def _apply(rgb: np.ndarray, ll_shape: tuple[int, int], delta_blocks: np.ndarray) -> np.ndarray:
    """``rgb`` with a change of the U plane's low-low band (given per block) written into B and G."""
    delta_ll = np.zeros(ll_shape)
    covered = (ll_shape[0] // BLOCK * BLOCK, ll_shape[1] // BLOCK * BLOCK)
    delta_ll[: covered[0], : covered[1]] = from_blocks(delta_blocks, covered)
    # Haar synthesis: a change c of a low-low coefficient moves each of its 2x2 pixels by c / 2.
    delta_u = np.repeat(np.repeat(delta_ll * 0.5, 2, axis=0), 2, axis=1)
    out = rgb[:, :, :3].astype(np.float64)
    rows, cols = delta_u.shape
    out[:rows, :cols, 2] += delta_u * _DB_PER_DU
    out[:rows, :cols, 1] += delta_u * _DG_PER_DU
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
