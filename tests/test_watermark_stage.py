"""The ``watermark`` stage through ``sdmark process`` and the Python API."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from sdmark.core.chain import Chain
from sdmark.core.errors import ChainError
from sdmark.core.output import OutputOptions
from sdmark.core.process import process_images
from sdmark.core.runtime import hookimpl
from sdmark.plugins.watermark.methods import builtin_method
from sdmark.plugins.watermark.verify import verify_file, verify_image


def test_process_chain_marks_and_records_and_verify_reads_it(cli_runner, photo_dir, tmp_path):
    runner, cli = cli_runner
    out = tmp_path / "out"
    result = runner.invoke(cli, ["process", str(photo_dir), "--chain", "watermark:id=c0ffee", "-o", str(out),
                                 "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 3 and all(line["status"] == "written" for line in lines)
    entry = lines[0]["record"]["stages"][-1]
    assert entry["stage"] == "watermark"
    assert entry["result"]["method"] == "sdmark" and entry["result"]["scheme"] == "sdmark"  # the default
    assert entry["result"]["payload"] == "0000000000c0ffee" and entry["result"]["readback"]["band"] == "very likely"
    assert entry["result"]["summary"] == "sdmark id=0000000000c0ffee"
    assert all(line["record"]["stages"][-1]["result"]["strength"] == 1.0 for line in lines)  # photos: no boost
    for written in out.iterdir():
        report = verify_file(written)
        assert report["watermarked"] and report["detections"][0]["payload"] == "0000000000c0ffee"
    for source in photo_dir.iterdir():  # inputs untouched and unmarked
        assert verify_file(source)["watermarked"] is False


def test_auto_ids_differ_per_image_and_are_recorded(photos, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    photos["astronaut"].save(folder / "a.png")
    photos["rocket"].save(folder / "b.png")
    results = process_images([folder], Chain.build("watermark:method=dwtDct"), None, safety="off", progress=False)
    ids = [r.record.find("watermark")[0].result["id"] for r in results]
    assert len(set(ids)) == 2 and all(len(i) == 16 for i in ids)
    for result, ident in zip(results, ids):
        assert verify_image(result.item.image)["detections"][0]["payload"] == ident


def test_alpha_is_kept_and_odd_sizes_work(tmp_path):
    rng = np.random.default_rng(0)
    base = np.asarray(Image.fromarray(rng.integers(60, 200, (301, 283, 3), dtype=np.uint8)).resize((283, 301)))
    alpha = np.tile(np.linspace(0, 255, 283).astype(np.uint8), (301, 1))
    rgba = Image.fromarray(np.dstack([base, alpha]), "RGBA")
    path = tmp_path / "odd.png"
    rgba.save(path)
    [result] = process_images([path], Chain.build("watermark"), None, safety="off", progress=False)
    assert result.status == "kept", result.error
    image = result.item.image
    assert image.mode == "RGBA" and image.size == (283, 301)
    assert np.array_equal(np.asarray(image)[:, :, 3], alpha)
    assert verify_image(image)["watermarked"]


def test_small_image_fails_loudly_and_is_not_written(cli_runner, tmp_path):
    runner, cli = cli_runner
    Image.new("RGB", (200, 180), (120, 80, 40)).save(tmp_path / "small.png")
    Image.new("RGB", (300, 120), (120, 80, 40)).save(tmp_path / "thin.png")
    out = tmp_path / "out"
    result = runner.invoke(cli, ["process", str(tmp_path / "small.png"), "--chain", "watermark:method=dwtDctSvd",
                                 "-o", str(out), "--no-progress"])
    assert result.exit_code == 1
    assert "dwtDctSvd needs at least 65536 pixels (256x256)" in result.stdout
    thin = runner.invoke(cli, ["process", str(tmp_path / "thin.png"), "--chain", "watermark", "-o", str(out), "--no-progress"])
    assert thin.exit_code == 1
    assert "sdmark needs at least 128 pixels a side" in thin.stdout
    assert not out.exists() or not any(out.iterdir())


def test_the_256_floor_is_invisible_watermarks_not_sdmarks(photos, tmp_path):
    """An image under 256x256 pixels (48,000) takes sdmark's own mark, which reads back, but no
    invisible-watermark method."""
    small = tmp_path / "small.png"
    photos["astronaut"].resize((240, 200)).save(small)
    [marked] = process_images([small], Chain.build("watermark:id=5d"), None, safety="off", progress=False)
    assert marked.status == "kept", marked.error
    assert verify_image(marked.item.image)["watermarked"]
    for method in ("dwtDct", "dwtDctSvd", "rivaGan"):
        problem = Chain.build(f"watermark:method={method}").stages[0].unfit_size(240, 200)
        assert problem and "65536 pixels (256x256)" in problem
    assert Chain.build("watermark").stages[0].unfit_size(240, 200) is None


def test_a_small_image_that_cannot_carry_the_mark_is_refused_for_its_size(tmp_path):
    """Between sdmark's floor (176x176 pixels) and the size from which every measured image took the
    mark (208x208), a refusal blames the size, not the content: a 184x184 gravel texture reads back at
    no strength (at 192x192 it does), and the message says to upscale it."""
    from skimage import data

    small = tmp_path / "gravel.png"
    Image.fromarray(data.gravel()).convert("RGB").resize((184, 184), Image.Resampling.LANCZOS).save(small)
    [refused] = process_images([small], Chain.build("watermark:id=5d"), None, safety="off", progress=False)
    assert refused.status == "failed"
    assert "at 184x184 the image is too small for it to read reliably" in refused.error
    assert "208x208" in refused.error and "flat" not in refused.error


def test_option_errors_before_any_work():
    with pytest.raises(ChainError, match="must be one of dwtDctSvd, dwtDct, rivaGan"):
        Chain.build("watermark:method=lsb")
    chain = Chain.build("watermark:id=nothex")
    with pytest.raises(ChainError, match="hex digits"):
        chain.validate("process")
    with pytest.raises(ChainError, match="carries no id"):
        Chain.build("watermark:method=rivaGan,id=12").validate("process")


def test_spectral_sdmark_method_marks_and_verify_reads_it(photos, tmp_path):
    pytest.importorskip("sdmark.plugins.watermark.spectral")
    path = tmp_path / "cat.png"
    photos["chelsea"].save(path)
    [result] = process_images([path], Chain.build("watermark:method=sdmark,id=feed"), None, safety="off", progress=False)
    assert result.status == "kept", result.error
    entry = result.record.find("watermark")[0].result
    assert (entry["method"], entry["scheme"], entry["payload"]) == ("sdmark", "sdmark", "000000000000feed")
    report = verify_image(result.item.image)
    assert report["watermarked"] and report["detections"][0]["scheme"] == "sdmark"


def test_dense_texture_gets_a_stronger_mark_that_still_survives_jpeg(tmp_path):
    """A small image of dense texture hides the mark at the usual strength (it reads back with almost
    no bits to spare); the stage raises the strength until it has margin, and records it."""
    import cv2

    noise = np.random.default_rng(1).normal(0, 1, (256, 256, 3)).astype(np.float32)
    texture = cv2.GaussianBlur(noise, (0, 0), 1.0)
    path = tmp_path / "texture.png"
    Image.fromarray(np.clip(128 + texture / texture.std() * 40, 0, 255).astype(np.uint8)).save(path)
    [result] = process_images([path], Chain.build("watermark:id=5eed"), None, safety="off", progress=False, warn=lambda m: None)
    assert result.status == "kept", result.error
    entry = result.record.find("watermark")[0].result
    assert entry["strength"] > 1.0 and entry["summary"].endswith(f"strength {entry['strength']:g}")
    assert entry["readback"]["p_value"] <= builtin_method("sdmark").margin_p()
    buffer = io.BytesIO()
    result.item.image.save(buffer, "JPEG", quality=75)
    report = verify_image(Image.open(buffer).convert("RGB"))
    assert report["watermarked"] and report["detections"][0]["payload"] == "0000000000005eed"


def test_private_key_comes_from_the_environment_and_stays_out_of_the_record(photos, tmp_path, monkeypatch):
    path = tmp_path / "cat.png"
    photos["chelsea"].save(path)
    monkeypatch.setenv("SDMARK_WATERMARK_KEY", "our deployment secret")
    [result] = process_images([path], Chain.build("watermark:method=sdmark,id=beef"), None, safety="off", progress=False)
    assert result.status == "kept", result.error
    assert "secret" not in result.record.to_json()
    assert verify_image(result.item.image)["watermarked"]
    monkeypatch.delenv("SDMARK_WATERMARK_KEY")
    public = verify_image(result.item.image)
    assert not public["watermarked"] and not [d for d in public["detections"] if d["scheme"] == "sdmark"]


def test_mark_that_cannot_be_carried_fails_loudly(cli_runner, tmp_path):
    runner, cli = cli_runner
    Image.new("RGB", (512, 512), "white").save(tmp_path / "white.png")
    out = tmp_path / "out"
    result = runner.invoke(cli, ["process", str(tmp_path / "white.png"), "--chain", "watermark:method=dwtDct", "-o", str(out)])
    assert result.exit_code == 1
    assert "mark did not read back" in result.stdout
    assert not out.exists() or not any(out.iterdir())


def test_mark_lost_in_encoding_is_caught_in_the_written_file(cli_runner, photo_dir, tmp_path):
    runner, cli = cli_runner
    out = tmp_path / "out"
    result = runner.invoke(cli, ["process", str(photo_dir / "astronaut.png"), "--chain", "watermark:method=dwtDct",
                                 "--format", "jpeg", "--quality", "70", "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert "does not survive encoding to .jpg" in result.stdout
    assert not out.exists() or not any(out.iterdir())  # nothing unmarked left behind
    kept = runner.invoke(cli, ["process", str(photo_dir / "astronaut.png"), "--chain", "watermark:method=dwtDctSvd",
                               "--format", "jpeg", "--quality", "95", "-o", str(out), "--json", "--no-safety"])
    assert kept.exit_code == 0, kept.output
    entry = json.loads(kept.stdout)["record"]["stages"][0]["result"]
    assert "file_readback" not in entry  # the record is in the file before the read-back: it stays as written
    assert json.loads(kept.stdout)["checks"]["file_readback"]["band"] in ("likely", "very likely")


class _Methods:
    """A third-party plugin that registers watermark methods."""

    def __init__(self, *methods):
        self.methods = methods

    @hookimpl
    def sdmark_register_watermark_methods(self, register):
        for method in self.methods:
            register(method)


def test_a_plugin_method_without_a_strength_setting_marks_through_the_stage(photos, tmp_path, runtime, register_plugin):
    """A third-party method registers ``embed(rgb, ident)``; the stage must not hand it a strength."""
    from sdmark.plugins.watermark import methods

    dwt = builtin_method("dwtDctSvd")
    calls = []

    def embed(rgb, ident):
        calls.append(ident)
        return dwt.embed(rgb, ident)

    plain = methods.Method("plainplugin", "a plugin's method", embed, scheme=dwt.scheme, min_carriers=dwt.min_carriers)
    register_plugin(_Methods(plain), name="plain-methods")
    path = tmp_path / "cat.png"
    photos["chelsea"].save(path)
    [result] = process_images([path], Chain.build("watermark:method=plainplugin,id=ab", runtime), None, safety="off", progress=False)
    assert result.status == "kept", result.error
    assert calls == [bytes.fromhex("00000000000000ab")]
    assert result.record.stages[-1].result["strength"] == 1.0
    with pytest.raises(ValueError, match="has no strength 2"):
        plain.mark(np.asarray(photos["chelsea"]), b"\0" * 8, 2.0)
    with pytest.raises(ValueError, match="weakest first"):
        methods.Method("backwards", "strongest first", embed, scheme=dwt.scheme, strengths=(2.0, 1.0))


def test_a_mark_that_never_reads_back_reports_every_strength_tried(tmp_path, runtime, register_plugin):
    """The error names what each strength read back, not only the last; nothing is written."""
    from sdmark.plugins.watermark import methods

    def embed(rgb, ident, strength=1.0):  # a method whose mark the image swallows whole
        return rgb.copy()

    lost = methods.Method("lostplugin", "never reads back", embed, scheme="sdmark", strengths=(1.0, 2.0))
    register_plugin(_Methods(lost), name="lost-methods")
    path = tmp_path / "white.png"
    Image.new("RGB", (512, 512), "white").save(path)
    [result] = process_images([path], Chain.build("watermark:method=lostplugin,id=ab", runtime), OutputOptions(tmp_path / "out"), safety="off",
                              progress=False)
    assert result.status == "failed"
    assert "strength 1: none" in result.error, result.error
    assert "strength 2:" in result.error
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_existing_mark_is_never_replaced_silently(cli_runner, photos, tmp_path):
    runner, cli = cli_runner
    marked = tmp_path / "in" / "marked.png"
    marked.parent.mkdir()
    Image.fromarray(builtin_method("dwtDctSvd").embed(np.asarray(photos["astronaut"]), bytes.fromhex("00000000000000aa"))).save(marked)

    def run(chain: str, out: str) -> tuple[int, dict]:
        result = runner.invoke(cli, ["process", str(marked), "--chain", chain, "--no-safety", "-o", str(tmp_path / out),
                                     "--json", "--no-progress"])
        assert result.stdout, result.output
        return result.exit_code, json.loads(result.stdout.splitlines()[0])

    code, line = run("watermark", "fail")  # the default: fail, naming the mark
    assert code == 1 and line["status"] == "failed"
    assert "sdmark-dwtDctSvd mark (payload 00000000000000aa)" in line["error"] and "existing=keep" in line["error"]
    assert not (tmp_path / "fail").exists() or not list((tmp_path / "fail").iterdir())

    code, line = run("watermark:existing=keep", "keep")
    result = line["record"]["stages"][-1]["result"]
    assert code == 0 and result["embedded"] is False and result["existing_policy"] == "keep"
    assert [m["payload"] for m in result["existing"]] == ["00000000000000aa"]
    assert verify_file(line["path"])["detections"][0]["payload"] == "00000000000000aa"  # untouched

    code, line = run("watermark:existing=replace,id=bb", "replace")
    result = line["record"]["stages"][-1]["result"]
    assert code == 0 and result["existing_policy"] == "replace" and result["payload"] == "00000000000000bb"
    assert result["existing"][0]["scheme"] == "sdmark-dwtDctSvd" and "over the existing" in result["summary"]
    assert verify_file(line["path"])["detections"][0]["payload"] == "00000000000000bb"
