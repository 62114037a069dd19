"""The diffusion upscalers of diffusers: ``StableDiffusionUpscalePipeline`` (x4, on decoded images)
and ``StableDiffusionLatentUpscalePipeline`` (x2, on the final latents of a generation)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdmark.core.errors import ModelLoadError, StageError, first_line

if TYPE_CHECKING:
    import torch
    from PIL import Image

X4_MODEL = "stabilityai/stable-diffusion-x4-upscaler"
LATENT_X2_MODEL = "stabilityai/sd-x2-latent-upscaler"
X4_GUIDANCE = 9.0
LATENT_GUIDANCE = 0.0  # the released latent upscaler is meant to run without classifier-free guidance


def check_model_source(model: str) -> None:
    """Raise :class:`ModelLoadError` when ``model`` is shaped like a local path that does not exist.

    A hub id is ``org/name``; anything else with a path shape must be a local folder.
    """
    from sdmark.core.pipeline import looks_local

    if looks_local(model) and not Path(model).expanduser().exists():
        raise ModelLoadError(f"upscaler model folder {model!r} does not exist")


def load_upscaler(kind: str, model: str, device: str, dtype: torch.dtype) -> Any:
    """Load the ``x4`` or ``latent`` upscaler pipeline from a hub id or a local folder onto ``device``.

    Raises :class:`ModelLoadError` naming the id or folder when it cannot be loaded or is the
    wrong kind of pipeline.
    """
    # The classes' own modules: diffusers' top-level names are placeholders to a type checker.
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_latent_upscale import (
        StableDiffusionLatentUpscalePipeline,
    )
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_upscale import StableDiffusionUpscalePipeline

    from sdmark.core.pipeline import quiet_loading

    quiet_loading()  # loading bars are noise next to sdmark's own progress (SDMARK_DEBUG keeps them)
    cls: type[StableDiffusionUpscalePipeline | StableDiffusionLatentUpscalePipeline] = (
        StableDiffusionUpscalePipeline if kind == "x4" else StableDiffusionLatentUpscalePipeline)
    check_model_source(model)
    path = Path(model).expanduser()
    kwargs: dict[str, Any] = {"dtype": dtype}
    if kind == "x4":
        kwargs.update(safety_checker=None, watermarker=None)  # sdmark's own stages do both, visibly
    try:
        pipe = cls.from_pretrained(str(path) if path.exists() else model, **kwargs)
    except Exception as exc:
        where = "folder" if path.exists() else "hub id"
        raise ModelLoadError(
            f"could not load the {cls.__name__} from {where} {model!r}: {first_line(exc)}. "
            "Without network access, pass a local folder saved with save_pretrained()."
        ) from None
    if not isinstance(pipe, cls):
        raise ModelLoadError(f"{model!r} holds a {type(pipe).__name__}, not a {cls.__name__}")
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def upscale_image_x4(
    pipe: Any, image: Image.Image, prompt: str, noise_level: int, steps: int, guidance: float, seed: int
) -> Image.Image:
    """Upscale one image 4x with the x4 upscaler; alpha (which it cannot see) goes through lanczos."""
    import torch
    from PIL import Image as PILImage

    if noise_level > pipe.config.max_noise_level:
        raise StageError(f"noise_level must be <= {pipe.config.max_noise_level} for this upscaler; got {noise_level}")
    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.inference_mode():
        out = pipe(
            prompt=prompt, image=image.convert("RGB"), noise_level=noise_level, num_inference_steps=steps,
            guidance_scale=guidance, generator=generator, output_type="pil",
        ).images[0]
    if image.mode == "RGBA":
        out = out.convert("RGBA")
        out.putalpha(image.getchannel("A").resize(out.size, PILImage.Resampling.LANCZOS))
    return out


def latent_multiple(pipe: Any) -> int:
    """What latent sides must be a multiple of: the latent upscaler's UNet halves them per level."""
    return 2 ** (len(pipe.unet.config.block_out_channels) - 1)


def upscale_latents_x2(
    pipe: Any, latents: torch.Tensor, prompts: list[str], steps: int, guidance: float,
    negative_prompt: str | None, seeds: list[int],
) -> torch.Tensor:
    """Upscale a batch of final SD latents 2x in latent space; returns latents like the input's.

    The latents are the scaled ones a Stable Diffusion pipeline returns with ``output_type="latent"``
    (what the released latent upscaler expects); each image's noise comes from its own seed.
    """
    import torch

    if latents.shape[1] != 4:
        raise StageError(f"sd-latent-x2 expects 4-channel SD latents; got {latents.shape[1]} channels")
    multiple = latent_multiple(pipe)
    if latents.shape[-1] % multiple or latents.shape[-2] % multiple:
        raise StageError(f"sd-latent-x2 needs latents whose sides are multiples of {multiple}; got {tuple(latents.shape[-2:])}")
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    negative = [negative_prompt] * len(prompts) if negative_prompt and guidance > 1 else None
    upscaled = pipe(
        prompt=list(prompts), image=latents.to(pipe.device, pipe.unet.dtype), num_inference_steps=steps,
        guidance_scale=guidance, negative_prompt=negative, generator=generators, output_type="latent",
    ).images
    return upscaled.to(latents.device, latents.dtype)
