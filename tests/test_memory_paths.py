"""Large images are handled in strips: the same numbers as the whole-image computation, less memory.

The figures per pixel are measured by benchmarks/memory.py; here, that each memory-saving path
gives exactly what the straightforward one gives, and (tracemalloc, deterministic) that the strip
path does not allocate whole-image float copies.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from PIL import Image
from sdmark.plugins.watermark import dwt, spectral
from sdmark.plugins.watermark import spectral_sync as sync
from sdmark.plugins.watermark.schemes import MEMO_BLOCKS_PIXELS, ImageView, rgb_array


@pytest.fixture(scope="module")
def large(photos) -> np.ndarray:
    """A real photo just over the size where block scores go strip by strip (odd sizes on purpose)."""
    image = photos["astronaut"].resize((1203, 1010), Image.Resampling.BICUBIC)
    rgb = np.asarray(image)
    assert rgb.shape[0] * rgb.shape[1] > MEMO_BLOCKS_PIXELS
    return rgb


@pytest.mark.parametrize("method, order, offset", [("dwtDct", "bgr", 0.0), ("dwtDct", "rgb", dwt.FLOAT_OFFSET),
                                                   ("dwtDctSvd", "bgr", 0.0)])
def test_block_scores_in_strips_equal_the_whole_image(large, method, order, offset):
    whole = dwt.to_blocks(dwt.haar_ll(dwt.u_plane(large, order)))
    expected = dwt.scores_of_blocks(whole - offset if offset else whole, method)
    assert np.array_equal(ImageView(large).block_scores(method, order, offset), expected)


def test_block_scores_in_strips_allocate_no_whole_image_copy(photos):
    tall = np.asarray(photos["astronaut"].resize((600, 7200), Image.Resampling.BICUBIC))
    view = ImageView(tall)
    tracemalloc.start()
    try:
        view.block_scores("dwtDct", "bgr")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The whole-image way peaks at ~15 bytes per pixel (YUV, a float64 copy, row pairs); strips of
    # about half a megapixel stay well under that.
    assert peak < 4 * tall.shape[0] * tall.shape[1], peak


def test_spectral_luma_of_the_window_is_the_window_of_the_luma(large):
    assert np.array_equal(spectral.luminance(sync.window(large)), sync.window(spectral.luminance(large)))


def test_psnr_in_integer_strips_equals_the_float_mean(large):
    from sdmark.plugins.watermark.stage import _psnr

    rng = np.random.default_rng(1)
    marked = np.clip(large.astype(np.int16) + rng.integers(-3, 4, size=large.shape), 0, 255).astype(np.uint8)
    mse = float(np.mean((large.astype(np.float64) - marked) ** 2))
    assert _psnr(large, marked) == round(float(10.0 * np.log10(255.0**2 / mse)), 2)
    assert _psnr(large, large) is None


def test_rgb_array_copies_an_rgb_image_once(photos):
    image = photos["coffee"]
    array = rgb_array(image)
    assert array.shape == (image.height, image.width, 3) and np.array_equal(array, np.asarray(image))
    rgba = image.convert("RGBA")
    assert np.array_equal(rgb_array(rgba), array)
    assert np.shares_memory(rgb_array(array), array)  # an array is taken as it is


def test_rgb_array_of_a_large_image_in_strips_equals_asarray(large):
    image = Image.fromarray(large)
    assert np.array_equal(rgb_array(image), np.asarray(image))
    rgba = image.convert("RGBA")
    assert np.array_equal(rgb_array(rgba), large)
