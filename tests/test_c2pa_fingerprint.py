"""The content fingerprint signed into manifests: round trip, malformed input, and comparisons."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from sdmark.plugins.c2pa.fingerprint import Fingerprint, compare, fingerprint


@pytest.fixture(scope="module")
def rgb(photos) -> np.ndarray:
    return np.asarray(photos["astronaut"].convert("RGB"))


def test_round_trip_through_json_text(rgb):
    signed = fingerprint(rgb)
    again = Fingerprint.from_json(json.loads(json.dumps(signed.to_json())))
    assert (again.width, again.height, again.pdq) == (512, 512, signed.pdq)
    assert np.array_equal(again.thumbnail, signed.thumbnail) and np.array_equal(again.chroma, signed.chroma)
    assert again.thumbnail.shape == (64, 64) and again.chroma.shape == (32, 32, 2)
    assert len(json.dumps(signed.to_json())) < 12_000  # small enough to sign into every manifest


@pytest.mark.parametrize("breakage", [
    lambda d: d.pop("pdq"),
    lambda d: d.update(pdq="00"),
    lambda d: d["thumbnail"].update(width=4096),
    lambda d: d["thumbnail"].update(grey_zlib_b64="AAAA"),
    lambda d: d["chroma"].update(height=64),
    lambda d: d.update(width=-1),
])
def test_malformed_fingerprints_are_refused(rgb, breakage):
    data = fingerprint(rgb).to_json()
    breakage(data)
    with pytest.raises(ValueError, match="malformed fingerprint"):
        Fingerprint.from_json(data)


def test_a_crop_is_found_where_it_came_from(rgb):
    signed = fingerprint(rgb)
    crop = rgb[100:420, 60:440]  # 380 x 320 of 512 x 512
    result = compare(signed, Image.fromarray(crop).resize((190, 160)), scale=0.5)
    assert result.matched and "cropped" in result.changes and "resized" in result.changes
    x, y, w, h = result.region
    assert abs(x - 60) <= 8 and abs(y - 100) <= 8 and abs(w - 380) <= 8 and abs(h - 320) <= 8


def test_unrelated_content_and_a_local_edit(rgb, photos):
    signed = fingerprint(rgb)
    other = compare(signed, photos["coffee"].convert("RGB").resize((512, 512)))
    assert not other.matched and other.distance > 0.35
    edited = Image.fromarray(rgb).copy()
    ImageDraw.Draw(edited).rectangle([300, 60, 460, 220], fill=(40, 200, 60))
    result = compare(signed, edited)
    assert result.matched and "locally edited" in result.changes
    clean = compare(signed, Image.fromarray(rgb))
    assert clean.matched and clean.changes == [] and clean.distance == 0
