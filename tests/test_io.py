"""Reading every kind of input safely; writing atomically without losing anything."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdmark.core.errors import ImageReadError, ImageWriteError, SdmarkError
from sdmark.core.io import iter_inputs, max_pixels, read_image, write_atomic


def test_modes_are_normalised(tmp_path, photos):
    rgb = photos["coffee"].resize((64, 48))
    rgba = rgb.copy()
    rgba.putalpha(Image.linear_gradient("L").resize((64, 48)))
    cases = {
        "rgba.png": (rgba, "RGBA"),
        "opaque.png": (rgb.convert("RGBA"), "RGB"),
        "grey.png": (rgb.convert("L"), "RGB"),
        "palette.png": (rgb.convert("P"), "RGB"),
        "bilevel.png": (rgb.convert("1"), "RGB"),
    }
    for name, (image, mode) in cases.items():
        image.save(tmp_path / name)
        loaded = read_image(tmp_path / name)
        assert loaded.image.mode == mode, name
        assert loaded.image.size == (64, 48)
    assert np.array_equal(np.asarray(read_image(tmp_path / "rgba.png").image), np.asarray(rgba))
    transparent = rgb.convert("P")
    transparent.info["transparency"] = 0
    transparent.save(tmp_path / "ptrans.png", transparency=0)
    assert read_image(tmp_path / "ptrans.png").image.mode == "RGBA"


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(256, dtype=np.uint32) * 257).astype(np.uint16).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    loaded = read_image(tmp_path / "deep.png").image
    assert loaded.mode == "RGB"
    assert np.array_equal(np.asarray(loaded)[..., 0].ravel(), np.arange(256))


def test_cmyk_jpeg_becomes_rgb(tmp_path, photos):
    photos["chelsea"].convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    loaded = read_image(tmp_path / "cmyk.jpg").image
    assert loaded.mode == "RGB"
    difference = np.abs(np.asarray(loaded, dtype=int) - np.asarray(photos["chelsea"], dtype=int)).mean()
    assert difference < 8


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), "red")
    image.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    loaded = read_image(tmp_path / "rotated.jpg").image
    assert loaded.size == (20, 40)
    top = loaded.getpixel((10, 5))
    assert top[2] > 200 and top[0] < 60  # the blue half is now on top


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def bad_inputs(tmp_path, photos) -> Path:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("this is not an image")
    buffer = io.BytesIO()
    photos["rocket"].save(buffer, "JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    os.symlink(folder / "gone.png", folder / "dangling.png")
    photos["coffee"].save(folder / "good.png")
    return folder


def test_each_bad_file_gets_a_clear_error(bad_inputs):
    expected = {
        "empty.png": "empty file",
        "notes.png": "not an image",
        "truncated.jpg": "truncated",
        "bomb.png": "decompression bomb",
        "dangling.png": "cannot read",
    }
    for name, message in expected.items():
        with pytest.raises(ImageReadError, match=message) as info:
            read_image(bad_inputs / name)
        assert name in str(info.value)
    assert read_image(bad_inputs / "good.png").image.size == (600, 400)


def test_folders_are_walked_recursively_in_order(tmp_path, photos):
    (tmp_path / "a" / "b").mkdir(parents=True)
    photos["coffee"].save(tmp_path / "a" / "z.png")
    photos["coffee"].save(tmp_path / "a" / "b" / "y.jpg")
    (tmp_path / "a" / "readme.txt").write_text("skip me")
    entries = list(iter_inputs([tmp_path / "a", tmp_path / "missing.png"]))
    assert [e.relative for e in entries[:2]] == [Path("z.png"), Path("b/y.jpg")] or [e.relative for e in entries[:2]] == [Path("b/y.jpg"), Path("z.png")]
    assert entries[-1].error and "no such file" in entries[-1].error


def test_cli_batch_goes_on_past_bad_files(bad_inputs, cli_runner, tmp_path):
    runner, cli = cli_runner
    out = tmp_path / "out"
    result = runner.invoke(cli, ["process", str(bad_inputs), "--chain", "", "--no-safety", "-o", str(out), "--json"])
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    status = {Path(line["source"]).name: line["status"] for line in lines}
    assert status == {"empty.png": "failed", "notes.png": "failed", "truncated.jpg": "failed", "bomb.png": "failed",
                      "dangling.png": "failed", "good.png": "written"}
    assert (out / "good.png").exists()
    assert "1 written, 5 failed" in result.stderr


def test_write_never_overwrites_an_input_and_refuses_to_clobber(tmp_path, photos, cli_runner):
    runner, cli = cli_runner
    folder = tmp_path / "in"
    folder.mkdir()
    photos["coffee"].save(folder / "coffee.png")
    before = (folder / "coffee.png").read_bytes()
    result = runner.invoke(cli, ["process", str(folder), "--chain", "", "--no-safety", "-o", str(folder), "--overwrite"])
    assert result.exit_code == 1 and "refusing to overwrite an input" in result.stdout
    assert (folder / "coffee.png").read_bytes() == before
    out = tmp_path / "out"
    assert runner.invoke(cli, ["process", str(folder), "--chain", "", "--no-safety", "-o", str(out)]).exit_code == 0
    first = (out / "coffee.png").read_bytes()
    again = runner.invoke(cli, ["process", str(folder), "--chain", "", "--no-safety", "-o", str(out)])
    assert again.exit_code == 2 and "already exist" in again.stderr and "--overwrite" in again.stderr  # before any work
    assert (out / "coffee.png").read_bytes() == first
    assert runner.invoke(cli, ["process", str(folder), "--chain", "", "--no-safety", "-o", str(out), "--overwrite"]).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["coffee.png"]  # no temp files left behind


def test_failed_encode_leaves_nothing_behind(tmp_path):
    target = tmp_path / "x.png"

    def encode(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(ImageWriteError, match="No space left"):
        write_atomic(target, encode)
    assert list(tmp_path.iterdir()) == []


def test_same_stem_inputs_get_distinct_outputs(tmp_path, photos, cli_runner):
    runner, cli = cli_runner
    folder = tmp_path / "in"
    folder.mkdir()
    photos["coffee"].save(folder / "pic.png")
    photos["rocket"].save(folder / "pic.jpg")
    out = tmp_path / "out"
    result = runner.invoke(cli, ["process", str(folder), "--chain", "", "--no-safety", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["pic.jpg.png", "pic.png"]


def test_encoder_error_fails_one_image_and_the_batch_goes_on(tmp_path, photos, cli_runner):
    runner, cli = cli_runner
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (17000, 8), "grey").save(folder / "a-wide.png")  # over WebP's 16383-pixel limit
    photos["coffee"].save(folder / "b.png")
    out = tmp_path / "out"
    result = runner.invoke(cli, ["process", str(folder), "--chain", "", "--no-safety", "--format", "webp", "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert "cannot encode" in result.stdout and "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == ["b.webp"]


def test_pixel_limit_is_ours_not_pillows(tmp_path, monkeypatch):
    Image.new("L", (100, 100)).save(tmp_path / "small.png")
    monkeypatch.setenv("SDMARK_MAX_PIXELS", "5000")
    with pytest.raises(ImageReadError, match=r"100x100 = 0.01 MP, over sdmark's limit of 0.005 MP .*set SDMARK_MAX_PIXELS"):
        read_image(tmp_path / "small.png")
    monkeypatch.setenv("SDMARK_MAX_PIXELS", "200000000")
    assert read_image(tmp_path / "small.png").image.size == (100, 100)


def test_default_limit_admits_real_photo_sizes_and_names_itself(tmp_path, monkeypatch):
    monkeypatch.delenv("SDMARK_MAX_PIXELS", raising=False)
    assert max_pixels() >= 12000 * 12000 and max_pixels() >= 14204 * 10652  # a 151 MP medium-format file
    # The 60000x60000 bomb is refused by sdmark's limit, named with the variable that raises it.
    (tmp_path / "bomb.png").write_bytes(png_header_only(60000, 60000))
    with pytest.raises(ImageReadError) as caught:
        read_image(tmp_path / "bomb.png")
    message = str(caught.value)
    assert f"3,600 MP, over sdmark's limit of {max_pixels() / 1e6:.0f} MP" in message and "SDMARK_MAX_PIXELS" in message
    assert "Pillow" not in message and "DOS attack" not in message


def test_pillows_warning_band_is_silent_and_its_refusal_is_named(tmp_path, monkeypatch, recwarn):
    """Pillow warns over MAX_IMAGE_PIXELS and refuses over twice that; the 12000x12000 photo fell in that
    band at Pillow's default. Scaled down here (Pillow's limit 1000 px) without decoding anything large."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.delenv("SDMARK_MAX_PIXELS", raising=False)
    Image.new("RGB", (40, 40), "red").save(tmp_path / "band.png")  # 1600 px: Pillow would warn
    assert read_image(tmp_path / "band.png").image.size == (40, 40)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    Image.new("RGB", (100, 100), "red").save(tmp_path / "over.png")  # 10000 px: Pillow refuses
    with pytest.raises(ImageReadError, match=r"over Pillow's own limit of 0.002 MP \(2000 pixels\).*MAX_IMAGE_PIXELS"):
        read_image(tmp_path / "over.png")


def test_read_image_leaves_pillows_global_limit_alone(tmp_path, monkeypatch):
    before = Image.MAX_IMAGE_PIXELS
    Image.new("L", (10, 10)).save(tmp_path / "a.png")
    for value in ("5000", "300000000"):
        monkeypatch.setenv("SDMARK_MAX_PIXELS", value)
        read_image(tmp_path / "a.png")
        assert Image.MAX_IMAGE_PIXELS == before


@pytest.mark.parametrize("value", ["lots", "-5", "0"])
def test_a_bad_pixel_limit_is_a_configuration_error(tmp_path, monkeypatch, value):
    monkeypatch.setenv("SDMARK_MAX_PIXELS", value)
    with pytest.raises(SdmarkError, match="SDMARK_MAX_PIXELS.*not a positive number") as caught:
        max_pixels()
    assert caught.value.exit_code == 2
