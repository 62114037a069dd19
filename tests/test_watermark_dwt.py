"""The vectorised dwtDct/dwtDctSvd code against invisible-watermark itself, and the sdmark payload."""

from __future__ import annotations

import numpy as np
import pytest

from sdmark.plugins.watermark import dwt, payload
from sdmark.plugins.watermark.calibration import graphics, photos

imwatermark = pytest.importorskip("imwatermark")

IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "brick", "logo", "page",
          "hubble_deep_field", "retina", "colorwheel")


def _bgr(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _library_block_scores(rgb: np.ndarray, method: str) -> np.ndarray:
    """invisible-watermark's own per-block scores: decode with one bit per block."""
    blocks = dwt.capacity(rgb.shape[0] // 4 * 4, rgb.shape[1] // 4 * 4)
    return np.asarray(imwatermark.WatermarkDecoder("bits", blocks).decode(_bgr(rgb), method), dtype=np.uint8)


@pytest.fixture(scope="module")
def real_images() -> list[tuple[str, np.ndarray]]:
    images = []
    for name, rgb in photos(IMAGES):
        images.append((name, rgb))
        images.append((f"{name}+crop", np.ascontiguousarray(rgb[3:-2, 5:-1])))  # odd size, shifted grid
    assert len(images) >= 20
    return images


@pytest.mark.parametrize("method", ["dwtDct", "dwtDctSvd"])
def test_block_scores_equal_the_library_on_real_images(real_images, method):
    compared = differing = 0
    # The library's dwtDctSvd decoder takes ~0.2 s an image: fewer images for it.
    for name, rgb in real_images if method == "dwtDct" else real_images[:10]:
        ours = dwt.block_scores(dwt.haar_ll(dwt.u_plane(rgb)), method)
        theirs = _library_block_scores(rgb, method)
        assert ours.shape == theirs.shape, name
        compared += ours.size
        differing += int((ours != theirs).sum())
    assert compared > (100_000 if method == "dwtDct" else 30_000)
    # Only float rounding exactly at a decision boundary may differ: rarer than 1 in 10,000.
    assert differing <= compared // 10_000, f"{differing} of {compared} block scores differ"


@pytest.mark.parametrize("length", [32, 48, 64, 136, 152])
def test_message_bits_equal_the_library(real_images, length):
    for name, rgb in real_images[:6]:
        theirs = np.asarray(imwatermark.WatermarkDecoder("bits", length).decode(_bgr(rgb), "dwtDct"), dtype=bool)
        ours = dwt.bits_from_scores(dwt.block_scores(dwt.haar_ll(dwt.u_plane(rgb)), "dwtDct"), length)
        assert np.array_equal(ours, theirs), name


def test_haar_band_is_bit_identical_to_pywavelets(photos):
    import pywt

    u = dwt.u_plane(np.asarray(photos["coffee"]))
    cropped = u[: u.shape[0] // 4 * 4, : u.shape[1] // 4 * 4]
    assert np.array_equal(dwt.haar_ll(u), pywt.dwt2(cropped, "haar")[0])


def test_top_singular_value_matches_lapack_including_degenerate_blocks():
    rng = np.random.default_rng(3)
    blocks = np.concatenate([
        rng.normal(200, 20, (500, 4, 4)),
        np.zeros((3, 4, 4)),
        np.tile(np.array([[1.0, -1], [-1, 1]]), (2, 2))[None] * 40,  # checkerboard: mean-free
        np.eye(4)[None] * 7.0,  # four equal singular values
    ])
    ours = dwt.top_singular(blocks)
    np.testing.assert_allclose(ours, np.linalg.svd(blocks, compute_uv=False)[:, 0], rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("method", ["dwtDct", "dwtDctSvd"])
def test_our_embedder_reads_back_with_the_library(photos, method):
    rgb = np.asarray(photos["chelsea"])
    bits = np.random.default_rng(5).integers(0, 2, 152)
    marked = dwt.embed(rgb, bits, method)
    theirs = np.asarray(imwatermark.WatermarkDecoder("bits", 152).decode(_bgr(marked), method), dtype=int)
    assert np.array_equal(theirs, bits)
    psnr = 10 * np.log10(255**2 / np.mean((marked.astype(float) - rgb) ** 2))
    assert psnr > 38  # the library's own embedder gets ~37 dB on these photos


def test_dwtdctsvd_marks_saturated_flat_colours():
    for colour in [(255, 255, 255), (0, 0, 255), (255, 255, 0), (0, 0, 0)]:
        rgb = np.full((256, 256, 3), colour, np.uint8)
        bits = payload.encode(bytes(8), "dwtDctSvd")
        marked = dwt.embed(rgb, bits, "dwtDctSvd")
        read = dwt.bits_from_scores(dwt.block_scores(dwt.haar_ll(dwt.u_plane(marked)), "dwtDctSvd"), 152)
        assert payload.decode(read, "dwtDctSvd") is not None, colour


# -- the payload ---------------------------------------------------------------------------------


def test_payload_round_trip_and_error_correction():
    ident = bytes.fromhex("0123456789abcdef")
    bits = payload.encode(ident, "dwtDctSvd")
    assert bits.size == payload.LENGTH == 152
    found = payload.decode(bits, "dwtDctSvd")
    assert found.hex == "0123456789abcdef" and found.corrected == 0
    damaged = bits.copy()
    flips = np.random.default_rng(1).choice(152, size=8, replace=False)
    damaged[flips] ^= 1
    fixed = payload.decode(damaged, "dwtDctSvd")
    assert fixed.ident == ident and fixed.corrected == 8
    assert fixed.p_value > found.p_value
    assert fixed.p_value <= payload.false_positive_bound() < 1e-6
    # Another method's tag is not accepted: a payload is only read as what embedded it.
    assert payload.decode(bits, "dwtDct") is None


def test_payload_too_damaged_is_not_found():
    bits = payload.encode(bytes(8), "dwtDct")
    damaged = bits.copy()
    damaged[np.random.default_rng(2).choice(152, size=20, replace=False)] ^= 1
    assert payload.decode(damaged, "dwtDct") is None


def test_false_positive_bound_on_paper():
    assert payload.false_positive_bound() == pytest.approx(2.0e-14, rel=0.01)
    assert payload.false_positive_bound(methods=2) < 1e-6
    # Even without header and CRC (2^88 codewords) BCH alone stays under 1e-6.
    from math import comb

    assert sum(comb(152, i) for i in range(9)) * 2.0 ** (88 - 152) < 1e-6


def test_structured_and_random_reads_never_decode():
    structured = [np.zeros(152, np.uint8), np.ones(152, np.uint8), np.arange(152) % 2, (np.arange(152) // 4) % 2]
    for bits in structured:
        for method in payload.METHOD_TAGS:
            assert payload.decode(np.asarray(bits, np.uint8), method) is None
    rng = np.random.default_rng(11)
    hits = sum(payload.decode(rng.integers(0, 2, 152, dtype=np.uint8), "dwtDctSvd") is not None for _ in range(20_000))
    assert hits == 0


def test_payload_ids():
    assert payload.parse_id("abc") == bytes.fromhex("0000000000000abc")
    assert payload.parse_id("0xFFFFFFFFFFFFFFFF") == b"\xff" * 8
    assert len(payload.parse_id("auto")) == 8 and payload.parse_id("auto") != payload.parse_id("auto")
    for bad in ("xyz", "1" * 17, "12 34"):
        with pytest.raises(ValueError):
            payload.parse_id(bad)


def test_graphics_corpus_is_varied():
    names = [name for name, _ in graphics()]
    assert any(n.startswith("flat") for n in names) and any(n.startswith("checker") for n in names)
