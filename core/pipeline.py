"""Loading a diffusers text-to-image pipeline, and the pieces of its call we need to own.

sdmark draws the initial latents itself, asks the pipeline for the final latents
(``output_type="latent"``) and decodes them exactly as the pipeline would, so that stages and hooks
can act before, during and after denoising without changing a single pixel when they do nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdmark.core.errors import ModelLoadError, SdmarkError, first_line
from sdmark.core.runtime import hookimpl

if TYPE_CHECKING:
    from typing import TypeAlias

    import torch
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline
    from PIL import Image

    # The real classes' modules: the names at diffusers' top level resolve to its placeholder
    # ("dummy") classes for a type checker, which have none of the pipelines' attributes.
    SdPipeline: TypeAlias = StableDiffusionPipeline | StableDiffusionXLPipeline
    """The pipelines sdmark runs (what :func:`sdmark_load_pipeline` accepts from any loader)."""

    from sdmark.core.runtime import Runtime

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"

# Scheduler short names (and the sampler name A1111 writes for each) -> diffusers class + config.
SCHEDULERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", "DDIM", {}),
    "pndm": ("PNDMScheduler", "PLMS", {}),
    "lms": ("LMSDiscreteScheduler", "LMS", {}),
    "euler": ("EulerDiscreteScheduler", "Euler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", "Euler a", {}),
    "heun": ("HeunDiscreteScheduler", "Heun", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", "DPM++ 2M", {}),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", "DPM++ 2M Karras", {"use_karras_sigmas": True}),
    "dpm++sde": ("DPMSolverSinglestepScheduler", "DPM++ SDE", {}),
    "unipc": ("UniPCMultistepScheduler", "UniPC", {}),
}
_SAMPLER_BY_CLASS = {cls: sampler for cls, sampler, extra in SCHEDULERS.values() if not extra}


DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def pick_device(requested: str | None = None) -> str:
    """``cuda`` when available, else ``mps``, else ``cpu``; an explicit request must be usable here.

    A device this machine lacks, or a name torch does not know (``tpu``), is an :class:`SdmarkError`
    that names what was asked and what to use instead, before any model is loaded.
    """
    import torch

    if requested and requested != "auto":
        requested = requested.strip()
        try:
            kind = torch.device(requested).type
        except (RuntimeError, ValueError):
            raise SdmarkError(f"device {requested!r} is not a device torch knows; choose {DEVICE_CHOICES}") from None
        if kind == "cpu":
            return requested
        if kind == "cuda":
            if not torch.cuda.is_available():
                raise SdmarkError(f"device {requested!r} requested but CUDA is not available (use --device cpu)")
            if requested.startswith("cuda:"):
                count = torch.cuda.device_count()
                index = requested.partition(":")[2]
                if not index.isdigit() or int(index) >= count:
                    raise SdmarkError(f"device {requested!r} requested but this machine has {count} CUDA device(s): "
                                      f"use cuda:0..cuda:{count - 1}")
            return requested
        if kind == "mps":
            mps = getattr(torch.backends, "mps", None)
            if mps is None or not mps.is_available():
                raise SdmarkError(f"device {requested!r} requested but Apple's MPS is not available (use --device cpu)")
            return requested
        raise SdmarkError(f"device {requested!r} is not supported by sdmark here; choose {DEVICE_CHOICES}")
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(requested: str | None, device: str) -> torch.dtype:
    """fp16 on GPUs, fp32 on the CPU, unless the user names ``fp32``, ``fp16`` or ``bf16``."""
    import torch

    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if requested in (None, "auto"):
        return torch.float32 if device == "cpu" else torch.float16
    try:
        return table[requested]
    except KeyError:
        raise SdmarkError(f"unknown dtype {requested!r}; choose auto, fp32, fp16 or bf16") from None


def set_scheduler(pipe: SdPipeline, name: str) -> None:
    """Replace the pipeline's scheduler by short name (``euler-a``) or diffusers class name."""
    import diffusers

    if name in SCHEDULERS:
        class_name, _, extra = SCHEDULERS[name]
    elif hasattr(diffusers, name) and name.endswith("Scheduler"):
        class_name, extra = name, {}
    else:
        raise SdmarkError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)} or a diffusers scheduler class")
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **extra)


def sampler_name(pipe: SdPipeline, scheduler: str | None) -> str:
    """The A1111 sampler name for the pipeline's scheduler (for the ``parameters`` text)."""
    if scheduler in SCHEDULERS:
        return SCHEDULERS[scheduler][1]
    class_name = type(pipe.scheduler).__name__
    return _SAMPLER_BY_CLASS.get(class_name, class_name)


def looks_local(model: str) -> bool:
    """Whether a model reference is shaped like a local path rather than a hub id (``org/name``)."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


@hookimpl(trylast=True)
def sdmark_load_pipeline(model: str, device: str, dtype: Any, options: dict[str, Any]) -> SdPipeline:
    """Built-in loader: ``from_pretrained`` on a hub id or a local folder, or a single-file checkpoint."""
    import diffusers

    path = Path(model).expanduser()
    if looks_local(model) and not path.exists():
        raise ModelLoadError(f"model folder {model!r} does not exist")
    # The safety checker is a stage of ours (never diffusers' silent black images), so the
    # pipeline is loaded without it.
    kwargs: dict[str, Any] = {"dtype": dtype, **_no_checker_kwargs(path)}
    try:
        if path.is_file():
            if path.suffix not in (".safetensors", ".ckpt"):
                raise ModelLoadError(f"{model}: a single-file model must be .safetensors or .ckpt")
            pipe = diffusers.StableDiffusionPipeline.from_single_file(str(path), **kwargs)
        else:
            pipe = diffusers.DiffusionPipeline.from_pretrained(str(path) if path.exists() else model, **kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:
        where = "folder" if path.exists() else "hub id"
        raise ModelLoadError(
            f"could not load model {where} {model!r}: {first_line(exc)}. "
            "Without network access, pass a local folder saved with save_pretrained() (it needs model_index.json)."
        ) from exc
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline

    if not isinstance(pipe, (StableDiffusionPipeline, StableDiffusionXLPipeline)):
        raise ModelLoadError(f"{model!r} is a {type(pipe).__name__}; sdmark runs Stable Diffusion 1.x/2.x and SDXL text-to-image pipelines")
    return pipe


def _no_checker_kwargs(path: Path) -> dict[str, Any]:
    """The arguments that load a pipeline without diffusers' safety checker, for pipelines that have one.

    SDXL pipelines have none and diffusers warns about arguments they do not take, so a local
    folder whose ``model_index.json`` lists no ``safety_checker`` gets none.
    """
    index = path / "model_index.json"
    if path.is_dir() and index.is_file():
        try:
            if "safety_checker" not in json.loads(index.read_text(encoding="utf-8")):
                return {}
        except (OSError, ValueError):
            pass
    return {"safety_checker": None, "requires_safety_checker": False}


def load_pipeline(
    model: str,
    device: str | None = None,
    dtype: str | None = None,
    *,
    scheduler: str | None = None,
    cpu_offload: bool = False,
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    attention_slicing: bool = False,
    runtime: Runtime | None = None,
) -> SdPipeline:
    """Load a pipeline through ``runtime``'s ``sdmark_load_pipeline`` hook (the installed plugins'
    when ``runtime`` is ``None``) and apply device and memory options."""
    from sdmark.core.runtime import Runtime

    runtime = runtime if runtime is not None else Runtime.load()
    quiet_loading()
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    if device == "cpu" and dtype in ("fp16", "float16"):
        from sdmark.core.stages import default_warn

        default_warn("--dtype fp16 on the CPU: slower than fp32 there and pixels differ from a GPU's; "
                     "fp16 is meant for GPUs (auto picks fp32 on the CPU)")
    options = {"scheduler": scheduler, "cpu_offload": cpu_offload, "vae_slicing": vae_slicing,
               "vae_tiling": vae_tiling, "attention_slicing": attention_slicing}
    pipe = runtime.load_pipeline(model=model, device=device, dtype=torch_dtype, options=options)
    drop_builtin_watermarker(pipe)
    if scheduler:
        set_scheduler(pipe, scheduler)
    if cpu_offload:
        if device == "cpu":
            raise SdmarkError("--cpu-offload moves models between the CPU and a GPU; it needs --device cuda")
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    if vae_slicing:
        pipe.vae.enable_slicing()
    if vae_tiling:
        pipe.vae.enable_tiling()
    if attention_slicing:
        pipe.enable_attention_slicing()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def drop_builtin_watermarker(pipe: SdPipeline) -> None:
    """Take diffusers' own SDXL invisible watermarker off ``pipe``: sdmark never applies it.

    diffusers gives every SDXL pipeline a fixed 48-bit dwtDct mark whenever invisible-watermark is
    installed (sdmark depends on it) and embeds it inside ``__call__``. sdmark decodes the latents
    itself (:func:`decode`) and leaves that mark out on purpose: marks are stages the user composes
    and the provenance record lists (the default chain ends in ``watermark``). An unlisted one would
    change pixels behind the chain's back (an empty chain would not give clean images), sit under
    the ``watermark`` stage's own mark, and be lost unrecorded to a later safety blur, upscale or
    JPEG encoding, which dwtDct does not survive. Clearing it here makes the loaded pipeline say
    what sdmark does, also to plugins that call it. ``sdmark verify`` still recognises SDXL's mark
    on images made elsewhere.
    """
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline

    if isinstance(pipe, StableDiffusionXLPipeline):
        pipe.watermark = None  # type: ignore[assignment]  # diffusers sets None itself without add_watermarker; its inferred type misses that


def verbose() -> bool:
    """Whether the user asked for libraries' own messages (``sdmark -v`` sets ``SDMARK_VERBOSE``)."""
    return bool(os.environ.get("SDMARK_VERBOSE") or os.environ.get("SDMARK_DEBUG"))


def quiet_loading() -> None:
    """Keep diffusers' and transformers' loading bars and log lines off the user's terminal.

    Their warnings speak to library developers ("Keyword arguments ... are not expected", a raw
    ``{self.config}``, the same fp16 advice once per component) and their "Loading weights" bars sit
    next to ours; sdmark says what matters in its own words. ``sdmark -v`` (``SDMARK_VERBOSE=1``) or
    ``SDMARK_DEBUG=1`` keeps them. Changes only those two libraries' logging settings.
    """
    import diffusers
    import transformers

    if verbose():
        diffusers.utils.logging.set_verbosity_info()
        transformers.utils.logging.set_verbosity_info()
        diffusers.utils.logging.enable_progress_bar()
        transformers.utils.logging.enable_progress_bar()
        return
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def latent_shape(pipe: SdPipeline, height: int, width: int) -> tuple[int, int, int]:
    """(channels, height, width) of one image's latents; sizes must be multiples of the VAE factor."""
    factor = pipe.vae_scale_factor
    if height % factor or width % factor:
        raise SdmarkError(f"width and height must be multiples of {factor} for this model; got {width}x{height}")
    return pipe.unet.config.in_channels, height // factor, width // factor


def default_size(pipe: SdPipeline) -> int:
    """The model's native resolution (512 for SD 1.x, 768 for SD 2 v, 1024 for SDXL)."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


def initial_latents(pipe: SdPipeline, seeds: list[int], height: int, width: int) -> tuple[torch.Tensor, list[torch.Generator]]:
    """N(0, 1) latents drawn one image at a time from CPU generators seeded ``seeds``.

    Identical to what the pipeline draws itself when called with
    ``generator=[torch.Generator("cpu").manual_seed(s) for s in seeds]``, and independent of the
    device, so a seed means the same image everywhere. The generators are returned because the
    scheduler keeps drawing from them (ancestral samplers).
    """
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    shape = (len(seeds), *latent_shape(pipe, height, width))
    latents = randn_tensor(shape, generator=generators, device=pipe._execution_device, dtype=pipe.unet.dtype)
    return latents, generators


def _upcast_vae(pipe: SdPipeline) -> None:
    """Upcast an fp16 SDXL VAE as the pipeline's own ``__call__`` does in the installed diffusers.

    Before diffusers 0.36 ``upcast_vae`` kept some attention layers in fp16; later it is a plain
    ``vae.to(float32)`` that warns of its own removal. Calling it keeps pixel parity with either.
    """
    import warnings

    import torch

    if not hasattr(pipe, "upcast_vae"):
        pipe.vae.to(dtype=torch.float32)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        pipe.upcast_vae()


def decode(pipe: SdPipeline, latents: torch.Tensor) -> list[Image.Image]:
    """Decode final latents to PIL images exactly as the pipeline's own ``__call__`` does.

    For SDXL that is the call with its built-in watermarker off (``add_watermarker=False``): see
    :func:`drop_builtin_watermarker`. It is never applied here, whoever loaded ``pipe``.
    """
    import torch
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline

    vae = pipe.vae
    with torch.no_grad():
        if isinstance(pipe, StableDiffusionXLPipeline):
            needs_upcasting = vae.dtype == torch.float16 and vae.config.force_upcast
            if needs_upcasting:
                _upcast_vae(pipe)
                # Older diffusers keep the decoder's first layers in fp16; the pipeline casts to them.
                latents = latents.to(next(iter(vae.post_quant_conv.parameters())).dtype)
            elif latents.dtype != vae.dtype:
                latents = latents.to(vae.dtype)
            mean = getattr(vae.config, "latents_mean", None)
            std = getattr(vae.config, "latents_std", None)
            if mean is not None and std is not None:
                mean = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
                std = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
                latents = latents * std / vae.config.scaling_factor + mean
            else:
                latents = latents / vae.config.scaling_factor
            image = vae.decode(latents, return_dict=False)[0]
            if needs_upcasting:
                vae.to(dtype=torch.float16)
        else:
            image = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
        images = pipe.image_processor.postprocess(image, output_type="pil", do_denormalize=[True] * image.shape[0])
    pipe.maybe_free_model_hooks()
    return images
