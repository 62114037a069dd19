"""The generation runner: faithful to diffusers, reproducible per image, latents open to hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdmark.core.chain import Chain
from sdmark.core.generate import GenerationSettings, generate
from sdmark.core.output import OutputOptions
from sdmark.core.runtime import hookimpl
from sdmark.core.stages import Stage

STEPS = 3


@pytest.fixture(scope="module")
def diffusers_pipe(tiny_model_dir):
    """The same saved model loaded by diffusers itself, as a user of diffusers would."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference(pipe, prompt, seeds, **kwargs):
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    out = pipe(prompt=[prompt] * len(seeds), generator=generators, num_inference_steps=STEPS,
               guidance_scale=7.5, height=256, width=256, **kwargs)
    return [np.asarray(image) for image in out.images]


def run(tiny_pipe, prompt="a lighthouse at dusk", seed=1234, count=1, batch_size=1, chain=None, runtime=None, **kwargs):
    settings = GenerationSettings(prompts=[prompt], seed=seed, count=count, steps=STEPS, batch_size=batch_size,
                                  width=256, height=256, **kwargs)
    results = generate(settings, chain, safety="off", pipeline=tiny_pipe, progress=False, warn=lambda m: None,
                       runtime=runtime)
    return [np.asarray(result.item.image) for result in results]


def test_empty_chain_is_pixel_identical_to_diffusers(tiny_pipe, diffusers_pipe):
    ours = run(tiny_pipe, seed=1234)
    theirs = reference(diffusers_pipe, "a lighthouse at dusk", [1234])
    assert ours[0].shape == (256, 256, 3)
    assert np.array_equal(ours[0], theirs[0])


def test_batched_images_match_diffusers_with_per_image_generators(tiny_pipe, diffusers_pipe):
    ours = run(tiny_pipe, seed=40, count=2, batch_size=2, negative_prompt="blurry")
    theirs = reference(diffusers_pipe, "a lighthouse at dusk", [40, 41], negative_prompt=["blurry"] * 2)
    assert len(ours) == len(theirs) == 2
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    assert not np.array_equal(ours[0], ours[1])


def test_each_image_is_reproducible_alone(tiny_pipe):
    three = run(tiny_pipe, seed=7, count=3)
    alone = run(tiny_pipe, seed=9)
    assert np.array_equal(three[2], alone[0])


def test_named_scheduler_matches_diffusers_with_that_scheduler(tiny_model_dir, diffusers_pipe):
    from diffusers import EulerAncestralDiscreteScheduler

    from sdmark.core.pipeline import load_pipeline

    pipe = load_pipeline(str(tiny_model_dir), device="cpu", dtype="fp32", scheduler="euler-a")
    ours = run(pipe, seed=5, scheduler="euler-a")
    original = diffusers_pipe.scheduler
    diffusers_pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(original.config)
    try:
        theirs = reference(diffusers_pipe, "a lighthouse at dusk", [5])
    finally:
        diffusers_pipe.scheduler = original
    assert np.array_equal(ours[0], theirs[0])


class ShiftLatents:
    """Hooks that change the latents before and after denoising."""

    def __init__(self, before=0.0, after=0.0):
        self.before, self.after = before, after

    @hookimpl
    def sdmark_before_denoise(self, batch, context):
        batch.latents = batch.latents + self.before

    @hookimpl
    def sdmark_after_denoise(self, batch, context):
        batch.latents.add_(self.after)


def test_latent_hooks_change_the_output(tiny_pipe, runtime, register_plugin):
    baseline = run(tiny_pipe, seed=3, runtime=runtime)[0]
    register_plugin(ShiftLatents(before=0.0, after=0.0), name="noop")
    assert np.array_equal(run(tiny_pipe, seed=3, runtime=runtime)[0], baseline)
    register_plugin(ShiftLatents(before=0.5), name="before")
    changed = run(tiny_pipe, seed=3, runtime=runtime)[0]
    assert np.abs(changed.astype(int) - baseline).mean() > 1


def test_after_denoise_change_shows_in_decoded_image(tiny_pipe, runtime, register_plugin):
    baseline = run(tiny_pipe, seed=3, runtime=runtime)[0]
    register_plugin(ShiftLatents(after=2.0), name="after")
    assert np.abs(run(tiny_pipe, seed=3, runtime=runtime)[0].astype(int) - baseline).mean() > 1


class ZeroInitialNoise(Stage):
    name = "t-zero-noise"
    phases = ("before_denoise",)
    changes_pixels = False

    def before_denoise(self, batch, context):
        batch.latents = torch.zeros_like(batch.latents)
        return {"summary": "zeroed"}


class ZeroStages:
    @hookimpl
    def sdmark_register_stages(self, register):
        register(ZeroInitialNoise)


def test_latent_stage_phase_runs_and_is_recorded(runtime, tiny_pipe, register_plugin):
    register_plugin(ZeroStages(), name="zero-stages")
    chain = Chain.build("t-zero-noise", runtime)
    a = run(tiny_pipe, seed=1, chain=chain)[0]
    b = run(tiny_pipe, seed=2, chain=chain)[0]
    assert np.array_equal(a, b)  # the seed no longer matters: the stage replaced the noise
    settings = GenerationSettings(prompts=["x"], seed=1, steps=1, width=256, height=256)
    [result] = generate(settings, chain, safety="off", pipeline=tiny_pipe, progress=False, warn=lambda m: None)
    assert [(e.stage, e.phase, e.result) for e in result.record.stages] == [("t-zero-noise", "before_denoise", {"summary": "zeroed"})]
    assert result.record.safety == "disabled"


def test_generate_refuses_to_run_without_safety_unless_told(runtime, tiny_pipe):
    from sdmark.core.errors import ChainError

    with pytest.raises(ChainError, match="no safety stage"):
        generate(GenerationSettings(prompts=["x"], steps=1), Chain([], runtime), pipeline=tiny_pipe)


def test_written_png_holds_the_same_pixels(tiny_pipe, diffusers_pipe, tmp_path):
    settings = GenerationSettings(prompts=["a lighthouse at dusk"], seed=1234, steps=STEPS, width=256, height=256)
    [result] = generate(settings, None, OutputOptions(tmp_path), safety="off", pipeline=tiny_pipe, progress=False,
                        warn=lambda m: None)
    assert result.path == tmp_path / "00000-1234.png"
    written = np.asarray(Image.open(result.path))
    assert np.array_equal(written, reference(diffusers_pipe, "a lighthouse at dusk", [1234])[0])


def test_generate_keeps_the_callers_settings_and_records_the_pipeline_that_ran(tiny_pipe, tiny_model_dir, runtime):
    from sdmark.core.pipeline import sampler_name

    # Asked for euler-a and the default model, but handed a loaded pipeline: the record says what ran.
    settings = GenerationSettings(prompts=["x"], steps=1, width=64, height=64, scheduler="euler-a")
    [result] = generate(settings, None, safety="off", pipeline=tiny_pipe, progress=False, warn=lambda m: None,
                        runtime=runtime)
    assert settings.seed is None and isinstance(result.record.generation["seed"], int)
    assert result.record.generation["model"] == str(tiny_model_dir)
    assert result.record.generation["sampler"] == sampler_name(tiny_pipe, None) != "Euler a"
