"""The DWT schemes' verdicts are those of the readers they replaced, to the last bit of the p-value.

``tests/data/dwt_verdicts.json`` holds what the earlier readers (block copies, argmax per block, one
gather per null length) said about each image below: every default fixed-message and sdmark DWT
scheme's p-value, band, payload and matched (or corrected) bits. The images are photos scikit-image
ships as PNG, marks made by invisible-watermark's own encoder (on uint8 images) and by ours, the same
weakened by noise (so that p-values fall between the bands), and periodic, tiled images made with numpy
alone (where the dependence-adjusted null does the work): no lossy codec or float colour conversion, so
the pixels do not depend on library builds. Regenerate with
``python tests/test_watermark_verdicts_unchanged.py --write`` only when a verdict is meant to change.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

EXPECTED = Path(__file__).parent / "data" / "dwt_verdicts.json"
SDXL_BITS = [int(b) for b in bin(0xB3EC907BB19E)[2:]]


def _photos() -> dict[str, np.ndarray]:
    from skimage import data

    return {name: np.ascontiguousarray(getattr(data, name)()[:, :, :3]) for name in ("astronaut", "coffee", "chelsea")}


def _noisy(rgb: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, rgb.shape)
    return np.clip(np.rint(rgb + noise), 0, 255).astype(np.uint8)


def _tool_marks(photos: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    """Marks as the tools make them, with invisible-watermark's encoder (see test_watermark_detect)."""
    import cv2
    from imwatermark import WatermarkEncoder

    for (name, rgb), text in zip(photos.items(), ("StableDiffusionV1", "SDV2", "InvokeAI")):
        encoder = WatermarkEncoder()
        encoder.set_watermark("bytes", text.encode())
        marked = cv2.cvtColor(encoder.encode(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), "dwtDct"), cv2.COLOR_BGR2RGB)
        yield f"{name}+{text}", marked
        for sigma in (6.0, 10.0):
            yield f"{name}+{text}+noise{sigma:g}", _noisy(marked, sigma, 1)
        yield f"{name}+{text}+crop", np.ascontiguousarray(marked[2:, 1:])
    # SDXL's bits from a uint8 BGR image: integer colour conversions only. (Its tools embed in float
    # images, through OpenCV's float conversion, whose last bits may differ between CPUs; the float
    # readings are still compared on every image here, and test_watermark_detect finds those marks.)
    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", SDXL_BITS)
    marked = cv2.cvtColor(encoder.encode(cv2.cvtColor(photos["astronaut"], cv2.COLOR_RGB2BGR), "dwtDct"), cv2.COLOR_BGR2RGB)
    yield "astronaut+sdxl-uint8", marked
    for sigma in (6.0, 10.0):
        yield f"astronaut+sdxl-uint8+noise{sigma:g}", _noisy(marked, sigma, 2)


def _sdmark_marks(photos: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    from sdmark.plugins.watermark import dwt, payload

    for method, name in (("dwtDct", "coffee"), ("dwtDctSvd", "chelsea")):
        marked = dwt.embed(photos[name], payload.encode(bytes(range(8)), method), method)
        yield f"{name}+sdmark-{method}", marked
        for sigma in (8.0, 14.0):
            yield f"{name}+sdmark-{method}+noise{sigma:g}", _noisy(marked, sigma, 3)


def _periodic(count: int = 24, seed: int = 5) -> Iterator[tuple[str, np.ndarray]]:
    """Tiled photo crops and gratings, checkers and stripes of random period, angle and colours."""
    rng = np.random.default_rng(seed)
    sources = list(_photos().values())
    for i in range(count):
        h, w = (int(v) for v in rng.integers(256, 385, 2))
        if i % 2 == 0:
            src = sources[i % len(sources)]
            th, tw = (int(v) for v in rng.integers(8, 97, 2))
            top, left = int(rng.integers(0, src.shape[0] - th)), int(rng.integers(0, src.shape[1] - tw))
            tiled = np.tile(src[top:top + th, left:left + tw], (h // th + 2, w // tw + 2, 1))
            dy, dx = int(rng.integers(0, th)), int(rng.integers(0, tw))
            yield f"tiled{i}", np.ascontiguousarray(tiled[dy:dy + h, dx:dx + w])
            continue
        period, angle = float(rng.uniform(2, 48)), float(rng.uniform(0, np.pi))
        yy, xx = np.mgrid[:h, :w]
        u = xx * np.cos(angle) + yy * np.sin(angle)
        v = -xx * np.sin(angle) + yy * np.cos(angle)
        kind = ("grating", "checker", "stripes")[i // 2 % 3]
        if kind == "grating":
            t = 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
        elif kind == "checker":
            t = (np.floor(u / period) + np.floor(v / period)) % 2
        else:
            t = np.floor(u / period) % 2
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        yield f"{kind}{i}", np.clip(np.rint(a + (b - a) * t[..., None]), 0, 255).astype(np.uint8)


def images() -> Iterator[tuple[str, np.ndarray]]:
    from PIL import Image

    photos = _photos()
    for name, rgb in photos.items():
        yield name, rgb
        yield f"{name}+crop", np.ascontiguousarray(rgb[3:, 5:])
    yield from _tool_marks(photos)
    yield from _sdmark_marks(photos)
    yield from _periodic()
    for file in ("grating-binomial-false-positive.png", "vertical-grating-binomial-false-positive.png"):
        yield file, np.asarray(Image.open(Path(__file__).parent / "data" / file).convert("RGB"))


def verdicts() -> dict[str, dict[str, list | None]]:
    """Per image, per scheme: ``[p_value, band, payload, matched or corrected bits]`` (``None``: too small)."""
    from sdmark.plugins.watermark.schemes import ImageView, builtin_schemes

    schemes = [s for s in builtin_schemes() if not s.costly and s.name != "sdmark"]
    out: dict[str, dict[str, list | None]] = {}
    for name, rgb in images():
        view = ImageView(rgb)
        found = {s.name: s.detect(view) for s in schemes}
        out[name] = {scheme: None if d is None else [d.p_value, d.band, d.payload, d.details.get("matched_bits", d.details.get("corrected_bits"))]
                     for scheme, d in found.items()}
    return out


def test_dwt_schemes_give_the_verdicts_of_the_readers_they_replaced():
    pytest.importorskip("imwatermark")
    expected = json.loads(EXPECTED.read_text())
    found = verdicts()
    assert sorted(found) == sorted(expected)
    # the set is worth checking: marks at every strength, unmarked images near the partial band
    bands = {entry[1] for image in expected.values() for entry in image.values() if entry}
    assert {"very likely", "likely", "partial", "none"} <= bands
    for name in expected:
        assert found[name] == expected[name], name


def test_votes_at_many_lengths_equal_one_length_at_a_time():
    from sdmark.plugins.watermark import dwt
    from sdmark.plugins.watermark.schemes import null_lengths

    rng = np.random.default_rng(9)
    for count in (1, 31, 137, 4096, 4099):
        for n in (32, 48, 136):
            scores = (rng.random(count) < rng.uniform(0.2, 0.8)).astype(np.uint8)
            together = dwt.bits_at_lengths(scores, null_lengths(n), n)
            alone = [np.pad(dwt.bits_from_scores(scores, length), (0, max(0, n - length)))[:n]
                     for length in null_lengths(n)]
            assert np.array_equal(together, np.array(alone)), (count, n)
            stack = np.stack([scores, 1 - scores, np.roll(scores, 5)])  # readings of one image, at once
            assert np.array_equal(dwt.bits_at_lengths(stack, null_lengths(n), n),
                                  [dwt.bits_at_lengths(row, null_lengths(n), n) for row in stack])


def test_dct_scores_from_block_extremes_equal_the_blockwise_argmax():
    """Including the cases an argmax would break ties in and values exactly on a step boundary."""
    from sdmark.plugins.watermark import dwt

    rng = np.random.default_rng(2)
    bands = [dwt.haar_ll(dwt.u_plane(rgb, order)) for rgb in _photos().values() for order in ("bgr", "rgb")]
    bands.append(rng.choice([0.0, 18.0, 54.0, 255.0, 273.0, 237.0, 510.0], size=(66, 130)))  # ties, boundaries
    bands.append(np.round(rng.uniform(0, 510, (64, 64)) * 2) / 2)  # half-integers, as uint8 planes give
    for ll in bands:
        blocks = dwt.to_blocks(ll)
        for offset in (0.0, dwt.FLOAT_OFFSET, 127.5):
            old = dwt.scores_of_blocks(blocks - offset if offset else blocks, "dwtDct")
            assert np.array_equal(dwt.dct_scores(dwt.dct_extremes(ll), offset), old), offset


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_watermark_verdicts_unchanged.py --write")
    EXPECTED.write_text(json.dumps(verdicts(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {EXPECTED}", file=sys.stderr)
