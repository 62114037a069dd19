"""The same generation on a CUDA GPU: fp16 pixels identical to diffusers' own call there, marks intact.

Skipped without a CUDA device (CI has none); run wherever one is, e.g. ``pytest tests/test_gpu.py``.
The tiny random-weight models stand in for real ones, so this checks sdmark's device and dtype
handling (fp16 UNet, SDXL's fp32 VAE upcast, CPU-seeded noise moved to the GPU), not image quality.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdmark.core.chain import Chain
from sdmark.core.generate import GenerationSettings, generate
from sdmark.core.pipeline import load_pipeline
from sdmark.plugins.watermark.verify import verify_image

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPT = "a lighthouse at dusk"


def _sdmark(pipe, seeds, chain=None, **kwargs):
    settings = GenerationSettings(prompts=[PROMPT], seed=seeds[0], count=len(seeds), batch_size=len(seeds), steps=2,
                                  **kwargs)
    return generate(settings, chain, safety="off", pipeline=pipe, progress=False, warn=lambda m: None)


def _diffusers(pipe, seeds, **kwargs):
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    out = pipe(prompt=[PROMPT] * len(seeds), generator=generators, num_inference_steps=2, guidance_scale=7.5, **kwargs)
    return [np.asarray(image) for image in out.images]


def test_sd_in_fp16_on_the_gpu_matches_diffusers(tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    ours = load_pipeline(str(tiny_model_dir), device="cuda", dtype="fp16")
    assert ours.device.type == "cuda" and ours.unet.dtype == torch.float16
    theirs = StableDiffusionPipeline.from_pretrained(tiny_model_dir, torch_dtype=torch.float16, safety_checker=None,
                                                     requires_safety_checker=False).to("cuda")
    theirs.set_progress_bar_config(disable=True)
    results = _sdmark(ours, [7, 8], width=128, height=128)
    assert all(np.array_equal(np.asarray(r.item.image), t)
               for r, t in zip(results, _diffusers(theirs, [7, 8], width=128, height=128)))
    assert results[0].record.generation["dtype"] == "float16"


def test_sdxl_in_fp16_on_the_gpu_upcasts_its_vae_like_diffusers(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from sdmark.testing.tiny import save_tiny_sdxl_model

    folder = save_tiny_sdxl_model(tmp_path / "sdxl")
    ours = load_pipeline(str(folder), device="cuda", dtype="fp16")
    theirs = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float16,
                                                       add_watermarker=False).to("cuda")
    theirs.set_progress_bar_config(disable=True)
    [result] = _sdmark(ours, [5], width=256, height=256)
    assert np.array_equal(np.asarray(result.item.image), _diffusers(theirs, [5], width=256, height=256)[0])
    assert ours.vae.dtype == torch.float16  # upcast for the decode only


def test_marked_on_the_gpu_verifies(tiny_model_dir):
    pipe = load_pipeline(str(tiny_model_dir), device="cuda", dtype="fp16")
    [result] = _sdmark(pipe, [3], chain=Chain.build("watermark:id=71e"), width=256, height=256)
    assert result.status == "kept", result.error
    report = verify_image(result.item.image)
    assert report["watermarked"] and report["detections"][0]["payload"].endswith("71e")
