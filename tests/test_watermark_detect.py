"""Detection: other tools' marks made by those tools' own code, our marks, and unmarked images."""

from __future__ import annotations

import numpy as np
import pytest

from sdmark.plugins.watermark.calibration import unmarked_corpus
from sdmark.plugins.watermark.schemes import (ImageView, band_for, binomial_tail, builtin_schemes,
                                             dependence_adjusted_tail, null_lengths)
from sdmark.plugins.watermark.verify import detect, select_schemes, verify_image

imwatermark = pytest.importorskip("imwatermark")

SDXL_BITS = [int(b) for b in bin(0xB3EC907BB19E)[2:]]


def _put_watermark_like_sd_scripts(rgb: np.ndarray, text: str) -> np.ndarray:
    """What CompVis / Stability-AI txt2img.py and InvokeAI do: RGB -> BGR, bytes, dwtDct, back to RGB."""
    import cv2

    encoder = imwatermark.WatermarkEncoder()
    encoder.set_watermark("bytes", text.encode("utf-8"))
    bgr = encoder.encode(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), "dwtDct")
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def _old_diffusers_sdxl(rgb: np.ndarray) -> np.ndarray:
    """diffusers' SDXL watermarker before the BGR fix: a float RGB array handed over as if BGR."""
    encoder = imwatermark.WatermarkEncoder()
    encoder.set_watermark("bits", SDXL_BITS)
    out = encoder.encode(rgb.astype(np.float32), "dwtDct")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _diffusers_sdxl(rgb: np.ndarray) -> np.ndarray:
    """diffusers' own StableDiffusionXLWatermarker, on a tensor the way the pipeline hands it over."""
    import torch
    from diffusers.pipelines.stable_diffusion_xl.watermark import StableDiffusionXLWatermarker

    tensor = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    out = StableDiffusionXLWatermarker().apply_watermark(tensor)
    # the pipeline's image processor: [-1, 1] -> [0, 1] -> round to uint8
    array = ((out[0].permute(1, 2, 0).numpy() / 2 + 0.5).clip(0, 1) * 255).round()
    return array.astype(np.uint8)


@pytest.fixture(scope="module")
def photo_arrays(photos):
    return {name: np.ascontiguousarray(np.asarray(image)) for name, image in photos.items()}


MARKERS = {
    "sd-v1": lambda rgb: _put_watermark_like_sd_scripts(rgb, "StableDiffusionV1"),
    "sd-v2": lambda rgb: _put_watermark_like_sd_scripts(rgb, "SDV2"),
    "invokeai": lambda rgb: _put_watermark_like_sd_scripts(rgb, "InvokeAI"),
    "sdxl": _diffusers_sdxl,
    "sdxl-old-diffusers": _old_diffusers_sdxl,
}


@pytest.mark.parametrize("tool", list(MARKERS))
def test_verify_names_the_tool_that_marked_the_image(photo_arrays, tool):
    """The tools' own dwtDct marks do not always survive their own uint8 round trip (the library's
    decoder misses them on some photos too), so: never a wrong scheme, and the right one on most."""
    expected = tool.split("-old")[0]
    named = []
    for name, rgb in photo_arrays.items():
        report = verify_image(MARKERS[tool](rgb))
        strong = [d["scheme"] for d in report["detections"] if d["band"] in ("likely", "very likely")]
        assert set(strong) <= {expected}, (tool, name, report["detections"])
        if strong:
            assert report["watermarked"] and report["detections"][0]["p_value"] < 1e-6
            named.append(name)
    assert len(named) >= 3, (tool, named)
    assert "astronaut" in named


def test_sdxl_reports_how_it_was_embedded(photo_arrays):
    new = detect(_diffusers_sdxl(photo_arrays["chelsea"]))[0]
    old = detect(_old_diffusers_sdxl(photo_arrays["astronaut"]))[0]
    assert (new.scheme, new.details["channel_order"], new.details["embedded_as"]) == ("sdxl", "bgr", "float")
    assert (old.scheme, old.details["channel_order"]) == ("sdxl", "rgb")
    # four readings: the p-value carries the Bonferroni factor
    assert new.p_value == pytest.approx(4 * 2.0**-48)


def test_fixed_message_payload_is_the_tool_message(photo_arrays):
    report = verify_image(MARKERS["sd-v1"](photo_arrays["astronaut"]))
    assert report["detections"][0]["payload"] == "StableDiffusionV1"
    assert report["detections"][0]["matched_bits"] == 136


def test_no_unmarked_image_is_reported_watermarked():
    """Photos and flat/graphic images (solid colours, gradients, checkerboards, text, noise)."""
    reported = []
    checked = 0
    for name, rgb in unmarked_corpus(quick=True):
        checked += 1
        report = verify_image(rgb)
        if report["watermarked"]:
            reported.append((name, report["detections"]))
        # unmarked images stay far from the cut: nothing even reaches "likely" by a margin of 100x
        assert all(d["p_value"] > 1e-4 for d in report["detections"]), (name, report["detections"])
    assert checked >= 60
    assert reported == []


@pytest.mark.parametrize("file", ["grating-binomial-false-positive.png", "vertical-grating-binomial-false-positive.png"])
def test_a_periodic_grating_that_fools_the_independent_bits_binomial_is_not_called_marked(file):
    """Two smooth sine gratings (found among structured unmarked images) match 96 of SD v1's 136
    bits: 8.7e-7 for independent bits, so "likely" before. Their bits are correlated (the vertical one
    repeats with period 8, as ASCII's bytes do); read at other lengths and against the message turned,
    they match just as well, and the adjusted tail says so."""
    from pathlib import Path

    from PIL import Image

    rgb = np.asarray(Image.open(Path(__file__).parent / "data" / file).convert("RGB"))
    sd_v1 = next(s for s in builtin_schemes() if s.name == "sd-v1")
    view = ImageView(rgb)
    matches = int((view.bits("dwtDct", 136) == np.asarray(sd_v1.bits, bool)).sum())
    assert binomial_tail(136, matches) < 1e-6  # what the independent-bits test alone would have said
    assert sd_v1.detect(view).p_value > 1e-3
    assert not verify_image(rgb)["watermarked"]


def test_the_dependence_adjusted_tail_is_the_binomial_for_fair_coins_and_wider_for_correlated_bits():
    from sdmark.plugins.watermark.schemes import turned_matches

    rng = np.random.default_rng(3)
    message = np.unpackbits(np.frombuffer(b"StableDiffusionV1", np.uint8)).astype(bool)
    fair = rng.integers(0, 2, 136).astype(bool)
    lengths = rng.binomial(136, 0.5, 32)
    k = int((fair == message).sum())
    fair_tail = dependence_adjusted_tail(136, k, lengths, turned_matches(fair, message), message)
    assert binomial_tail(136, k) <= fair_tail <= 1.5 * binomial_tail(136, k - 3)
    # A genuine, clean read: the message's own self-similarity (ASCII) costs it nothing.
    clean = dependence_adjusted_tail(136, 136, np.full(32, 68), turned_matches(message, message), message)
    assert clean == binomial_tail(136, 136)
    # A read repeating every 8 bits matches every byte turn of the message as well as the message.
    periodic = np.tile(rng.integers(0, 2, 8).astype(bool), 17)
    k = int((periodic == message).sum())
    assert dependence_adjusted_tail(136, k, lengths, turned_matches(periodic, message), message) > binomial_tail(136, k)
    spread = np.array([40, 96, 50, 90, 68, 70, 45, 95] * 4)  # other-length reads that swing widely
    assert dependence_adjusted_tail(136, 100, spread, turned_matches(fair, message), message) > 1e-3
    # Null lengths never line up with the message: no common factor, so no copy of the mark is read there.
    from math import gcd

    assert all(gcd(length, 32) == 1 for length in null_lengths(32)) and len(null_lengths(136)) == 32


def test_structured_unmarked_images_are_not_called_marked():
    from sdmark.plugins.watermark.calibration import structured_null

    result = structured_null(30, seed=4)
    assert result["periodic"] >= 20
    assert result["flagged"] == []


def test_bands_and_binomial_tail():
    assert binomial_tail(32, 32) == 2.0**-32
    assert binomial_tail(32, 30) == pytest.approx(529 / 2**32)
    assert binomial_tail(48, 0) == 1.0
    assert [band_for(p) for p in (1e-12, 1e-7, 1e-4, 0.2)] == ["very likely", "likely", "partial", "none"]
    # rivaGan's match-count cut sits exactly at the band edge: 30 of 32 in, 29 out.
    assert band_for(binomial_tail(32, 30)) == "likely" and band_for(binomial_tail(32, 29)) == "partial"


def test_costly_schemes_run_only_when_asked():
    default = [s.name for s in select_schemes()]
    assert "sdmark-rivaGan" not in default
    assert {"sd-v1", "sd-v2", "sdxl", "invokeai", "sdmark-dwtDct", "sdmark-dwtDctSvd"} <= set(default)
    assert "sdmark-rivaGan" in [s.name for s in select_schemes(all_schemes=True)]
    assert [s.name for s in select_schemes(["sdxl"])] == ["sdxl"]


def test_small_images_get_no_verdict_rather_than_a_crash():
    tiny = np.full((40, 40, 3), 200, np.uint8)
    report = verify_image(tiny)
    assert report["watermarked"] is False and report["detections"] == []


@pytest.mark.slow
def test_rivagan_pattern_round_trip(photo_arrays):
    pytest.importorskip("onnxruntime")
    from sdmark.plugins.watermark.methods import builtin_method

    rgb = photo_arrays["astronaut"]
    marked = builtin_method("rivaGan").embed(rgb, b"")
    schemes = select_schemes(["sdmark-rivaGan"])
    assert verify_image(marked, schemes)["watermarked"]
    assert not verify_image(rgb, schemes)["watermarked"]


def test_verify_and_the_stage_name_the_sdmark_format_read(photo_arrays, photos, runtime, tmp_path):
    """Two formats are written (format 2 from 512 px a side unless it would read poorly, else
    format 1): the report and the stage's record say which one was read, not only the library."""
    from sdmark.core.chain import Chain
    from sdmark.core.process import process_images
    from sdmark.plugins.watermark import spectral

    rgb = photo_arrays["astronaut"]
    for fmt in spectral.FORMATS:
        [found] = [d for d in verify_image(spectral.embed(rgb, b"\x01" * 8, fmt=fmt))["detections"] if d["scheme"] == "sdmark"]
        assert found["format"] == fmt
    photos["astronaut"].save(tmp_path / "astronaut.png")
    photos["astronaut"].resize((300, 300)).save(tmp_path / "small.png")
    results = process_images([tmp_path / "astronaut.png", tmp_path / "small.png"], Chain.build("watermark", runtime), None,
                             safety="off", progress=False)
    assert [r.record.stages[-1].result["readback"]["format"] for r in results] == list(spectral.FORMATS)
