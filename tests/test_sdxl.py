"""SDXL through sdmark: loading, pixels identical to diffusers' SDXL call, the CLI, no hidden mark.

A tiny random-weight SDXL model (two text encoders, ``text_time`` micro-conditioning, SDXL's VAE
scaling and ``force_upcast``) is saved once for the module and loaded through sdmark's real loader.
diffusers adds its own invisible watermark to SDXL images; sdmark leaves it out (marks are stages of
the chain), so the reference is diffusers' call with ``add_watermarker=False``. Images are 256 pixels
wide where it matters, because diffusers skips its watermark on narrower images.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sdmark.core.generate import GenerationSettings, generate
from sdmark.core.io import read_image
from sdmark.core.pipeline import default_size, load_pipeline, sampler_name

PROMPT = "a lighthouse at dusk"
STEPS = 2
# Per-channel latent statistics as some SDXL-derived models carry them (mild, so images stay unsaturated).
LATENTS_MEAN = (0.1, -0.2, 0.3, -0.1)
LATENTS_STD = (0.5, 1.5, 0.8, 1.2)


@pytest.fixture(scope="module")
def sdxl_model_dir(tmp_path_factory: pytest.TempPathFactory):
    from sdmark.testing.tiny import save_tiny_sdxl_model

    return save_tiny_sdxl_model(tmp_path_factory.mktemp("tiny-sdxl") / "model")


@pytest.fixture(scope="module")
def sdxl_pipe(sdxl_model_dir):
    return load_pipeline(str(sdxl_model_dir), device="cpu", dtype="fp32")


def diffusers_sdxl(folder, **kwargs):
    """The saved model loaded by diffusers itself, with its built-in watermarker off."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(folder, add_watermarker=False, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def reference_pipe(sdxl_model_dir):
    return diffusers_sdxl(sdxl_model_dir)


def reference(pipe, seeds, width=256, height=256, **kwargs):
    """diffusers' images for ``seeds``: one CPU generator per image, as sdmark's runner seeds them."""
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    out = pipe(prompt=[PROMPT] * len(seeds), generator=generators, num_inference_steps=STEPS, guidance_scale=7.5,
               width=width, height=height, **kwargs)
    return [np.asarray(image) for image in out.images]


def run(pipe, seed, count=1, width=256, height=256, **kwargs):
    settings = GenerationSettings(prompts=[PROMPT], seed=seed, count=count, steps=STEPS, width=width, height=height,
                                  **kwargs)
    return generate(settings, None, safety="off", pipeline=pipe, progress=False, warn=lambda m: None)


def pixels(results):
    return [np.asarray(result.item.image) for result in results]


def test_loads_as_sdxl_through_sdmarks_loader(sdxl_pipe):
    from diffusers import StableDiffusionXLPipeline

    assert isinstance(sdxl_pipe, StableDiffusionXLPipeline)
    assert sdxl_pipe.text_encoder_2 is not None and sdxl_pipe.unet.config.addition_embed_type == "text_time"
    assert default_size(sdxl_pipe) == 256  # UNet sample size 32 x VAE factor 8 (a real SDXL: 128 x 8 = 1024)
    assert sampler_name(sdxl_pipe, None) == "Euler"
    assert sdxl_pipe.watermark is None  # diffusers' own SDXL mark is off: marks are chain stages


def test_empty_chain_is_pixel_identical_to_diffusers_sdxl(sdxl_pipe, reference_pipe):
    [result] = run(sdxl_pipe, seed=1234)
    ours = np.asarray(result.item.image)
    assert ours.shape == (256, 256, 3)
    assert np.array_equal(ours, reference(reference_pipe, [1234])[0])
    assert result.record.stages == []  # no stage ran, so nothing may have touched the pixels


def test_batched_non_square_images_match_diffusers_sdxl(sdxl_pipe, reference_pipe):
    # SDXL conditions on the image size, so a non-square size checks the size ids too.
    ours = pixels(run(sdxl_pipe, seed=40, count=2, batch_size=2, width=256, height=128, negative_prompt="blurry"))
    theirs = reference(reference_pipe, [40, 41], width=256, height=128, negative_prompt=["blurry"] * 2)
    assert ours[0].shape == (128, 256, 3)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    assert not np.array_equal(ours[0], ours[1])


def test_the_mark_diffusers_adds_to_sdxl_by_default_is_left_out(cli_runner, sdxl_model_dir, sdxl_pipe, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    default = StableDiffusionXLPipeline.from_pretrained(sdxl_model_dir)  # as a diffusers user gets it
    default.set_progress_bar_config(disable=True)
    assert default.watermark is not None  # invisible-watermark is one of sdmark's dependencies
    Image.fromarray(reference(default, [3])[0]).save(tmp_path / "diffusers.png")
    Image.fromarray(pixels(run(sdxl_pipe, seed=3))[0]).save(tmp_path / "sdmark.png")
    runner, cli = cli_runner
    result = runner.invoke(cli, ["verify", str(tmp_path / "diffusers.png"), str(tmp_path / "sdmark.png"), "--json",
                                 "--no-progress"])
    assert result.exit_code == 1  # one image is unmarked
    theirs, ours = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["scheme"] for d in theirs["detections"]] == ["sdxl"]
    assert ours["watermarked"] is False and ours["detections"] == []


def test_fp16_decode_upcasts_the_vae_like_diffusers(sdxl_model_dir):
    # SDXL's VAE has force_upcast: in fp16 it decodes in fp32 and goes back to fp16 afterwards.
    # (fp16 on the CPU is slow, hence the small image; the decode branch does not depend on size.)
    pipe = load_pipeline(str(sdxl_model_dir), device="cpu", dtype="fp16")
    [result] = run(pipe, seed=5, width=128, height=128)
    theirs = reference(diffusers_sdxl(sdxl_model_dir, dtype=torch.float16), [5], width=128, height=128)[0]
    assert np.array_equal(np.asarray(result.item.image), theirs)
    assert pipe.vae.dtype == torch.float16
    assert result.record.generation["dtype"] == "float16"


def test_latents_mean_and_std_decode_like_diffusers(sdxl_pipe, tmp_path):
    from sdmark.testing.tiny import save_tiny_sdxl_model

    folder = save_tiny_sdxl_model(tmp_path / "model", latents_mean=LATENTS_MEAN, latents_std=LATENTS_STD)
    pipe = load_pipeline(str(folder), device="cpu", dtype="fp32")
    assert list(pipe.vae.config.latents_mean) == list(LATENTS_MEAN)
    ours = pixels(run(pipe, seed=9, width=128, height=128))[0]
    assert np.array_equal(ours, reference(diffusers_sdxl(folder), [9], width=128, height=128)[0])
    # Same weights without the statistics: the denormalisation is what changed the pixels.
    assert np.abs(ours.astype(int) - pixels(run(sdxl_pipe, seed=9, width=128, height=128))[0]).mean() > 1


def test_cli_generate_writes_sdxl_image_with_parameters_and_record(cli_runner, sdxl_model_dir, reference_pipe, tmp_path):
    runner, cli = cli_runner
    out = tmp_path / "out"
    result = runner.invoke(cli, ["generate", PROMPT, "-m", str(sdxl_model_dir), "--seed", "7", "--steps", str(STEPS),
                                 "--size", "256x128", "--no-safety", "--chain", "", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    [line] = [json.loads(text) for text in result.stdout.splitlines()]
    assert line["status"] == "written" and line["path"] == str(out / "00000-7.png")
    loaded = read_image(line["path"])
    assert loaded.image.size == (256, 128)
    assert np.array_equal(np.asarray(loaded.image), reference(reference_pipe, [7], width=256, height=128)[0])
    parameters = loaded.metadata["parameters"]
    assert parameters.splitlines()[0] == PROMPT
    for field in (f"Steps: {STEPS}", "Sampler: Euler", "CFG scale: 7.5", "Seed: 7", "Size: 256x128",
                  f"Model: {sdxl_model_dir}"):
        assert field in parameters, (field, parameters)
    generation = loaded.metadata["record"]["generation"]
    assert (generation["width"], generation["height"], generation["seed"]) == (256, 128, 7)
    assert (generation["sampler"], generation["model"], generation["dtype"]) == ("Euler", str(sdxl_model_dir), "float32")
    assert loaded.metadata["record"]["safety"] == "disabled"


def test_cli_watermark_chain_marks_sdxl_with_ours_not_diffusers(cli_runner, sdxl_model_dir, tmp_path):
    runner, cli = cli_runner
    out = tmp_path / "out"
    result = runner.invoke(cli, ["generate", PROMPT, "-m", str(sdxl_model_dir), "--seed", "3", "--steps", "1",
                                 "--size", "256x256", "--no-safety", "--chain", "watermark:id=5d", "-o", str(out),
                                 "--json"])
    assert result.exit_code == 0, result.output
    path = json.loads(result.stdout)["path"]
    assert [entry["stage"] for entry in read_image(path).metadata["record"]["stages"]] == ["watermark"]
    verified = runner.invoke(cli, ["verify", path, "--json", "--no-progress"])
    assert verified.exit_code == 0, verified.output
    report = json.loads(verified.stdout)
    assert [(d["scheme"], d["payload"]) for d in report["detections"]] == [("sdmark", "000000000000005d")]
