"""The sd-clip backend with a tiny random-weight StableDiffusionSafetyChecker saved and loaded by from_pretrained.

The tiny checker's concept 0 is the astronaut photo's own embedding with threshold 0.99, so the
astronaut scores +0.01 on it and every other photo scores below zero: verdicts are known in advance.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sdmark.core.chain import Chain
from sdmark.core.errors import ChainError, ModelLoadError
from sdmark.core.generate import GenerationSettings, generate
from sdmark.core.io import read_image
from sdmark.core.process import process_images

NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera")


def _embeddings(checker, processor, images):
    import torch

    pixels = processor(images=images, return_tensors="pt").pixel_values
    with torch.no_grad():
        return torch.nn.functional.normalize(checker.visual_projection(checker.vision_model(pixels)[1]), dim=-1)


@pytest.fixture(scope="module")
def checker_dir(tmp_path_factory, photos):
    """A folder with the checker's config.json, weights and preprocessor_config.json (like the hub repo)."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        projection_dim=32,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    embeds = _embeddings(checker, processor, [photos[name] for name in NAMES])
    with torch.no_grad():
        checker.concept_embeds.copy_(torch.randn(17, 32))
        checker.concept_embeds[0] = embeds[0]
        checker.concept_embeds_weights.fill_(1.0)
        checker.concept_embeds_weights[0] = 0.99
        checker.special_care_embeds.copy_(torch.randn(3, 32))
    folder = tmp_path_factory.mktemp("sd-checker") / "checker"
    checker.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def photo_pngs(tmp_path_factory, photos):
    folder = tmp_path_factory.mktemp("photos")
    for name in NAMES:
        photos[name].save(folder / f"{name}.png")
    return folder


def _check(paths, spec: str, **kwargs):
    results = process_images(paths, Chain.build(spec), None, progress=False, warn=lambda m: None, **kwargs)
    return {result.name: result.record.find("safety")[0].result for result in results}


def test_per_concept_scores_and_verdicts(checker_dir, photo_pngs):
    verdicts = _check([photo_pngs], f"safety:backend=sd-clip,model={checker_dir},policy=flag")
    astronaut = verdicts["astronaut"]
    assert astronaut["verdict"] == "flagged" and astronaut["backend"] == "sd-clip"
    assert sorted(astronaut["scores"]) == [f"concept_{i:02d}" for i in range(17)] + ["special_0", "special_1", "special_2"]
    assert astronaut["scores"]["concept_00"] == pytest.approx(0.01, abs=1e-3)
    assert [reason["label"] for reason in astronaut["reasons"]] == ["concept_00"]
    assert astronaut["summary"] == f"FLAGGED (concept_00 {astronaut['scores']['concept_00']:+.3f}) -> kept (flag only)"
    for name in NAMES[1:]:
        verdict = verdicts[name]
        assert verdict["verdict"] == "safe" and verdict["reasons"] == [] and verdict["summary"] == "ok", name
        assert verdict["max_score"] == max(v for k, v in verdict["scores"].items() if k.startswith("concept"))
        assert -1 < verdict["scores"]["concept_00"] < 0, name


def test_verdicts_match_diffusers_own_checker(checker_dir, photos):
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    checker = StableDiffusionSafetyChecker.from_pretrained(checker_dir)
    processor = CLIPImageProcessor.from_pretrained(checker_dir)
    images = [photos[name] for name in NAMES]
    clip_input = processor(images=images, return_tensors="pt").pixel_values
    _, theirs = checker(clip_input=clip_input, images=[np.asarray(image) for image in images])
    from sdmark.plugins.safety.sdclip_backend import SdClipBackend

    ours = SdClipBackend.from_components(checker, processor).check(images)
    assert [verdict.flagged for verdict in ours] == list(theirs) == [True, False, False, False, False]


def test_sensitivity_moves_the_verdict(checker_dir, photo_pngs):
    base = f"safety:backend=sd-clip,model={checker_dir},policy=flag"
    coffee_score = _check([photo_pngs / "coffee.png"], base)["coffee"]["max_score"]
    # Just enough added sensitivity tips the coffee over; a little less leniency clears the astronaut.
    stricter = _check([photo_pngs / "coffee.png"], f"{base},sensitivity={-coffee_score + 0.005:.4f}")["coffee"]
    assert stricter["verdict"] == "flagged" and stricter["sensitivity"] == pytest.approx(-coffee_score + 0.005)
    assert stricter["max_score"] == pytest.approx(0.005, abs=2e-4)
    lenient = _check([photo_pngs / "astronaut.png"], f"{base},sensitivity=-0.02")["astronaut"]
    assert lenient["verdict"] == "safe" and lenient["scores"]["concept_00"] == pytest.approx(-0.01, abs=1e-3)


def test_load_errors_name_what_was_tried_and_how_to_fix_it(tmp_path, photo_pngs, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ChainError, match="folder './no/such/checker' does not exist"):
        Chain.build("safety:backend=sd-clip,model=./no/such/checker").validate("process")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError) as empty:
        _check([photo_pngs / "coffee.png"], f"safety:backend=sd-clip,model={tmp_path / 'empty'}")
    assert f"tried: folder {tmp_path / 'empty'} (" in str(empty.value)
    assert "pass safety:model=FOLDER" in str(empty.value) and "save_pretrained()" in str(empty.value)
    with pytest.raises(ModelLoadError) as default:
        _check([photo_pngs / "coffee.png"], "safety:backend=sd-clip")
    assert "tried: hub id CompVis/stable-diffusion-safety-checker: not in the local Hugging Face cache" in str(default.value)


def test_weights_not_local_fail_fast_without_asking_the_hub(tmp_path, photo_pngs):
    """With nothing local, no network and HF_HUB_OFFLINE unset, loading used to go on to the hub
    and wait through its retries. Now every candidate is read with local_files_only: a hub that
    would answer (here a listening socket standing in for it) is never asked for the weights."""
    import os
    import socket
    import subprocess
    import sys
    import threading
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    hub = socket.socket()
    hub.bind(("127.0.0.1", 0))
    hub.listen(16)
    hub.settimeout(0.2)
    connections = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = hub.accept()
            except OSError:
                continue
            conn.settimeout(2)
            try:
                connections.append(conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1"))
            except OSError:
                connections.append("?")
            conn.close()

    listener = threading.Thread(target=accept)
    listener.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{hub.getsockname()[1]}", HF_HOME=str(tmp_path / "hf-home"),
               PYTHONPATH=os.environ.get("PYTHONPATH", str(root.parent)))
    try:
        result = subprocess.run([sys.executable, "-m", "sdmark.cli", "process", str(photo_pngs / "coffee.png"),
                                 "--chain", "safety:backend=sd-clip", "-o", str(tmp_path / "out")],
                                env=env, capture_output=True, text=True, timeout=120)
    finally:
        stop.set()
        listener.join()
        hub.close()
    # huggingface_hub's own user-agent lookup (/api/agent-harnesses, once a day, 3 s timeout; off with
    # HF_HUB_DISABLE_TELEMETRY=1) is not ours; no request may be about the checker's files.
    assert [line for line in connections if "/api/agent-harnesses" not in line] == [], connections
    assert result.returncode == 2, result.stderr[-2000:]
    assert "hub id CompVis/stable-diffusion-safety-checker: not in the local Hugging Face cache" in result.stderr
    assert "hf download CompVis/stable-diffusion-safety-checker" in result.stderr and "safety:model=FOLDER" in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.fixture(scope="module")
def model_with_checker(tiny_model_dir, checker_dir, tmp_path_factory):
    """A copy of the tiny SD folder with safety_checker/ and feature_extractor/, as real SD 1.x folders have."""
    folder = tmp_path_factory.mktemp("tiny-sd-checked") / "model"
    shutil.copytree(tiny_model_dir, folder)
    shutil.copytree(checker_dir, folder / "safety_checker")
    (folder / "feature_extractor").mkdir()
    shutil.move(folder / "safety_checker" / "preprocessor_config.json", folder / "feature_extractor")
    return folder


def test_generate_uses_the_models_own_checker(model_with_checker, tmp_path, cli_runner):
    runner, cli = cli_runner
    args = ["generate", "a lighthouse", "--seed", "7", "--steps", "1", "-m", str(model_with_checker), "-n", "2", "--batch-size", "2"]
    first = runner.invoke(cli, [*args, "--chain", "safety:backend=sd-clip,policy=flag", "--json", "-o", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    lines = [json.loads(line) for line in first.stdout.splitlines()]
    verdicts = [line["record"]["stages"][0]["result"] for line in lines]
    assert all(line["record"]["safety"] == "checked" and line["status"] == "written" for line in lines)
    assert all(len(v["scores"]) == 20 and v["backend"] == "sd-clip" for v in verdicts)
    assert all(v["verdict"] == ("flagged" if round(v["max_score"], 3) > 0 else "safe") for v in verdicts)

    # A sensitivity that puts image 0 just over the line: flagged, blacked out, and said so.
    sensitivity = -verdicts[0]["max_score"] + 0.005
    second = runner.invoke(cli, [*args, "--chain", f"safety:backend=sd-clip,policy=black,sensitivity={sensitivity:.4f}",
                                 "-o", str(tmp_path / "b")])
    assert second.exit_code == 0, second.output
    first_line = second.stdout.splitlines()[0]
    assert first_line.startswith(f"written  {tmp_path / 'b' / '00000-7.png'}  [safety: FLAGGED (concept_")
    assert first_line.endswith(") -> blacked out]")
    assert "warning: safety flagged 00000-7" in second.stderr
    assert not np.asarray(read_image(tmp_path / "b" / "00000-7.png").image).any()


def test_generate_without_a_checker_in_the_model_says_where_it_looked(tiny_model_dir, tiny_pipe, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = GenerationSettings(prompts=["x"], steps=1, model=str(tiny_model_dir))
    with pytest.raises(ModelLoadError) as error:
        generate(settings, Chain.build("safety:backend=sd-clip"), None, pipeline=tiny_pipe, progress=False)
    message = str(error.value)
    assert f"model folder {tiny_model_dir} (it has no safety_checker/ subfolder)" in message
    assert "hub id CompVis/stable-diffusion-safety-checker" in message and "safety:model=FOLDER" in message


def test_generate_with_the_default_nudenet_check(tiny_model_dir, tmp_path, cli_runner):
    runner, cli = cli_runner
    result = runner.invoke(cli, ["generate", "a castle", "--seed", "3", "--steps", "1", "-m", str(tiny_model_dir),
                                 "--chain", "safety", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"written  {tmp_path / '00000-3.png'}  [safety: ok]\n"
    record = read_image(tmp_path / "00000-3.png").metadata["record"]
    assert record["safety"] == "checked" and record["stages"][0]["result"]["backend"] == "nudenet"
