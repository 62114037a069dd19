"""Device names the user gives: one clean error for a device this machine lacks or torch does not know."""

from __future__ import annotations

import pytest
import torch
from sdmark.core.errors import SdmarkError
from sdmark.core.pipeline import pick_device

MPS_HERE = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


@pytest.mark.parametrize("command", ["generate", "process"])
@pytest.mark.parametrize(("device", "message"), [
    pytest.param("mps", "device 'mps' requested but Apple's MPS is not available (use --device cpu)",
                 marks=pytest.mark.skipif(MPS_HERE, reason="this machine has MPS")),
    ("tpu", "device 'tpu' is not a device torch knows; choose auto, cpu, cuda, cuda:N or mps"),
    ("meta", "device 'meta' is not supported by sdmark here"),
])
def test_missing_or_unknown_devices_are_one_line_errors(cli_runner, tiny_model_dir, photo_dir, tmp_path, command,
                                                        device, message):
    runner, cli = cli_runner
    if command == "generate":
        args = ["generate", "x", "-m", str(tiny_model_dir), "--steps", "1", "--no-safety", "--chain", ""]
    else:
        args = ["process", str(photo_dir), "--no-safety", "--chain", ""]
    result = runner.invoke(cli, [*args, "--device", device, "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
    assert errors == [f"Error: {message}"] or (len(errors) == 1 and message in errors[0]), result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_cpu_and_auto_still_resolve():
    assert pick_device("cpu") == "cpu"
    assert pick_device(None) in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(SdmarkError, match="CUDA is not available"):
            pick_device("cuda")
