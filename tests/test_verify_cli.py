"""``sdmark verify``: human lines, JSON lines, exit codes, --jobs, schemes, the inspect hook."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdmark.core.plugins import hookimpl
from sdmark.plugins.watermark.methods import get_method


@pytest.fixture
def marked_dir(tmp_path: Path, photos) -> Path:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    rgb = np.asarray(photos["astronaut"])
    Image.fromarray(get_method("dwtDctSvd").embed(rgb, bytes.fromhex("00000000000000aa"))).save(folder / "a.png")
    Image.fromarray(get_method("dwtDct").embed(np.asarray(photos["coffee"]), bytes.fromhex("00000000000000bb"))).save(
        folder / "sub" / "b.png")
    return folder


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_all_marked_exits_0_with_json_fields(cli_runner, marked_dir):
    runner, cli = cli_runner
    result = runner.invoke(cli, ["verify", str(marked_dir), "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    reports = _json_lines(result.stdout)
    assert [Path(r["path"]).name for r in reports] == ["a.png", "b.png"]  # recursive, in order
    for report, payload, scheme in zip(reports, ["00000000000000aa", "00000000000000bb"],
                                       ["sdmark-dwtDctSvd", "sdmark-dwtDct"]):
        assert report["watermarked"] is True and report["error"] is None
        top = report["detections"][0]
        assert {"scheme", "p_value", "payload", "band"} <= set(top)
        assert (top["scheme"], top["payload"], top["band"]) == (scheme, payload, "very likely")
        assert top["p_value"] < 1e-6
    assert "2 watermarked" in result.stderr


def test_unmarked_exits_1_and_unreadable_exits_2(cli_runner, marked_dir, photo_dir, tmp_path):
    runner, cli = cli_runner
    result = runner.invoke(cli, ["verify", str(marked_dir / "a.png"), str(photo_dir / "chelsea.png"), "--no-progress"])
    assert result.exit_code == 1
    lines = [line for line in result.stdout.splitlines() if not line.startswith(" ")]  # details are indented
    assert lines[0].startswith("watermarked") and "payload=00000000000000aa" in lines[0]
    assert lines[1].startswith("unmarked") and "chelsea.png" in lines[1]
    assert "1 watermarked, 1 unmarked" in result.stderr

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    missing = tmp_path / "missing.png"
    result = runner.invoke(cli, ["verify", str(bad), str(missing), str(marked_dir / "a.png"), "--json", "--no-progress"])
    assert result.exit_code == 2
    reports = _json_lines(result.stdout)
    assert [r["watermarked"] for r in reports] == [None, None, True]  # the rest go on
    assert "broken.png" in reports[0]["error"] and "no such file" in reports[1]["error"]


def test_jobs_gives_the_same_reports_in_order(cli_runner, marked_dir, photo_dir):
    runner, cli = cli_runner
    args = ["verify", str(marked_dir), str(photo_dir), "--json", "--no-progress"]
    serial = runner.invoke(cli, args)
    parallel = runner.invoke(cli, [*args, "--jobs", "2"])
    assert serial.exit_code == parallel.exit_code == 1
    strip = lambda reports: [{k: r[k] for k in ("path", "watermarked", "detections", "error")} for r in reports]
    assert strip(_json_lines(parallel.stdout)) == strip(_json_lines(serial.stdout))
    assert len(_json_lines(serial.stdout)) == 5


def test_progress_bar_goes_to_stderr(cli_runner, marked_dir):
    runner, cli = cli_runner
    result = runner.invoke(cli, ["verify", str(marked_dir), "--json", "--progress"])
    assert result.exit_code == 0
    assert "verifying" in result.stderr
    assert all(line.startswith("{") for line in result.stdout.splitlines())


def test_scheme_selection_and_listing(cli_runner, marked_dir):
    runner, cli = cli_runner
    only = runner.invoke(cli, ["verify", str(marked_dir / "a.png"), "--scheme", "sdxl", "--json", "--no-progress"])
    assert only.exit_code == 1
    assert _json_lines(only.stdout)[0]["checked"] == ["sdxl"]
    unknown = runner.invoke(cli, ["verify", str(marked_dir), "--scheme", "nope"])
    assert unknown.exit_code == 2 and "known schemes" in unknown.stderr
    listing = runner.invoke(cli, ["verify", "--list-schemes"])
    assert listing.exit_code == 0
    names = [line.split()[0] for line in listing.stdout.splitlines()]
    assert names[:4] == ["sd-v1", "sd-v2", "sdxl", "invokeai"] and "sdmark-rivaGan" in names


def test_empty_folder_is_an_error(cli_runner, tmp_path):
    runner, cli = cli_runner
    result = runner.invoke(cli, ["verify", str(tmp_path)])
    assert result.exit_code == 2 and "no images found" in result.stderr


class _Inspector:
    @hookimpl
    def sdmark_inspect_image(self, path, image, metadata, report):
        report["inspected"] = {"size": list(image.size), "had_detections": bool(report["detections"])}


def test_plugins_add_fields_through_the_inspect_hook(cli_runner, register_plugin, marked_dir):
    register_plugin(_Inspector(), name="test-inspector")
    runner, cli = cli_runner
    result = runner.invoke(cli, ["verify", str(marked_dir / "a.png"), "--json", "--no-progress"])
    report = _json_lines(result.stdout)[0]
    assert report["inspected"] == {"size": [512, 512], "had_detections": True}


class _AcmeSchemes:
    """A third-party plugin contributing a scheme, the way any package would."""

    @hookimpl
    def sdmark_register_watermark_schemes(self, register):
        from sdmark.plugins.watermark.schemes import FixedMessageScheme

        register(FixedMessageScheme.from_bytes("acme", "ACME's generator: 'ACME-AI1', dwtDct", b"ACME-AI1"))


def test_plugins_register_schemes_that_verify_then_names(cli_runner, register_plugin, photos, tmp_path):
    import cv2
    from imwatermark import WatermarkEncoder

    from sdmark.plugins.watermark.schemes import reset_scheme_registry

    encoder = WatermarkEncoder()
    encoder.set_watermark("bytes", b"ACME-AI1")
    bgr = encoder.encode(cv2.cvtColor(np.asarray(photos["astronaut"]), cv2.COLOR_RGB2BGR), "dwtDct")
    Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).save(tmp_path / "acme.png")
    register_plugin(_AcmeSchemes(), name="test-acme")
    reset_scheme_registry()
    try:
        runner, cli = cli_runner
        result = runner.invoke(cli, ["verify", str(tmp_path / "acme.png"), "--no-progress"])
        assert result.exit_code == 0, result.output
        assert "acme (very likely" in result.stdout and "payload=ACME-AI1" in result.stdout
    finally:
        reset_scheme_registry()


def test_verify_without_any_scheme_fails_closed(marked_dir, tmp_path):
    """Issue 15: with the watermark plugin disabled there is nothing to check with: exit 2, never "unmarked"."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "SDMARK_DISABLE_PLUGINS": "watermark", "SDMARK_REGISTRY": str(tmp_path / "registry.sqlite")}
    done = subprocess.run([sys.executable, "-m", "sdmark.cli", "verify", "--json", str(marked_dir / "a.png")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "no watermark scheme is available" in done.stderr and '"watermarked": false' not in done.stdout


def test_public_key_detections_say_what_they_are_worth(cli_runner, photos, tmp_path):
    runner, cli = cli_runner
    path = tmp_path / "marked.png"
    Image.fromarray(get_method("sdmark").embed(np.asarray(photos["astronaut"]), bytes.fromhex("00000000000000cc"))).save(path)
    result = runner.invoke(cli, ["verify", "--no-progress", str(path)])
    report = json.loads(runner.invoke(cli, ["verify", "--json", "--no-progress", str(path)]).stdout)
    assert report["detections"][0]["key"] == "public"
    assert "key: public" in result.stdout and "anyone can make or remove this mark" in result.stdout


def test_marks_the_record_names_but_no_scheme_found_are_named(cli_runner, photos, tmp_path):
    from PIL import PngImagePlugin

    runner, cli = cli_runner
    record = {"schema": "sdmark/record@1", "stages": [
        {"stage": "watermark", "result": {"method": "rivaGan", "scheme": "rivagan", "payload": None}},
        {"stage": "watermark", "result": {"method": "sdmark", "scheme": "sdmark", "payload": "00000000000000dd"}}]}
    info = PngImagePlugin.PngInfo()
    info.add_text("sdmark", json.dumps(record))
    path = tmp_path / "claims.png"
    photos["chelsea"].save(path, pnginfo=info)
    result = runner.invoke(cli, ["verify", "--no-progress", str(path)])
    report = json.loads(runner.invoke(cli, ["verify", "--json", "--no-progress", str(path)]).stdout)
    assert result.exit_code == 1 and [m["scheme"] for m in report["expected_marks"]] == ["rivagan", "sdmark"]
    assert "not found: the image's own record says a rivagan mark was embedded" in result.stdout
    assert "--all-schemes" in result.stdout and "SDMARK_WATERMARK_KEY" in result.stdout
