"""The safety stage with a test-only backend from a plugin: every policy, failing closed, the CLI report.

The backend (tests/plugins/flagger.py) flags images whose top-left pixel is magenta and raises on
images whose top-left pixel is green, so each test chooses exactly which images are flagged.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdmark.core.chain import Chain
from sdmark.core.errors import ChainError, ModelLoadError, PluginError
from sdmark.core.io import read_image
from sdmark.core.output import OutputOptions
from sdmark.core.runtime import hookimpl
from sdmark.core.process import process_images

PLUGIN = Path(__file__).parent / "plugins" / "flagger.py"


@pytest.fixture
def flagger(register_plugin, monkeypatch):
    """The flagger plugin module, registered with sdmark's plugin manager for one test."""
    spec = importlib.util.spec_from_file_location("sdmark_test_flagger", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # as an import would (its dataclasses look it up)
    spec.loader.exec_module(module)
    module.FlagMarked.calls = []
    return register_plugin(module, name="test-flagger")


def _marked(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    image = image.copy()
    image.putpixel((0, 0), colour if image.mode == "RGB" else (*colour, 255))
    return image


@pytest.fixture
def inputs(tmp_path, photos, flagger):
    """astronaut.png marked to be flagged, coffee.png and camera.png left alone."""
    folder = tmp_path / "in"
    folder.mkdir()
    _marked(photos["astronaut"], flagger.FLAG).save(folder / "astronaut.png")
    photos["coffee"].save(folder / "coffee.png")
    photos["camera"].save(folder / "camera.png")
    return folder


def _run(runtime, inputs: Path, spec: str, out: Path, **kwargs):
    results = process_images([inputs], Chain.build(spec, runtime), OutputOptions(out), progress=False, warn=lambda m: None, **kwargs)
    return {result.name: result for result in results}


def _safety(result) -> dict:
    (entry,) = result.record.find("safety")
    return entry.result


def _pixels(path_or_image) -> np.ndarray:
    image = read_image(path_or_image).image if isinstance(path_or_image, (str, Path)) else path_or_image
    return np.asarray(image, dtype=np.int16)


def test_unflagged_images_are_untouched_and_recorded_as_checked(runtime, inputs, tmp_path):
    results = _run(runtime, inputs, "safety:backend=test-flag", tmp_path / "out")
    coffee = results["coffee"]
    assert coffee.status == "written"
    assert np.array_equal(_pixels(coffee.path), _pixels(inputs / "coffee.png"))
    assert _safety(coffee) | {"scores": None} == {
        "backend": "test-flag", "verdict": "safe", "flagged": False, "reasons": [], "scores": None,
        "policy": "blur", "action": "none", "summary": "ok",
    }
    stored = read_image(coffee.path).metadata["record"]
    assert stored["safety"] == "checked" and stored["stages"][0]["result"]["verdict"] == "safe"


def test_default_policy_blurs_and_says_so(runtime, inputs, tmp_path):
    results = _run(runtime, inputs, "safety:backend=test-flag", tmp_path / "out")
    astronaut = results["astronaut"]
    result = _safety(astronaut)
    assert astronaut.status == "written"
    assert (result["verdict"], result["policy"], result["action"]) == ("flagged", "blur", "blurred")
    assert result["reasons"] == [{"label": "test-marker", "score": 0.99}]
    assert result["summary"] == "FLAGGED (test-marker 0.99) -> blurred"
    original, blurred = _pixels(inputs / "astronaut.png"), _pixels(astronaut.path)
    assert blurred.shape == original.shape
    # Detail (neighbour differences) is gone, yet it is not a black image.
    assert np.abs(np.diff(blurred, axis=1)).mean() < 0.1 * np.abs(np.diff(original, axis=1)).mean()
    assert blurred.mean() > 40
    stored = read_image(astronaut.path).metadata["record"]
    assert stored["safety"] == "checked" and stored["stages"][0]["result"]["action"] == "blurred"


def test_pixelate_black_and_flag_policies(runtime, inputs, tmp_path):
    original = _pixels(inputs / "astronaut.png")
    pixelated = _run(runtime, inputs, "safety:backend=test-flag,policy=pixelate,pixel_size=64", tmp_path / "p")["astronaut"]
    blocks = _pixels(pixelated.path)
    assert _safety(pixelated)["action"] == "pixelated"
    assert blocks.shape == original.shape and not np.array_equal(blocks, original)
    for y in range(0, 512, 64):  # every 64x64 block is one colour
        for x in range(0, 512, 64):
            block = blocks[y : y + 64, x : x + 64].reshape(-1, 3)
            assert (block == block[0]).all()

    black = _run(runtime, inputs, "safety:backend=test-flag,policy=black", tmp_path / "b")["astronaut"]
    assert _safety(black)["summary"] == "FLAGGED (test-marker 0.99) -> blacked out"
    assert not _pixels(black.path).any()

    flagged = _run(runtime, inputs, "safety:backend=test-flag,policy=flag", tmp_path / "f")["astronaut"]
    assert _safety(flagged)["summary"] == "FLAGGED (test-marker 0.99) -> kept (flag only)"
    assert flagged.status == "written" and np.array_equal(_pixels(flagged.path), original)
    assert read_image(flagged.path).metadata["record"]["stages"][0]["result"]["verdict"] == "flagged"


def test_replace_scales_the_users_image_to_fit(runtime, inputs, tmp_path):
    Image.new("RGB", (100, 50), (200, 30, 40)).save(tmp_path / "notice.png")
    result = _run(runtime, inputs, f"safety:backend=test-flag,policy=replace,image={tmp_path / 'notice.png'}", tmp_path / "out")
    replaced = _pixels(result["astronaut"].path)
    assert _safety(result["astronaut"])["action"] == "replaced"
    # 100x50 fits 512x512 as 512x256, centred: rows 128..383 are the notice, the rest black.
    assert (replaced[128:384] == (200, 30, 40)).all()
    assert not replaced[:128].any() and not replaced[384:].any()
    assert np.array_equal(_pixels(result["coffee"].path), _pixels(inputs / "coffee.png"))


def test_drop_writes_nothing_for_flagged_images(runtime, inputs, tmp_path):
    out = tmp_path / "out"
    results = _run(runtime, inputs, "safety:backend=test-flag,policy=drop", out)
    astronaut = results["astronaut"]
    assert astronaut.status == "dropped" and astronaut.path is None
    assert "flagged by safety (test-marker 0.99)" in astronaut.error
    assert _safety(astronaut)["action"] == "dropped" and astronaut.record.safety == "checked"
    assert sorted(p.name for p in out.iterdir()) == ["camera.png", "coffee.png"]


def test_policies_cover_the_alpha_channel(runtime, tmp_path, photos, flagger):
    folder = tmp_path / "in"
    folder.mkdir()
    rgba = photos["astronaut"].convert("RGBA")
    alpha = Image.new("L", rgba.size, 0)
    alpha.paste(255, (128, 128, 384, 384))  # an opaque square on a transparent field: a silhouette
    rgba.putalpha(alpha)
    _marked(rgba, flagger.FLAG).save(folder / "cutout.png")
    black = _pixels(_run(runtime, folder, "safety:backend=test-flag,policy=black", tmp_path / "b")["cutout"].item.image)
    assert black.shape == (512, 512, 4) and (black[..., 3] == 255).all() and not black[..., :3].any()
    blurred = _pixels(_run(runtime, folder, "safety:backend=test-flag", tmp_path / "blur")["cutout"].item.image)
    edge = blurred[256, 100:160, 3]  # the silhouette's sharp edge at x=128 is blurred too
    assert 0 < edge.min() < 100 and 150 < edge.max() < 255 and np.all(np.diff(edge) >= 0)


def test_an_image_the_backend_cannot_judge_fails_and_the_rest_go_on(runtime, inputs, tmp_path, photos, flagger):
    _marked(photos["chelsea"], flagger.BREAK).save(inputs / "chelsea.png")
    out = tmp_path / "out"
    results = _run(runtime, inputs, "safety:backend=test-flag", out, batch_size=8)
    chelsea = results["chelsea"]
    assert chelsea.status == "failed" and chelsea.path is None
    assert "could not check the image, so it is not written" in chelsea.error
    assert "test backend cannot read this image" in chelsea.error
    assert chelsea.record.safety == "not-run" and _safety(chelsea)["verdict"] == "error"
    assert {name: r.status for name, r in results.items()} == {
        "astronaut": "written", "camera": "written", "chelsea": "failed", "coffee": "written"}
    assert sorted(p.name for p in out.iterdir()) == ["astronaut.png", "camera.png", "coffee.png"]
    # One call for the whole batch, then one per image to isolate the broken one.
    assert flagger.FlagMarked.calls == [4, 1, 1, 1, 1]


def test_the_backend_judges_whole_batches(runtime, inputs, tmp_path, flagger):
    _run(runtime, inputs, "safety:backend=test-flag", tmp_path / "out", batch_size=2)
    assert flagger.FlagMarked.calls == [2, 1]


def test_a_backend_that_cannot_load_stops_the_run_before_any_write(runtime, inputs, tmp_path, cli_runner):
    out = tmp_path / "out"
    with pytest.raises(ModelLoadError, match="/nowhere/weights.bin"):
        _run(runtime, inputs, "safety:backend=test-unloadable", out)
    runner, cli = cli_runner
    result = runner.invoke(cli, ["process", str(inputs), "--chain", "safety:backend=test-unloadable", "-o", str(out)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: could not load test weights from /nowhere/weights.bin; pass safety:model=FOLDER")
    assert not out.exists() or not any(out.iterdir())


def test_cli_reports_flagged_and_clean_images(inputs, tmp_path, cli_runner):
    runner, cli = cli_runner
    out = tmp_path / "out"
    result = runner.invoke(cli, ["process", str(inputs), "--chain", "safety:backend=test-flag,policy=blur", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"written  {out / 'astronaut.png'}  [safety: FLAGGED (test-marker 0.99) -> blurred]",
        f"written  {out / 'camera.png'}  [safety: ok]",
        f"written  {out / 'coffee.png'}  [safety: ok]",
    ]
    assert "warning: safety flagged astronaut: test-marker 0.99 -> blurred" in result.stderr
    assert "3 written (1 flagged by safety) -> " in result.stderr

    dropped = runner.invoke(cli, ["process", str(inputs), "--chain", "safety:backend=test-flag,policy=drop",
                                  "-o", str(tmp_path / "d"), "--json"])
    assert dropped.exit_code == 0, dropped.output
    lines = {line["name"]: line for line in map(json.loads, dropped.stdout.splitlines())}
    verdict = lines["astronaut"]["record"]["stages"][0]["result"]
    assert lines["astronaut"]["status"] == "dropped" and lines["astronaut"]["path"] is None
    assert (verdict["verdict"], verdict["policy"], verdict["action"]) == ("flagged", "drop", "dropped")
    assert verdict["scores"] == {"test-marker": 0.99} and lines["astronaut"]["record"]["safety"] == "checked"
    assert lines["coffee"]["record"]["stages"][0]["result"]["verdict"] == "safe"


def test_no_safety_is_explicit_warned_and_recorded(inputs, tmp_path, cli_runner):
    runner, cli = cli_runner
    out = tmp_path / "out"
    result = runner.invoke(cli, ["process", str(inputs), "--chain", "safety:backend=test-flag", "--no-safety", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "safety checking is OFF" in result.stderr
    assert f"written  {out / 'astronaut.png'}  [safety: OFF]" in result.stdout.splitlines()
    record = read_image(out / "astronaut.png").metadata["record"]
    assert record["safety"] == "disabled" and record["stages"] == []
    # The marked image went through unchanged: nothing checked it.
    assert np.array_equal(_pixels(out / "astronaut.png"), _pixels(inputs / "astronaut.png"))


def test_bad_option_combinations_are_errors_before_any_work(runtime, flagger, tmp_path):
    cases = {
        "safety:backend=nope": "must be one of nudenet, sd-clip, test-flag, test-unloadable",
        "safety:policy=melt": "must be one of blur, pixelate, black, replace, flag, drop",
        "safety:policy=replace": "needs image=PATH",
        "safety:image=x.png": "only applies to policy=replace",
        "safety:policy=black,blur_radius=3": "only applies to policy=blur",
        f"safety:policy=replace,image={tmp_path / 'missing.png'}": "missing.png",
        "safety:backend=sd-clip,classes=ANUS_EXPOSED": "does not apply to backend 'sd-clip' (it is for nudenet)",
        "safety:backend=test-flag,sensitivity=0.1": "does not apply to backend 'test-flag' (it is for sd-clip)",
        "safety:threshold=2": "must be <= 1.0",
    }
    for spec, message in cases.items():
        with pytest.raises(ChainError, match=re.escape(message)):
            Chain.build(spec, runtime).validate("process")
    # A backend from a plugin is a valid choice, and is listed.
    assert Chain.build("safety:backend=test-flag", runtime).validate("process") == []


def test_backend_names_must_be_unique_across_plugins(runtime, register_plugin, flagger):
    from sdmark.plugins.safety.backends import SafetyBackend, backend_registry

    class Impostor(SafetyBackend):
        name = "test-flag"

        def check(self, images):
            return []

    class Plugin:
        @hookimpl
        def sdmark_register_safety_backends(self, register):
            register(Impostor)

    register_plugin(Plugin(), name="impostor")
    with pytest.raises(PluginError, match="'test-flag' is registered twice"):
        backend_registry(runtime)


def test_stages_listing_shows_plugin_backends(flagger, cli_runner):
    runner, cli = cli_runner
    listing = [json.loads(line) for line in runner.invoke(cli, ["stages", "--json"]).stdout.splitlines()]
    (safety,) = [stage for stage in listing if stage["name"] == "safety"]
    options = {option["name"]: option for option in safety["options"]}
    assert options["backend"]["default"] == "nudenet"
    assert set(options["backend"]["choices"]) == {"nudenet", "sd-clip", "test-flag", "test-unloadable"}
    assert options["policy"]["default"] == "blur"


def test_only_pixel_changing_policies_after_a_watermark_warn(runtime):
    from sdmark.core.chain import Chain

    assert Chain.build("watermark safety:policy=flag", runtime).validate("process") == []
    assert Chain.build("watermark safety:policy=drop", runtime).validate("process") == []
    [warning] = Chain.build("watermark safety:policy=blur", runtime).validate("process")
    assert "watermark may be lost" in warning
