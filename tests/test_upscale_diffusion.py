"""The diffusion upscalers: sd-x4 on decoded images, sd-latent-x2 on the final latents of generate.

Both load tiny seeded components saved with ``save_pretrained``, through ``from_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sdmark.core.chain import Chain
from sdmark.core.errors import ChainError, ModelLoadError
from sdmark.core.generate import GenerationSettings, generate
from sdmark.core.io import read_image
from sdmark.core.runtime import hookimpl
from sdmark.core.process import process_images


@pytest.fixture(scope="module")
def x4_dir(tmp_path_factory) -> Path:
    from sdmark.testing.tiny_upscalers import save_tiny_sd_x4_upscaler

    return save_tiny_sd_x4_upscaler(tmp_path_factory.mktemp("sd-x4") / "model")


@pytest.fixture(scope="module")
def latent_dir(tmp_path_factory) -> Path:
    from sdmark.testing.tiny_upscalers import save_tiny_latent_upscaler

    return save_tiny_latent_upscaler(tmp_path_factory.mktemp("sd-latent") / "model")


def run_generate(runtime, tiny_pipe, chain: str, size: int = 64, seed: int = 5, **kwargs):
    settings = GenerationSettings(prompts=["a red boat"], seed=seed, steps=1, width=size, height=size, **kwargs)
    return generate(settings, Chain.build(chain, runtime), safety="off", pipeline=tiny_pipe, progress=False, warn=lambda m: None)


def test_sd_x4_processes_images_with_prompt_and_noise_level(runtime, x4_dir, photos, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    photos["coffee"].resize((24, 16)).save(source / "coffee.png")
    chain = f"upscale:backend=sd-x4,model={x4_dir},prompt='a cup of coffee',noise_level=50,steps=2"
    first = process_images([source], Chain.build(chain, runtime), None, safety="off", progress=False, warn=lambda m: None)
    again = process_images([source], Chain.build(chain, runtime), None, safety="off", progress=False, warn=lambda m: None)
    assert first[0].status == "kept", first[0].error
    image = first[0].item.image
    assert image.size == (96, 64)
    assert np.array_equal(np.asarray(image), np.asarray(again[0].item.image))  # seeded: reproducible
    result = first[0].record.find("upscale")[0].result
    assert result["prompt"] == "a cup of coffee" and result["noise_level"] == 50 and result["guidance"] == 9.0
    assert result["model"] == str(x4_dir) and "resized" not in result
    other = process_images([source], Chain.build(chain.replace("noise_level=50", "noise_level=300"), runtime), None,
                           safety="off", progress=False, warn=lambda m: None)
    assert not np.array_equal(np.asarray(image), np.asarray(other[0].item.image))


def test_sd_x4_to_a_target_size_and_noise_limit(runtime, x4_dir, photos, tmp_path):
    source = tmp_path / "in.png"
    photos["rocket"].resize((20, 16)).save(source)
    results = process_images([source], Chain.build(f"upscale:backend=sd-x4,model={x4_dir},steps=1,factor=3", runtime), None,
                             safety="off", progress=False, warn=lambda m: None)
    assert results[0].item.image.size == (60, 48)
    assert results[0].record.find("upscale")[0].result["resized"] == {"from": [80, 64], "to": [60, 48], "with": "lanczos"}


def test_sd_x4_in_generate_uses_the_generation_prompt(runtime, tiny_pipe, x4_dir):
    results = run_generate(runtime, tiny_pipe, f"upscale:backend=sd-x4,model={x4_dir},steps=1")
    assert results[0].item.image.size == (256, 256)
    result = results[0].record.find("upscale")[0].result
    assert result["prompt"] == "a red boat" and result["seed"] == 5


def test_missing_upscaler_folder_is_a_clear_error(runtime, tiny_pipe, tmp_path):
    with pytest.raises(ChainError, match="does not exist"):  # before any work
        run_generate(runtime, tiny_pipe, f"upscale:backend=sd-x4,model={tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="could not load the StableDiffusionLatentUpscalePipeline"):
        run_generate(runtime, tiny_pipe, f"upscale:backend=sd-latent-x2,model={tmp_path / 'empty'}")


class LatentSpy:
    """Sees the latents the after_denoise hook gets, after the chain's latent phase ran."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    @hookimpl
    def sdmark_after_denoise(self, batch, context) -> None:
        self.shapes.append(tuple(batch.latents.shape))


def test_sd_latent_x2_upscales_the_final_latents_in_generate(runtime, tiny_pipe, latent_dir, register_plugin):
    spy = register_plugin(LatentSpy())
    chain = f"upscale:backend=sd-latent-x2,model={latent_dir},steps=2"
    results = run_generate(runtime, tiny_pipe, chain, size=64, count=2, batch_size=2)
    assert spy.shapes == [(2, 4, 16, 16)]  # 64 px -> 8x8 latents -> 16x16, before the VAE decodes
    assert [r.item.image.size for r in results] == [(128, 128), (128, 128)]
    entry = results[0].record.find("upscale")[0]
    assert entry.phase == "after_denoise"
    assert entry.result["input_size"] == [64, 64] and entry.result["output_size"] == [128, 128]
    assert entry.result["summary"] == "sd-latent-x2 64x64 -> 128x128 (in latent space)"
    # Each image's upscale noise comes from its own seed: image 2 of the batch is reproducible alone.
    alone = run_generate(runtime, tiny_pipe, chain, size=64, seed=6)
    assert np.abs(np.asarray(alone[0].item.image, dtype=int) - np.asarray(results[1].item.image, dtype=int)).max() <= 1


def test_sd_latent_x2_matches_the_documented_diffusers_recipe(runtime, tiny_pipe, tiny_model_dir, latent_dir):
    """SD pipeline with output_type="latent", then the latent upscaler on those latents, then decode."""
    import torch
    from diffusers import StableDiffusionLatentUpscalePipeline, StableDiffusionPipeline

    ours = run_generate(runtime, tiny_pipe, f"upscale:backend=sd-latent-x2,model={latent_dir},steps=2", size=64, seed=11)
    sd = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None, requires_safety_checker=False)
    upscaler = StableDiffusionLatentUpscalePipeline.from_pretrained(latent_dir)
    for pipe in (sd, upscaler):
        pipe.set_progress_bar_config(disable=True)
    low = sd("a red boat", num_inference_steps=1, height=64, width=64, output_type="latent",
             generator=torch.Generator("cpu").manual_seed(11)).images
    high = upscaler(prompt=["a red boat"], image=low, num_inference_steps=2, guidance_scale=0,
                    generator=[torch.Generator("cpu").manual_seed(11)], output_type="latent").images
    with torch.no_grad():
        decoded = sd.vae.decode(high / sd.vae.config.scaling_factor, return_dict=False)[0]
    theirs = sd.image_processor.postprocess(decoded, output_type="pil")[0]
    assert theirs.size == ours[0].item.image.size == (128, 128)
    assert np.abs(np.asarray(theirs, dtype=int) - np.asarray(ours[0].item.image, dtype=int)).max() <= 1


def test_sd_latent_x2_cli_generate_and_process_refusal(cli_runner, tiny_model_dir, latent_dir, photo_dir, tmp_path):
    runner, cli = cli_runner
    chain = f"upscale:backend=sd-latent-x2,model={latent_dir},steps=1"
    result = runner.invoke(cli, ["generate", "a castle", "--seed", "1", "--steps", "1", "-m", str(tiny_model_dir), "--size", "64x64",
                                 "--chain", chain, "--no-safety", "-o", str(tmp_path / "gen"), "--json"])
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout)
    written = read_image(line["path"])
    assert written.image.size == (128, 128)
    # A1111's words for an upscale in latent space during generation (its hires fix).
    assert "Size: 64x64," in written.metadata["parameters"]
    assert "Hires upscale: 2, Hires upscaler: sd-latent-x2," in written.metadata["parameters"]
    refused = runner.invoke(cli, ["process", str(photo_dir), "--chain", chain, "--no-safety", "-o", str(tmp_path / "p")])
    assert refused.exit_code == 2
    assert "only runs during generation" in refused.stderr and "cannot process existing images" in refused.stderr
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())


def test_sd_latent_x2_refuses_a_size_its_unet_cannot_take_before_denoising(runtime, tiny_pipe, latent_dir):
    with pytest.raises(ChainError, match="multiples of 64"):
        run_generate(runtime, tiny_pipe, f"upscale:backend=sd-latent-x2,model={latent_dir}", size=72)


def test_sd_latent_x2_refuses_process_in_the_python_api(runtime, photo_dir):
    with pytest.raises(ChainError, match="only runs during generation"):
        process_images([photo_dir], Chain.build("upscale:backend=sd-latent-x2", runtime), None, safety="off", progress=False)
