"""The nudenet backend with NudeNet's real detector, on real benign photos (no nude images anywhere)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdmark.core.chain import Chain
from sdmark.core.errors import ChainError
from sdmark.core.process import process_images

# Real photographs and scans scikit-image ships (no download needed), beyond the shared `photos`.
MORE_PHOTOS = ("hubble_deep_field", "immunohistochemistry", "retina", "stereo_motorcycle", "coins", "moon", "page")


@pytest.fixture(scope="module")
def benign_dir(tmp_path_factory, photos):
    from skimage import data

    folder = tmp_path_factory.mktemp("benign")
    for name, image in photos.items():
        image.save(folder / f"{name}.png")
    for name in MORE_PHOTOS:
        array = getattr(data, name)()
        array = array[0] if isinstance(array, tuple) else array  # stereo_motorcycle: (left, right, disparity)
        Image.fromarray(array).convert("RGB").save(folder / f"{name}.jpg", quality=92)
    return folder


def _check(paths, spec: str, batch_size: int = 4):
    results = process_images(paths, Chain.build(spec), None, batch_size=batch_size, progress=False, warn=lambda m: None)
    return {result.name: result for result in results}


def _verdict(result) -> dict:
    (entry,) = result.record.find("safety")
    return entry.result


def test_no_benign_photo_is_flagged_with_the_defaults(benign_dir):
    results = _check([benign_dir], "safety")
    assert len(results) == 5 + len(MORE_PHOTOS)
    for name, result in results.items():
        verdict = _verdict(result)
        assert result.status == "kept" and result.record.safety == "checked", name
        assert (verdict["backend"], verdict["verdict"], verdict["action"], verdict["summary"]) == (
            "nudenet", "safe", "none", "ok"), (name, verdict)
        assert verdict["threshold"] == 0.5 and verdict["policy"] == "blur"
    # Untouched pixels: an unflagged image leaves the stage as it came in.
    original = np.asarray(Image.open(benign_dir / "astronaut.png"))
    assert np.array_equal(np.asarray(results["astronaut"].item.image), original)


def test_the_detector_really_runs_classes_and_threshold_decide(benign_dir):
    # FACE_FEMALE is not unsafe by default; asking for it shows the detector finds the astronaut's face.
    faces = _check([benign_dir / "astronaut.png", benign_dir / "coffee.png"], "safety:classes=face_female,policy=flag")
    astronaut = _verdict(faces["astronaut"])
    assert astronaut["verdict"] == "flagged" and astronaut["reasons"][0]["label"] == "FACE_FEMALE"
    score = astronaut["reasons"][0]["score"]
    assert 0.5 <= score <= 1 and astronaut["scores"] == {"FACE_FEMALE": score}
    x, y, w, h = astronaut["detections"][0]["box"]
    assert 100 < x < 250 and 0 < y < 150 and 50 < w < 200 and 50 < h < 200  # her face, top middle-left
    assert astronaut["summary"] == f"FLAGGED (FACE_FEMALE {score:.2f}) -> kept (flag only)"
    assert _verdict(faces["coffee"])["verdict"] == "safe"
    # Above the detection's score, the same class no longer counts.
    strict = _check([benign_dir / "astronaut.png"], f"safety:classes=FACE_FEMALE,threshold={min(1.0, score + 0.01)}")
    assert _verdict(strict["astronaut"])["verdict"] == "safe"


def test_a_batch_gives_the_same_scores_as_single_images(benign_dir):
    spec = "safety:classes=FACE_FEMALE+face_male,policy=flag"
    paths = [benign_dir / f"{name}.png" for name in ("astronaut", "camera", "coffee", "rocket")]
    batched = _check(paths, spec, batch_size=4)
    single = _check(paths, spec, batch_size=1)
    for name in batched:
        assert _verdict(batched[name])["scores"] == pytest.approx(_verdict(single[name])["scores"], abs=1e-3), name
    assert _verdict(batched["camera"])["reasons"][0]["label"] == "FACE_MALE"


def test_unknown_classes_name_the_valid_ones():
    with pytest.raises(ChainError, match="unknown NudeNet class NAKED; valid: FEMALE_GENITALIA_COVERED, FACE_FEMALE"):
        Chain.build('safety:classes="FACE_MALE, naked"').validate("process")
    with pytest.raises(ChainError, match="safety:classes is empty"):
        Chain.build("safety:classes=+").validate("process")
