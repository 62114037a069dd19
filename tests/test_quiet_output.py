"""Library noise stays off the user's terminal unless -v; loading goes offline first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sdmark.core.chain import Chain
from sdmark.core.errors import ModelLoadError
from sdmark.core.generate import GenerationSettings, generate

ROOT = Path(__file__).resolve().parents[2]


def _sdmark(args: list[str], **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("SDMARK_VERBOSE", "SDMARK_DEBUG",
                                                                      "TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY")}
    environment.update(PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **env)
    return subprocess.run([sys.executable, "-m", "sdmark.cli", *args], capture_output=True, text=True,
                          env=environment, timeout=300)


@pytest.mark.slow
def test_fp16_on_cpu_and_unipc_give_one_line_of_ours_and_v_shows_the_libraries(tiny_model_dir, tmp_path):
    """A real process: the libraries' loggers hold the real stderr, which CliRunner cannot capture."""
    args = ["generate", "x", "-m", str(tiny_model_dir), "--steps", "2", "--dtype", "fp16", "--device", "cpu",
            "--scheduler", "unipc", "--no-safety", "--chain", ""]
    quiet = _sdmark([*args, "-o", str(tmp_path / "a")])
    assert quiet.returncode == 0, quiet.stderr
    lines = quiet.stderr.splitlines()
    ours = ("warning: --dtype fp16 on the CPU: slower than fp32 there and pixels differ from a GPU's; "
            "fp16 is meant for GPUs (auto picks fp32 on the CPU)")
    assert [line for line in lines if ("fp16" in line or "float16" in line) and "written" not in line] == [ours]
    assert all(line.startswith(("warning: ", "1 written")) for line in lines), quiet.stderr
    loud = _sdmark(["-v", *args, "-o", str(tmp_path / "b")])
    assert loud.returncode == 0, loud.stderr
    assert "Pipelines loaded with `dtype=torch.float16` cannot run with `cpu` device" in loud.stderr


def test_a_local_model_without_a_checker_never_asks_the_hub(tiny_model_dir, tiny_pipe, monkeypatch):
    # Network allowed as far as the settings go: the local model alone keeps the hub out.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tiny_model_dir.parent / "empty-hub-cache"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # would fail loudly (and retry) if asked
    settings = GenerationSettings(prompts=["x"], steps=1, model=str(tiny_model_dir))
    with pytest.raises(ModelLoadError) as error:
        generate(settings, Chain.build("safety:backend=sd-clip"), None, pipeline=tiny_pipe, progress=False)
    message = str(error.value)
    assert "hub id CompVis/stable-diffusion-safety-checker: not in the local Hugging Face cache" in message
    assert "never asked" in message and "hf download CompVis/stable-diffusion-safety-checker" in message
    assert "127.0.0.1" not in message


def test_sdxl_is_loaded_without_arguments_it_does_not_take(tmp_path_factory):
    """The source of "Keyword arguments {'safety_checker': None, ...} are not expected" is gone, not only hidden."""
    import logging

    import diffusers
    import torch
    from sdmark.core.pipeline import sdmark_load_pipeline
    from sdmark.testing.tiny import save_tiny_model, save_tiny_sdxl_model

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("diffusers")
    handler = Keep(level=logging.WARNING)
    before = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_warning()
    logger.addHandler(handler)
    try:
        sdxl = save_tiny_sdxl_model(tmp_path_factory.mktemp("quiet-sdxl") / "model")
        sdmark_load_pipeline(model=str(sdxl), device="cpu", dtype=torch.float32, options={})
        sd = save_tiny_model(tmp_path_factory.mktemp("quiet-sd") / "model")
        pipe = sdmark_load_pipeline(model=str(sd), device="cpu", dtype=torch.float32, options={})
    finally:
        logger.removeHandler(handler)
        diffusers.utils.logging.set_verbosity(before)
    assert not [r for r in records if "are not expected" in r.getMessage()], [r.getMessage() for r in records]
    assert getattr(pipe, "safety_checker", None) is None  # SD 1.x still loads without diffusers' checker
