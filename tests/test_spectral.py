"""sdmark's own spectral watermark (plugins/watermark/spectral.py): round trips, attacks, keys, errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from sdmark.plugins.watermark import spectral
from sdmark.plugins.watermark import spectral_code as code

PAYLOAD = bytes.fromhex("0123456789abcdef")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(float) - b) ** 2)))


def _illustrations() -> dict[str, np.ndarray]:
    """Digital-art-like images: flat shapes, a gradient with shapes, a text poster."""
    flat = Image.new("RGB", (512, 512), (70, 130, 200))
    draw = ImageDraw.Draw(flat)
    draw.ellipse([40, 60, 300, 320], fill=(240, 200, 40))
    draw.rectangle([250, 280, 480, 470], fill=(200, 40, 60))
    draw.polygon([(20, 500), (200, 350), (380, 500)], fill=(30, 160, 80))

    y, x = np.mgrid[0:448, 0:576] / 576.0
    ramp = np.stack([40 + 180 * x, 60 + 120 * y, 200 - 150 * x], axis=-1).astype(np.uint8)
    gradient = Image.fromarray(ramp)
    ImageDraw.Draw(gradient).ellipse([300, 100, 500, 300], fill=(250, 250, 250))

    poster = Image.new("RGB", (480, 544), (250, 248, 240))
    draw = ImageDraw.Draw(poster)
    for row, size in enumerate((52, 36, 28, 44, 30, 24, 40)):
        draw.text((20, 20 + row * 72), "summer festival open", fill=(20, 20, 20), font=ImageFont.load_default(size=size))
    return {"flat": np.asarray(flat), "gradient": np.asarray(gradient), "text": np.asarray(poster)}


@pytest.fixture(scope="module")
def photo_arrays(photos) -> dict[str, np.ndarray]:
    return {name: np.asarray(image) for name, image in photos.items()}


@pytest.fixture(scope="module")
def marked(photo_arrays) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every photo and illustration with its marked copy."""
    images = {**photo_arrays, **_illustrations()}
    return {name: (image, spectral.embed(image, PAYLOAD)) for name, image in images.items()}


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _half(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((w // 2, h // 2), Image.BICUBIC))


def test_round_trip_decodes_the_exact_payload(marked) -> None:
    for name, (_, image) in marked.items():
        found = spectral.detect(image)
        assert found.found, name
        assert found.payload == PAYLOAD, name
        assert found.p_value <= 1e-6, name
        assert abs(found.scale - 1) < 0.01, name


def test_photos_stay_invisible(marked, photo_arrays) -> None:
    psnrs = [_psnr(*marked[name]) for name in photo_arrays]
    assert np.mean(psnrs) >= 40, psnrs
    for name in ("flat", "gradient"):
        # Where the original is flat (no detail to hide the mark) the change stays a few grey levels.
        original, image = marked[name]
        grey = original.astype(np.float32).mean(axis=2)
        spread = ndimage.maximum_filter(grey, 17) - ndimage.minimum_filter(grey, 17)
        change = np.abs(image.astype(int) - original).max(axis=2)
        assert change[spread <= 3].max() <= 10, name
        assert np.sqrt(np.mean(change[spread <= 3] ** 2.0)) <= 2.5, name


def test_embed_leaves_its_input_alone(photo_arrays) -> None:
    image = photo_arrays["coffee"]
    before = image.copy()
    spectral.embed(image, PAYLOAD)
    assert np.array_equal(image, before)


def test_marking_in_strips_changes_no_pixel(photo_arrays, monkeypatch) -> None:
    """embed works a few rows at a time (for speed); the blurs of the mask must not see the seams."""
    image = np.concatenate([photo_arrays["coffee"], photo_arrays["coffee"][:203]])  # an odd height
    monkeypatch.setattr(spectral, "STRIP_ROWS", len(image))
    whole = spectral.embed(image, PAYLOAD)
    monkeypatch.setattr(spectral, "STRIP_ROWS", 40)
    assert np.array_equal(spectral.embed(image, PAYLOAD), whole)


ATTACKS = {
    "jpeg50": lambda x: _jpeg(x, 50),
    "crop75-odd-offset": lambda x: x[37:37 + int(x.shape[0] * 0.866), 61:61 + int(x.shape[1] * 0.866)],
    "resize0.5-not-back": _half,
    "brightness0.7": lambda x: np.clip(np.rint(x * 0.7), 0, 255).astype(np.uint8),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("name", ["astronaut", "rocket", "flat"])
def test_survives_attack(marked, attack: str, name: str) -> None:
    attacked = ATTACKS[attack](marked[name][1])
    found = spectral.detect(attacked)
    assert found.found and found.payload == PAYLOAD, (attack, name, found)
    if attack == "resize0.5-not-back":
        assert abs(found.scale - 0.5) < 0.01


def _night_sky() -> np.ndarray:
    """A near-black image with a few small bright blobs: where a mark clipped at 0 would be halved."""
    rng = np.random.default_rng(5)
    sky = Image.new("RGB", (384, 384), (0, 0, 0))
    draw = ImageDraw.Draw(sky)
    for x, y, r in zip(*rng.integers(0, 384, (2, 60)), rng.integers(1, 5, 60)):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(150, 256, 3)))
    return np.asarray(sky)


def test_the_mark_survives_where_the_image_clips(marked) -> None:
    # Brightness x1.3 turns the text poster's off-white paper into flat 255: only the letters can
    # carry the mark, and their edges are a hundred times louder than it.
    text = np.clip(np.rint(marked["text"][1] * 1.3), 0, 255).astype(np.uint8)
    assert spectral.detect(text).payload == PAYLOAD
    # On black, a mark that could only go up would be half as strong; JPEG 50 would then erase it.
    sky = _night_sky()
    marked_sky = spectral.embed(sky, PAYLOAD)
    assert spectral.detect(_jpeg(marked_sky, 50)).payload == PAYLOAD
    assert np.abs(marked_sky.astype(int) - sky).max() <= 24
    assert not spectral.detect(_jpeg(sky, 50)).found


def test_a_grainy_image_carries_the_mark() -> None:
    # Pixel noise far above the mark: an edge-preserving predictor that took the grain for edges
    # would keep it, mark included, out of the residual.
    grain = np.random.default_rng(0).integers(60, 200, (301, 283, 3), dtype=np.uint8)
    found = spectral.detect(_jpeg(spectral.embed(grain, PAYLOAD), 75))
    assert found.payload == PAYLOAD


def _unmarked() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "noise": rng.integers(0, 256, (300, 400, 3), dtype=np.uint8),
        "constant": np.full((256, 256, 3), 128, np.uint8),
        "black": np.zeros((300, 300, 3), np.uint8),
        "stripes": np.tile((np.arange(512) // 4 % 2 * 255).astype(np.uint8), (512, 1))[..., None].repeat(3, -1),
        "checker": ((np.indices((384, 384)).sum(0) // 16 % 2) * 255).astype(np.uint8)[..., None].repeat(3, -1),
        **_illustrations(),
    }


def test_unmarked_images_are_not_detected(photo_arrays) -> None:
    for name, image in {**photo_arrays, **_unmarked()}.items():
        for view in (image, _half(image), _jpeg(image, 75)):
            found = spectral.detect(view)
            assert not found.found and found.payload is None and found.p_value == 1.0, name


def test_a_wrong_key_reads_nothing_and_a_private_key_works(marked) -> None:
    _, public = marked["astronaut"]
    assert not spectral.detect(public, key=b"someone else's key").found

    secret = b"deployment secret 7f3a"
    original, _ = marked["chelsea"]
    private = spectral.embed(original, PAYLOAD, key=secret)
    assert spectral.detect(private, key=secret).payload == PAYLOAD
    assert not spectral.detect(private).found  # the public key cannot read it


def test_grey_images_round_trip(photo_arrays) -> None:
    grey = photo_arrays["camera"][..., 0].copy()
    marked = spectral.embed(grey, PAYLOAD)
    assert marked.shape == grey.shape and marked.dtype == np.uint8
    assert spectral.detect(marked).payload == PAYLOAD


def test_embed_refuses_images_too_small_to_read_back_and_reads_those_it_takes(photo_arrays) -> None:
    """The size floor is what the detector reads (benchmarks/size_floor.py): a 160x160 photo's clean
    mark read back at no strength, so embed refuses it by its pixel count, naming the floor; the
    smallest sizes it takes read back."""
    import cv2

    image = photo_arrays["astronaut"]
    for w, h in ((160, 160), (128, 224), (300, 100)):
        small = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        with pytest.raises(spectral.SpectralError, match=f"image is {w}x{h}: .*at least (30976 pixels|128 pixels a side)"):
            spectral.embed(small, PAYLOAD, strength=3)
    for w, h in ((176, 176), (128, 256)):
        small = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        assert any(spectral.detect(spectral.embed(small, PAYLOAD, strength=s)).payload == PAYLOAD for s in (1, 1.5, 2, 3))


def test_bad_input_gives_clear_errors(photo_arrays) -> None:
    image = photo_arrays["astronaut"]
    with pytest.raises(spectral.SpectralError, match="at least 128 pixels"):
        spectral.embed(image[:100, :300], PAYLOAD)
    with pytest.raises(spectral.SpectralError, match="exactly 8 bytes"):
        spectral.embed(image, b"short")
    with pytest.raises(spectral.SpectralError, match="exactly 8 bytes"):
        spectral.embed(image, "0123456789abcdef")  # type: ignore[arg-type]
    with pytest.raises(spectral.SpectralError, match="uint8"):
        spectral.embed(image.astype(np.float32), PAYLOAD)
    with pytest.raises(spectral.SpectralError, match="RGB"):
        spectral.embed(np.zeros((256, 256, 4), np.uint8), PAYLOAD)
    with pytest.raises(spectral.SpectralError, match="at least 96 pixels"):
        spectral.detect(image[:64, :64])
    with pytest.raises(spectral.SpectralError, match="key"):
        spectral.detect(image, key=b"")


def test_false_positive_bound_is_far_below_one_in_a_million() -> None:
    bound = code.false_positive_bound(spectral.ALIGNMENTS)
    assert bound < 1e-9
    # A clean read is a much rarer coincidence than one that needed every correction.
    assert code.false_positive_bound(spectral.ALIGNMENTS, 0) < bound
    # Fair-coin words essentially never decode (expect 0 of these; a bug in the check would show).
    rng = np.random.default_rng(0)
    hits = sum(code.decode(rng.standard_normal(code.CODE_BITS), b"k") is not None for _ in range(2000))
    assert hits == 0


def test_a_small_rotation_is_found_and_measured(marked) -> None:
    turned = np.asarray(Image.fromarray(marked["astronaut"][1]).rotate(2.0, resample=Image.BICUBIC))
    found = spectral.detect(turned)
    assert found.found and found.payload == PAYLOAD
    assert abs(found.angle - 2.0) < 0.3 and abs(found.scale - 1) < 0.01


def test_a_rotated_dense_texture_is_found_by_the_matched_rotation_search() -> None:
    """A cell micrograph's own texture correlations bury the mark's period in the autocorrelation;
    matching the harmonic template over turn and scale (log-polar) still finds it, turned and resized."""
    from skimage import data

    texture = data.immunohistochemistry()
    marked = spectral.embed(texture, PAYLOAD)
    for degrees, side in ((-5.0, 512), (5.0, 600), (-4.0, 400)):
        turned = Image.fromarray(marked).rotate(degrees, resample=Image.BICUBIC)
        found = spectral.detect(np.asarray(turned.resize((side, side), Image.BICUBIC)))
        assert found.found and found.payload == PAYLOAD, (degrees, side)
        assert abs(found.angle - degrees) < 0.3 and abs(found.scale - side / 512) < 0.01


def test_a_faint_unrotated_mark_is_not_crowded_out_by_the_rotation_search() -> None:
    """Grass enlarged 2x keeps only a faint lattice; the turn-and-scale search tries ~70x as many
    lattices and so finds stronger chance peaks, which must not take every slot the detector tries."""
    from skimage import data

    grass = np.repeat(data.grass()[..., None], 3, axis=2)
    marked = spectral.embed(grass, bytes.fromhex("5d3a9c0e71b2f486"))
    enlarged = np.asarray(Image.fromarray(marked).resize((1024, 1024), Image.BICUBIC))
    found = spectral.detect(enlarged)
    assert found.found and found.payload == bytes.fromhex("5d3a9c0e71b2f486")
    assert abs(found.scale - 2) < 0.02 and abs(found.angle) < 0.3


DIHEDRAL = {
    "mirror-left-right": lambda x: x[:, ::-1],
    "mirror-up-down": lambda x: x[::-1],
    "turn90": lambda x: np.rot90(x, 1),
    "turn180": lambda x: np.rot90(x, 2),
    "turn270": lambda x: np.rot90(x, 3),
    "transpose": lambda x: x.transpose(1, 0, 2),
    "anti-transpose": lambda x: np.rot90(x, 2).transpose(1, 0, 2),
}


@pytest.mark.parametrize("name", ["coffee", "text"])
def test_every_mirror_quarter_turn_and_transpose_reads_the_exact_payload(marked, name: str) -> None:
    # "text" is 480 x 544: a quarter turn swaps the sides, so the lattice search sees another shape.
    image = marked[name][1]
    seen = set()
    for attack, transform in DIHEDRAL.items():
        found = spectral.detect(np.ascontiguousarray(transform(image)))
        assert found.found and found.payload == PAYLOAD, (name, attack, found.sync_z)
        seen.add(found.diagnostics["orientation"])
    assert len(seen) == 7 and "identity" not in seen  # each read through its own symmetry
    assert spectral.detect(image).diagnostics["orientation"] == "identity"
    assert spectral.detect(image).diagnostics["format"] in spectral.FORMATS


@pytest.mark.parametrize("fmt, degrees", [("sdmark-spectral/1", -13.0), ("sdmark-spectral/2", -8.0)])
def test_a_mirrored_image_turned_and_cropped_still_reads(fmt: str, degrees: float) -> None:
    # Format 2's 256 px tile leaves 1.6 periods in this 410 px crop: at 13 degrees its lattice is
    # already too faint to find (see the docs' limits), at 8 it reads.
    from skimage import data

    marked = spectral.embed(data.astronaut(), PAYLOAD, fmt=fmt)
    turned = Image.fromarray(np.ascontiguousarray(marked[:, ::-1])).rotate(degrees, resample=Image.BICUBIC)
    attacked = _jpeg(np.asarray(turned)[40:450, 60:470], 70)
    found = spectral.detect(attacked)
    assert found.found and found.payload == PAYLOAD
    assert found.diagnostics["orientation"] != "identity"


@pytest.mark.parametrize("degrees", [-15.0, 11.0])
def test_turns_up_to_fifteen_degrees_are_found(marked, degrees: float) -> None:
    turned = np.asarray(Image.fromarray(marked["rocket"][1]).rotate(degrees, resample=Image.BICUBIC))
    found = spectral.detect(turned)
    assert found.found and found.payload == PAYLOAD
    assert abs(found.angle - degrees) < 0.3 and abs(found.scale - 1) < 0.01


def test_unmarked_images_read_through_every_orientation_decode_nothing(photo_arrays) -> None:
    # The wider search decodes no more alignments: the union bound counts them, not the orientations.
    for name, image in photo_arrays.items():
        for transform in (lambda x: x, DIHEDRAL["turn90"]):
            found = spectral.detect(np.ascontiguousarray(transform(image)))
            assert not found.found and found.tried <= spectral.ALIGNMENTS, name


# -- format 2 (sdmark-spectral/2) ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def astronaut_v2() -> tuple[np.ndarray, np.ndarray]:
    from skimage import data

    image = data.astronaut()
    return image, spectral.embed(image, PAYLOAD)


def test_format_2_is_the_default_and_format_1_still_reads(astronaut_v2, photo_arrays) -> None:
    original, marked = astronaut_v2
    found = spectral.detect(marked)
    assert found.found and found.payload == PAYLOAD and found.diagnostics["format"] == spectral.FORMAT == "sdmark-spectral/2"
    assert abs(found.scale - 1) < 0.01
    assert _psnr(original, marked) >= 38  # 39.4 dB: format 2 is marked 1.25x as strong
    # Format 1, as every earlier version wrote it (same bytes: the v1 path is unchanged), still verifies.
    old = spectral.embed(original, PAYLOAD, fmt="sdmark-spectral/1")
    found = spectral.detect(old)
    assert found.found and found.payload == PAYLOAD and found.diagnostics["format"] == "sdmark-spectral/1"
    # Images under two format-2 tiles a side get format 1.
    small = photo_arrays["chelsea"]  # 451 x 300
    assert spectral.detect(spectral.embed(small, PAYLOAD)).diagnostics["format"] == "sdmark-spectral/1"
    with pytest.raises(spectral.SpectralError, match="unknown sdmark format"):
        spectral.embed(original, PAYLOAD, fmt="sdmark-spectral/9")


def test_a_dense_texture_gets_format_1() -> None:
    """Format 2's band is where a dense texture is loudest: without margin on the clean image the
    embedder writes format 1, which reads it through every benign attack."""
    from skimage import data

    grass = np.repeat(data.grass()[..., None], 3, axis=2)
    found = spectral.detect(_jpeg(spectral.embed(grass, PAYLOAD), 50))
    assert found.found and found.payload == PAYLOAD and found.diagnostics["format"] == "sdmark-spectral/1"


def _social(image: np.ndarray, factor: float, quality: int) -> np.ndarray:
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((round(w * factor), round(h * factor)), Image.BICUBIC)
    return _jpeg(np.asarray(small), quality)


@pytest.mark.parametrize("factor, quality", [(0.4, 50), (0.5, 40)])
def test_format_2_survives_a_social_media_downscale_and_jpeg(astronaut_v2, factor: float, quality: int) -> None:
    original, marked = astronaut_v2
    found = spectral.detect(_social(marked, factor, quality))
    assert found.found and found.payload == PAYLOAD, found
    assert abs(found.scale - factor) < 0.02
    # Format 1 at the same strength does not (the reason for format 2).
    assert not spectral.detect(_social(spectral.embed(original, PAYLOAD, fmt="sdmark-spectral/1"), factor, quality)).found


def test_format_2_enlarged_is_found_at_half_resolution(astronaut_v2) -> None:
    _, marked = astronaut_v2
    big = np.asarray(Image.fromarray(marked).resize((1024, 1024), Image.BICUBIC))
    found = spectral.detect(big)
    assert found.found and found.payload == PAYLOAD and abs(found.scale - 2) < 0.03


def test_format_2_grid_origin_differs_per_image_and_is_reproducible(photo_arrays, astronaut_v2) -> None:
    """Two images marked alike do not carry the mark at the same pixels (a pixel-wise average of
    many marked images does not add up), and the same inputs give the same bytes."""
    original, marked = astronaut_v2
    assert np.array_equal(spectral.embed(original, PAYLOAD), marked)
    other = np.ascontiguousarray(np.asarray(Image.fromarray(photo_arrays["coffee"]).resize((600, 512)))[:, :512])
    marked_other = spectral.embed(other, PAYLOAD)
    assert spectral.detect(marked_other).diagnostics["format"] == "sdmark-spectral/2"
    first = marked.astype(float).mean(axis=2) - original.astype(float).mean(axis=2)
    second = marked_other.astype(float).mean(axis=2) - other.astype(float).mean(axis=2)
    aligned = np.corrcoef(first.ravel(), second.ravel())[0, 1]
    ones = [spectral.embed(image, PAYLOAD, fmt="sdmark-spectral/1").astype(float).mean(axis=2) - image.astype(float).mean(axis=2)
            for image in (original, other)]
    assert abs(aligned) < 0.05 < np.corrcoef(ones[0].ravel(), ones[1].ravel())[0, 1]


def test_both_formats_share_one_false_positive_budget(photo_arrays) -> None:
    # Each fold's peaks are chosen over both formats and all orientations by the sync carriers: the
    # number of decodes, which the union bound counts, is the same as for one format.
    assert code.false_positive_bound(spectral.ALIGNMENTS) < 1.01e-13  # 1.0e-13, as with one format
    for name, image in photo_arrays.items():
        found = spectral.detect(image)
        assert not found.found and found.tried <= spectral.ALIGNMENTS, name
    # A format-2 read is checked under format 2's own labels: a format-1 decoder finds nothing in it.
    soft = code.encode(PAYLOAD, spectral.PUBLIC_KEY, b"v2") * 2.0 - 1
    assert code.decode(soft, spectral.PUBLIC_KEY, b"v2").payload == PAYLOAD
    assert code.decode(soft, spectral.PUBLIC_KEY, b"v1") is None
