"""The generation runner: prompt in, checked and marked images out.

Per batch: draw the initial latents from the seeds, run the chain's ``before_denoise`` phases and
the ``sdmark_before_denoise`` hook, denoise (``sdmark_on_step_end`` after each step), run the
``after_denoise`` phases and hook, decode with the VAE, call ``sdmark_after_decode``, then run the
chain's ``process`` phases and write each image.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any, Callable, Collection, Literal, Sequence

from sdmark.core.chain import Chain
from sdmark.core.errors import SdmarkError
from sdmark.core.io import output_format
from sdmark.core.output import ItemResult, OutputOptions, Writer, check_conflicts, finish_batch, next_number, remove_stale_temps
from sdmark.core.pipeline import DEFAULT_MODEL, decode, default_size, initial_latents, load_pipeline, sampler_name
from sdmark.core.records import ProvenanceRecord
from sdmark.core.runtime import Runtime
from sdmark.core.stages import DenoiseBatch, ImageItem, RunContext, default_warn

SafetyMode = Literal["on", "off"]


@dataclass
class GenerationSettings:
    """Everything that determines the generated pixels (and the loader options that do not).

    Image ``i`` of the run (counting over prompts, then copies) uses seed ``seed + i``, so any
    single image can be reproduced alone. ``seed=None`` picks a random base seed (recorded).
    """

    prompts: list[str]
    negative_prompt: str | None = None
    count: int = 1
    seed: int | None = None
    steps: int = 30
    guidance_scale: float = 7.5
    width: int | None = None
    height: int | None = None
    model: str = DEFAULT_MODEL
    scheduler: str | None = None
    device: str | None = None
    dtype: str | None = None
    batch_size: int = 1
    cpu_offload: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    attention_slicing: bool = False

    def check(self) -> None:
        if not self.prompts or any(not isinstance(p, str) for p in self.prompts):
            raise SdmarkError("give at least one prompt")
        for name, value in (("count", self.count), ("steps", self.steps), ("batch size", self.batch_size)):
            if value < 1:
                raise SdmarkError(f"{name} must be at least 1; got {value}")
        for name, size in (("width", self.width), ("height", self.height)):
            if size is not None and size < 8:
                raise SdmarkError(f"{name} must be at least 8 pixels; got {size}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise SdmarkError(f"seed must be between 0 and 2**63-1; got {self.seed}")
        total = len(self.prompts) * self.count
        if self.seed is not None and self.seed + total - 1 >= 2**63:
            raise SdmarkError(f"seed {self.seed} is too large for {total} images (image i uses seed+i, at most "
                              f"2**63-1): use a seed of at most {2**63 - total}")


def _jobs(settings: GenerationSettings) -> list[tuple[int, str, int]]:
    assert settings.seed is not None
    jobs: list[tuple[int, str, int]] = []
    for prompt in settings.prompts:
        for _ in range(settings.count):
            index = len(jobs)
            jobs.append((index, prompt, settings.seed + index))
    return jobs


def plan_run(settings: GenerationSettings, chain: Chain, output: OutputOptions | None, safety: SafetyMode,
             warn: Callable[[str], None]) -> list[str]:
    """What is checked once per run, before any work, and the output names it gives (image ``i``
    is ``NNNNN-SEED``): settings and chain (image size included), the safety rule, existing output
    files (an error unless ``output.overwrite``; ``output.append`` numbers after them), the plugins'
    configuration. Draws ``settings.seed`` when it is unset (pass a copy to keep yours unset);
    removes sdmark's own stale temp files.
    """
    settings.check()
    for message in chain.validate("generate"):
        warn(message)
    chain.check_safety("generate", safety, warn)
    if settings.seed is None:
        settings.seed = random.SystemRandom().randrange(2**32)
    if settings.width is not None and settings.height is not None:
        chain.check_size(settings.width, settings.height)
    jobs = _jobs(settings)
    first = next_number(output.directory) if output is not None and output.append else 0
    names = [f"{first + index:05d}-{seed}" for index, _, seed in jobs]
    if output is not None:
        suffix = output_format(output.format)[1]
        check_conflicts([output.directory / f"{name}{suffix}" for name in names], output.overwrite,
                        " or --append to number new images after them")
    chain.runtime.check_config(mode="generate", output=output)
    if output is not None:
        remove_stale_temps(output.directory, warn)
    return names


def generate(
    settings: GenerationSettings,
    chain: Chain | None = None,
    output: OutputOptions | None = None,
    *,
    safety: SafetyMode = "on",
    pipeline: Any = None,
    progress: bool | None = None,
    on_result: Callable[[ItemResult], None] | None = None,
    warn: Callable[[str], None] | None = None,
    indices: Collection[int] | None = None,
    names: Sequence[str] | None = None,
    runtime: Runtime | None = None,
    keep_resources: bool = False,
) -> list[ItemResult]:
    """Generate images for ``settings`` through ``chain``; write them to ``output`` if given.

    Before any work: settings and chain are validated (image size included), existing output
    files are an error unless ``output.overwrite`` (``output.append`` numbers after them instead),
    plugins check their configuration. Image ``i`` is written as ``NNNNN-SEED.ext``.
    ``safety="on"`` requires a safety-checking stage in the chain (sdmark fails closed);
    ``safety="off"`` is the explicit opt-out, recorded in every image's provenance. Pass an already
    loaded ``pipeline`` to reuse it across calls. Returns one :class:`ItemResult` per image.
    ``indices`` (with a fixed seed) makes only those images of the run, and ``names`` are the run's
    output names from :func:`plan_run` (the checks then are not repeated): how an executor's workers
    share one run that its driver planned (see :mod:`sdmark.core.executor_steps`).
    Hooks run on the chain's runtime; ``runtime`` is the one an empty chain gets when ``chain`` is
    ``None`` (the installed plugins when that is ``None`` too). What plugins kept open for the run
    (the registry writer, the safety model) is closed when it ends, unless ``keep_resources`` (an
    executor's worker, which closes them when it has no more work).
    """
    import torch
    from tqdm.auto import tqdm

    chain = chain if chain is not None else Chain([], runtime)
    warn = warn or default_warn
    runtime = chain.runtime
    if names is None:
        # The caller's settings stay as given: the seed drawn for this run lives in the records.
        settings = replace(settings, prompts=list(settings.prompts))
        names = plan_run(settings, chain, output, safety, warn)

    pipe = pipeline or load_pipeline(
        settings.model, settings.device, settings.dtype, scheduler=settings.scheduler,
        cpu_offload=settings.cpu_offload, vae_slicing=settings.vae_slicing,
        vae_tiling=settings.vae_tiling, attention_slicing=settings.attention_slicing, runtime=runtime,
    )
    size = default_size(pipe)
    height = size if settings.height is None else settings.height
    width = size if settings.width is None else settings.width
    chain.check_size(width, height)
    # What ran, not what was asked: a pipeline the caller passed in keeps its own scheduler and model.
    model = settings.model if pipeline is None else (pipe.config.get("_name_or_path") or settings.model)
    context = RunContext(mode="generate", device=str(pipe._execution_device), settings=settings,
                         pipeline=pipe, model=model, warn=warn, runtime=runtime)
    writer = Writer(output, context) if output is not None else None
    sampler = sampler_name(pipe, settings.scheduler if pipeline is None else None)
    jobs = [job for job in _jobs(settings) if indices is None or job[0] in indices]
    results: list[ItemResult] = []
    pipe.scheduler.set_timesteps(settings.steps)  # some schedulers (PLMS) take more steps than asked
    steps_per_image = len(pipe.scheduler.timesteps)
    # disable=None: a bar on a terminal, silence in logs and pipes (tqdm writes to stderr).
    bar = tqdm(total=len(jobs) * steps_per_image, unit="step", desc="generating", disable=None if progress is None else not progress)
    # What plugins kept open for the run is closed when it ends (when the last of several runs
    # under way on this runtime at once ends), unless keep_resources.
    with runtime.run_resources(keep_resources):
        try:
            chain.setup(context)
            for start in range(0, len(jobs), settings.batch_size):
                batch_jobs = jobs[start : start + settings.batch_size]
                records = [
                    ProvenanceRecord(
                        kind="generated",
                        safety="disabled" if safety == "off" else "not-run",
                        generation={
                            "prompt": prompt, "negative_prompt": settings.negative_prompt, "seed": seed,
                            "steps": settings.steps, "guidance_scale": settings.guidance_scale,
                            "sampler": sampler, "width": width, "height": height, "model": model,
                            "dtype": str(pipe.unet.dtype).removeprefix("torch."),
                        },
                    )
                    for _, prompt, seed in batch_jobs
                ]
                images = _denoise_and_decode(pipe, chain, context, settings, batch_jobs, records, height, width, bar, torch)
                items = [
                    ImageItem(image=image, record=record, name=names[index], index=index, seed=seed, prompt=prompt)
                    for image, record, (index, prompt, seed) in zip(images, records, batch_jobs)
                ]
                runtime.after_decode(items=items, context=context)
                results += finish_batch(items, chain, context, writer, on_result)
        finally:
            bar.close()
    return results


def _denoise_and_decode(pipe, chain, context, settings, jobs, records, height, width, bar, torch) -> list:
    seeds = [seed for _, _, seed in jobs]
    prompts = [prompt for _, prompt, _ in jobs]
    latents, generators = initial_latents(pipe, seeds, height, width)
    batch = DenoiseBatch(latents=latents, seeds=seeds, prompts=prompts)
    with torch.inference_mode():
        chain.run_latent_phase("before_denoise", batch, context, records)
        chain.runtime.before_denoise(batch=batch, context=context)

    def on_step_end(_pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        batch.latents = tensors["latents"]
        chain.runtime.on_step_end(batch=batch, step=step, timestep=timestep, context=context)
        bar.update(len(seeds))
        return {"latents": batch.latents}

    with torch.inference_mode():
        batch.latents = pipe(
            prompt=prompts,
            negative_prompt=[settings.negative_prompt] * len(prompts) if settings.negative_prompt else None,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            height=height,
            width=width,
            generator=generators,
            latents=batch.latents,
            output_type="latent",
            callback_on_step_end=on_step_end,
            callback_on_step_end_tensor_inputs=["latents"],
        ).images
        chain.run_latent_phase("after_denoise", batch, context, records)
        chain.runtime.after_denoise(batch=batch, context=context)
        return decode(pipe, batch.latents)
