"""The upscale stage: plain resampling, super-resolution model files (spandrel), phases, CLI."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdmark.core.chain import Chain
from sdmark.core.errors import ChainError, ModelLoadError
from sdmark.core.generate import GenerationSettings, generate
from sdmark.core.io import read_image
from sdmark.core.process import process_images
from sdmark.core.records import ProvenanceRecord
from sdmark.core.stages import ImageItem, RunContext
from sdmark.testing.tiny_upscalers import build_tiny_esrgan, save_tiny_esrgan


@pytest.fixture(scope="module")
def sr_files(tmp_path_factory) -> dict[str, Path]:
    """Tiny ESRGAN weights (seeded) as .safetensors (x4) and Real-ESRGAN-style .pth (x2)."""
    folder = tmp_path_factory.mktemp("sr-models")
    return {
        "x4": save_tiny_esrgan(folder / "tiny-x4.safetensors", scale=4, seed=1),
        "x2": save_tiny_esrgan(folder / "tiny-x2.pth", scale=2, seed=2),
    }


def upscale(image: Image.Image, spec: str) -> tuple[Image.Image, dict]:
    """Run one image through ``spec`` with the Python API; return the image and the upscale result."""
    chain = Chain.build(spec)
    chain.validate("process")
    context = RunContext(mode="process")
    chain.setup(context)
    item = ImageItem(image=image, record=ProvenanceRecord(kind="processed"), name="x")
    chain.run_process([item], context)
    assert item.error is None, item.error
    return item.image, item.record.find("upscale")[0].result


def reference_esrgan(image: Image.Image, scale: int, seed: int) -> np.ndarray:
    """The network that was saved, run directly: what spandrel must reproduce from the file."""
    net = build_tiny_esrgan(scale=scale, seed=seed)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        y = net(x).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    return np.round(y * 255).astype(np.uint8)


def diff(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


# --- plain resampling ------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("spec", "size"),
    [
        ("upscale", (600, 400)),  # lanczos, default factor 2
        ("upscale:factor=1.5", (450, 300)),
        ("upscale:width=400", (400, 267)),  # aspect ratio kept
        ("upscale:height=100", (150, 100)),
        ("upscale:width=640,height=480", (640, 480)),
        ("upscale:backend=opencv", (600, 400)),
        ("upscale:backend=opencv,interpolation=area,factor=3", (900, 600)),
        ("upscale:backend=opencv,interpolation=lanczos4,width=512,height=512", (512, 512)),
    ],
)
def test_plain_backends_sizes(photos, spec, size):
    image = photos["chelsea"].resize((300, 200))
    out, result = upscale(image, spec)
    assert out.size == size and out.mode == "RGB"
    assert result["input_size"] == [300, 200] and result["output_size"] == list(size)
    assert result["summary"].endswith(f"300x200 -> {size[0]}x{size[1]}")


def test_lanczos_is_pillow_and_opencv_interpolations_differ(photos):
    image = photos["coffee"].resize((120, 80))
    out, _ = upscale(image, "upscale:factor=2")
    assert np.array_equal(np.asarray(out), np.asarray(image.resize((240, 160), Image.Resampling.LANCZOS)))
    nearest, _ = upscale(image, "upscale:backend=opencv,interpolation=nearest")
    cubic, result = upscale(image, "upscale:backend=opencv,interpolation=cubic")
    assert result["interpolation"] == "cubic"
    assert np.array_equal(np.asarray(nearest)[::2, ::2], np.asarray(image))  # nearest x2 repeats pixels
    assert diff(nearest, cubic) > 10


def test_alpha_is_kept(photos):
    image = photos["coffee"].resize((64, 48)).convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize((64, 48)))
    for spec in ("upscale", "upscale:backend=opencv"):
        out, _ = upscale(image, spec)
        assert out.mode == "RGBA" and out.size == (128, 96)
        assert out.getchannel("A").getextrema()[1] > 200


def test_bad_option_combinations_are_chain_errors(tmp_path):
    with pytest.raises(ChainError, match="either factor or width/height"):
        Chain.build("upscale:factor=2,width=100").validate("process")
    with pytest.raises(ChainError, match="must be one of"):
        Chain.build("upscale:backend=bicubic")
    with pytest.raises(ChainError, match="interpolation must be one of"):
        Chain.build("upscale:backend=opencv,interpolation=sinc")
    with pytest.raises(ChainError, match="needs model=PATH"):
        Chain.build("upscale:backend=model").validate("process")
    with pytest.raises(ChainError, match="always doubles"):
        Chain.build("upscale:backend=sd-latent-x2,factor=4").validate("generate")


def test_output_over_the_pixel_limit_fails_the_image_not_the_run(photos, monkeypatch, tmp_path):
    monkeypatch.setenv("SDMARK_MAX_PIXELS", "100000")
    source = tmp_path / "in.png"
    photos["rocket"].resize((200, 150)).save(source)
    results = process_images([source], Chain.build("upscale:factor=4"), None, safety="off", progress=False, warn=lambda m: None)
    assert results[0].status == "failed" and "MP limit" in results[0].error


# --- super-resolution model files ------------------------------------------------------------

def test_safetensors_model_reproduces_the_saved_network(sr_files, photos):
    image = photos["astronaut"].resize((40, 32))
    out, result = upscale(image, f"upscale:backend=model,model={sr_files['x4']},tile=0")
    assert out.size == (160, 128)
    assert diff(out, reference_esrgan(image, scale=4, seed=1)) <= 1
    assert result["model"] == {"file": "tiny-x4.safetensors", "architecture": "ESRGAN", "scale": 4, "dtype": "float32"}
    assert "resized" not in result


def test_pth_model_with_pixel_unshuffle_loads_and_matches(sr_files, photos):
    image = photos["astronaut"].resize((40, 32))
    out, result = upscale(image, f"upscale:backend=model,model={sr_files['x2']},tile=0")
    assert out.size == (80, 64) and result["model"]["scale"] == 2
    assert diff(out, reference_esrgan(image, scale=2, seed=2)) <= 1


def test_tiled_and_untiled_outputs_agree(sr_files, photos):
    image = photos["chelsea"].resize((70, 52))
    whole, _ = upscale(image, f"upscale:backend=model,model={sr_files['x4']},tile=0")
    tiled, result = upscale(image, f"upscale:backend=model,model={sr_files['x4']},tile=32,overlap=24")
    assert result["tile"] == 32 and tiled.size == whole.size == (280, 208)
    assert diff(tiled, whole) <= 1
    assert np.mean(np.asarray(tiled) != np.asarray(whole)) < 0.001
    # Without context around the tiles the seams show: the agreement above is not trivial.
    seams, _ = upscale(image, f"upscale:backend=model,model={sr_files['x4']},tile=32,overlap=0")
    assert diff(seams, whole) > 2
    # A pixel-unshuffle (x2) model gets tiles aligned to its 2x2 grouping.
    whole2, _ = upscale(image, f"upscale:backend=model,model={sr_files['x2']},tile=0")
    tiled2, _ = upscale(image, f"upscale:backend=model,model={sr_files['x2']},tile=30,overlap=45")
    assert diff(tiled2, whole2) <= 1


def test_fixed_scale_model_is_resized_to_the_exact_target(sr_files, photos):
    image = photos["rocket"].resize((48, 32))
    out, result = upscale(image, f"upscale:backend=model,model={sr_files['x4']},width=100")
    assert out.size == (100, 67)
    assert result["resized"] == {"from": [192, 128], "to": [100, 67], "with": "lanczos"}
    assert result["summary"] == "model 48x32 -> 100x67 (lanczos to target)"


def test_model_keeps_alpha(sr_files, photos):
    image = photos["coffee"].resize((32, 24)).convert("RGBA")
    image.putalpha(128)
    out, _ = upscale(image, f"upscale:backend=model,model={sr_files['x4']}")
    assert out.mode == "RGBA" and out.size == (128, 96) and out.getchannel("A").getextrema() == (128, 128)


def test_missing_and_wrong_type_model_files_are_chain_errors(tmp_path):
    with pytest.raises(ChainError, match="does not exist"):
        Chain.build(f"upscale:backend=model,model={tmp_path / 'nope.safetensors'}").validate("process")
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\0" * 16)
    with pytest.raises(ChainError, match="unsupported file type"):
        Chain.build(f"upscale:backend=model,model={onnx}").validate("process")
    with pytest.raises(ChainError, match="not a file"):
        Chain.build(f"upscale:backend=model,model={tmp_path}").validate("process")


def test_unrecognised_and_corrupt_model_files_name_the_problem(tmp_path):
    from safetensors.torch import save_file

    from sdmark.plugins.upscale.sr_model import load_sr_model

    unknown = tmp_path / "classifier.safetensors"
    save_file({"fc.weight": torch.zeros(10, 4), "fc.bias": torch.zeros(10)}, str(unknown))
    with pytest.raises(ModelLoadError, match="does not recognise this architecture"):
        load_sr_model(unknown)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ModelLoadError, match="not a valid .safetensors"):
        load_sr_model(corrupt)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ModelLoadError, match="not a readable PyTorch weights file"):
        load_sr_model(truncated)


class _Trap:
    """Unpickling this creates a file: stands for any code a malicious .pth could run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_pth_that_would_run_code_is_refused_without_running_it(tmp_path):
    from sdmark.plugins.upscale.sr_model import load_sr_model

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(1)}, "extra": _Trap(marker)}, evil)
    torch.load(evil, weights_only=False).get("extra").close()  # control: a plain unpickler runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ModelLoadError, match="refused"):
        load_sr_model(evil)
    assert not marker.exists()


def test_spandrel_import_leaves_no_torchvision_placeholder():
    from sdmark.plugins.upscale.spandrel_import import import_spandrel

    assert import_spandrel().__name__ == "spandrel"
    if importlib.util.find_spec("torchvision") is None:
        assert not any(name.split(".")[0] == "torchvision" for name in sys.modules)


# --- phases ----------------------------------------------------------------------------------

def test_phase_rules():
    assert Chain.build("upscale").stages[0].active_phases() == ("process",)
    assert Chain.build("upscale:backend=model,model=x.pth").stages[0].active_phases() == ("process",)
    latent = Chain.build("upscale:backend=sd-latent-x2")
    assert latent.stages[0].active_phases() == ("after_denoise",)
    with pytest.raises(ChainError, match="only runs during generation"):
        latent.validate("process")
    assert latent.validate("generate") == []
    # A pixel upscale after the watermark may erase it; the latent one runs before decoding.
    assert any("upscale" in w for w in Chain.build("watermark upscale").validate("generate"))
    assert Chain.build("watermark upscale:backend=sd-latent-x2").validate("generate") == []


# --- end to end ------------------------------------------------------------------------------

@pytest.fixture
def small_photo_dir(tmp_path, photos) -> Path:
    """Three small real photos (PNG and JPEG): a model upscale of full-size photos is slow on a CPU."""
    folder = tmp_path / "small"
    folder.mkdir()
    photos["astronaut"].resize((64, 64)).save(folder / "astronaut.png")
    photos["coffee"].resize((72, 48)).save(folder / "coffee.jpg", quality=92)
    photos["chelsea"].resize((60, 40)).save(folder / "chelsea.png")
    return folder


def test_process_cli_with_a_model_file(cli_runner, sr_files, small_photo_dir, tmp_path):
    runner, cli = cli_runner
    out = tmp_path / "out"
    result = runner.invoke(cli, ["process", str(small_photo_dir), "--chain", f"upscale:backend=model,model={sr_files['x4']},width=200",
                                 "--no-safety", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 3 and all(line["status"] == "written" for line in lines)
    for line in lines:
        entry = next(s for s in line["record"]["stages"] if s["stage"] == "upscale")
        width, height = read_image(line["path"]).image.size
        assert width == 200 and entry["result"]["output_size"] == [width, height]
        assert entry["result"]["resized"]["from"] == [4 * v for v in entry["result"]["input_size"]]


def test_process_cli_errors(cli_runner, photo_dir, tmp_path):
    runner, cli = cli_runner
    latent = runner.invoke(cli, ["process", str(photo_dir), "--chain", "upscale:backend=sd-latent-x2", "--no-safety", "-o", str(tmp_path)])
    assert latent.exit_code == 2 and "only runs during generation" in latent.stderr
    missing = runner.invoke(cli, ["process", str(photo_dir), "--chain", "upscale:backend=model,model=missing.pth", "--no-safety", "-o", str(tmp_path)])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    unknown = tmp_path / "unknown.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(unknown))
    bad = runner.invoke(cli, ["process", str(photo_dir), "--chain", f"upscale:backend=model,model={unknown}", "--no-safety", "-o", str(tmp_path / "o")])
    assert bad.exit_code == 2 and "does not recognise" in bad.stderr
    assert "Traceback" not in bad.output


def test_generate_then_upscale(tiny_pipe, sr_files):
    settings = GenerationSettings(prompts=["a lighthouse"], seed=3, steps=1, width=128, height=128)
    chain = Chain.build(f"upscale:factor=1.5 upscale:backend=model,model={sr_files['x2']}")
    results = generate(settings, chain, safety="off", pipeline=tiny_pipe, progress=False, warn=lambda m: None)
    assert results[0].item.image.size == (384, 384)
    entries = results[0].record.find("upscale")
    assert [e.result["output_size"] for e in entries] == [[192, 192], [384, 384]]
    assert [e.phase for e in entries] == ["process", "process"]
    # The A1111 text names both upscalers and the final size, not only the last upscale.
    from sdmark.core.metadata import a1111_parameters

    parameters = a1111_parameters(results[0].record.generation, "sdmark", results[0].record.stages)
    assert "Postprocess upscale to: 384x384, Postprocess upscaler: lanczos + model," in parameters


def test_generate_cli_with_upscale(cli_runner, tiny_model_dir, tmp_path):
    runner, cli = cli_runner
    result = runner.invoke(cli, ["generate", "a castle", "--seed", "1", "--steps", "1", "-m", str(tiny_model_dir), "--size", "128x128",
                                 "--chain", "upscale:backend=opencv,interpolation=lanczos4", "--no-safety", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "upscale: opencv 128x128 -> 256x256" in result.stdout
    written = read_image(tmp_path / "00000-1.png")
    assert written.image.size == (256, 256)
    # A1111 keeps the generation size in "Size" and describes a later upscale with its Extras keys.
    parameters = written.metadata["parameters"]
    assert "Size: 128x128," in parameters
    assert "Postprocess upscale to: 256x256, Postprocess upscaler: opencv," in parameters
