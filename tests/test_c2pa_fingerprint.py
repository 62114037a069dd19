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
    assert np.array_equal(again.fine, signed.fine) and np.array_equal(again.energy, signed.energy)
    assert again.fine.shape == (128, 128) and again.energy.shape == (32, 32)
    assert len(json.dumps(signed.to_json())) < 40_000  # small enough to sign into every manifest


@pytest.mark.parametrize("breakage", [
    lambda d: d.pop("pdq"),
    lambda d: d.update(pdq="00"),
    lambda d: d["thumbnail"].update(width=4096),
    lambda d: d["thumbnail"].update(grey_zlib_b64="AAAA"),
    lambda d: d["chroma"].update(height=64),
    lambda d: d.update(width=-1),
    lambda d: d.update(width=10 ** 9),  # the attack review's ZeroDivisionError in compare()
    lambda d: d.update(width=5000),  # a size its thumbnails cannot be
    lambda d: d["fine"].update(width=4096),
    lambda d: d.pop("energy"),
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


def _edits(rgb: np.ndarray, other: np.ndarray) -> dict[str, np.ndarray]:
    """The attack review's local edits (astronaut.png's face sits at x 150-230, y 70-150)."""
    import cv2

    def edit(change):
        out = rgb.copy()
        change(out)
        return out

    face, eyes = (slice(70, 150), slice(150, 230)), (slice(95, 115), slice(160, 220))

    def blur(x, s):
        return cv2.GaussianBlur(x.astype(np.float32), (0, 0), s)

    text = Image.fromarray(rgb.copy())
    ImageDraw.Draw(text).text((40, 300), "PAID $0 FAKE", fill=(255, 255, 255), font_size=22)
    ImageDraw.Draw(text).text((40, 330), "ACCOUNT 1234-5678", fill=(255, 255, 255), font_size=22)
    return {
        "face blurred": edit(lambda o: o.__setitem__(face, cv2.GaussianBlur(o[face], (0, 0), 8))),
        "eyes blurred": edit(lambda o: o.__setitem__(eyes, cv2.GaussianBlur(o[eyes], (0, 0), 6))),
        "face mirrored": edit(lambda o: o.__setitem__(face, o[face][:, ::-1].copy())),
        "48 px patch of fur": edit(lambda o: o.__setitem__((slice(300, 348), slice(300, 348)), other[200:248, 200:248])),
        "24 px square inverted": edit(lambda o: o.__setitem__((slice(90, 114), slice(170, 194)), 255 - o[90:114, 170:194])),
        "text drawn": np.asarray(text),
        "detail swapped": np.clip(blur(rgb, 4) + other.astype(np.float32) - blur(other, 4), 0, 255).astype(np.uint8),
    }


@pytest.mark.parametrize("kind", ["face blurred", "eyes blurred", "face mirrored", "48 px patch of fur",
                                  "24 px square inverted", "text drawn", "detail swapped"])
def test_local_edits_are_seen_by_the_finer_binding(rgb, photos, kind):
    """F1 of the attack review: each of these read as the same content with no change."""
    signed = fingerprint(rgb)
    edited = _edits(rgb, np.asarray(photos["chelsea"].convert("RGB").resize((512, 512))))[kind]
    result = compare(signed, Image.fromarray(edited))
    assert not result.matched or "locally edited" in result.changes, result.to_json()


@pytest.mark.parametrize("attack", ["jpeg 50", "resize 0.5", "crop 90% off the pixel grid"])
def test_benign_copies_are_clean_at_the_finer_resolution(rgb, attack):
    import io

    signed = fingerprint(rgb)
    if attack == "jpeg 50":
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, "JPEG", quality=50)
        copy, scale = Image.open(buffer), None
    elif attack == "resize 0.5":
        copy, scale = Image.fromarray(rgb).resize((256, 256), Image.LANCZOS), 0.5
    else:
        copy, scale = Image.fromarray(rgb[10:496, 21:507]), 1.0
    result = compare(signed, copy, scale)
    assert result.matched and "locally edited" not in result.changes, result.to_json()
    assert result.to_json()["local_edits_checked"] is True and result.resolution == 16


def test_an_older_coarse_fingerprint_still_compares_but_says_local_edits_were_not_checked(rgb):
    data = fingerprint(rgb).to_json()
    del data["fine"], data["energy"]  # what sdmark signed before the finer binding
    older = Fingerprint.from_json(data)
    assert not older.detailed
    result = compare(older, Image.fromarray(rgb))
    assert result.matched and result.local is None
    assert result.to_json()["local_edits_checked"] is False and result.resolution == 64
