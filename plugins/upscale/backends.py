"""Upscale backends: the ways the ``upscale`` stage enlarges an image, and their registry.

A backend is an :class:`UpscaleBackend` subclass naming its options dataclass as its type argument
(``class OpencvBackend(UpscaleBackend[OpencvOptions])``); the stage accepts every backend's options
and refuses one set for a backend other than the chosen one. Plugins add backends through the
``sdmark_register_upscale_backends(register)`` hook; ``upscale:backend=NAME`` picks one.

Built in:

* ``lanczos`` (Pillow) and ``opencv`` (``interpolation=``): plain resampling to any size;
* ``model``: a super-resolution model file read by spandrel (ESRGAN & co.), tiled with overlap;
* ``sd-x4``: diffusers' x4 upscaler on the decoded image, guided by a prompt;
* ``sd-latent-x2``: diffusers' latent x2 upscaler on the final latents during ``generate`` (its
  only phase is ``after_denoise``, so ``process`` refuses it before any work).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from sdmark.core.backends import BackendRegistry
from sdmark.core.errors import ChainError, ModelLoadError, PluginError
from sdmark.core.options import DeclaresOptions, Opts, StageOptions, option
from sdmark.plugins.upscale import diffusion, resample

if TYPE_CHECKING:
    from PIL import Image

    from sdmark.core.runtime import Runtime
    from sdmark.core.stages import DenoiseBatch, ImageItem, RunContext
    from sdmark.plugins.upscale.sr_model import SRModel

DTYPES = ("auto", "fp32", "fp16", "bf16")
PHASES = ("process", "after_denoise")
_DTYPE_HELP = "model weights precision; auto = fp16 on a GPU, fp32 on the CPU"
_PROMPT_HELP = "the text guiding the upscale (default: the image's generation prompt)"
_STEPS_HELP = "denoising steps"


@dataclass(frozen=True)
class SizeOptions(StageOptions):
    """The ``upscale`` stage's own options: which backend, and the size asked for."""

    backend: str = option("lanczos", "lanczos, opencv, model (a super-resolution model file), sd-x4, sd-latent-x2 "
                          "(generate only), or a plugin's backend", choices=lambda runtime: backend_registry(runtime).names())
    factor: float = option(0.0, "scale factor; 0 = the backend's own (2 for lanczos/opencv, the model's scale, 4 for sd-x4, "
                           "2 for sd-latent-x2)", minimum=0.0, maximum=16.0)
    width: int = option(0, "target width in pixels (0 = from height's aspect ratio or factor)", minimum=0)
    height: int = option(0, "target height in pixels (0 = from width's aspect ratio or factor)", minimum=0)


class UpscaleBackend(DeclaresOptions[Opts]):
    """Base class of an upscale backend.

    Subclasses set ``name`` (what users write after ``backend=``), ``description``, ``phase``
    (``process``: decoded images, in ``generate`` and ``process``; ``after_denoise``: the final
    latents, ``generate`` only) and ``native_factor`` (the scale when the user gives neither factor
    nor size; ``None`` when it is known only once set up, as a model file's), name their options as
    the type argument, and implement :meth:`upscale` (or :meth:`upscale_latents`). One instance serves
    one configured stage; load models in :meth:`setup`, through ``context.cache``.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    phase: ClassVar[str] = "process"
    native_factor: ClassVar[float | None] = 2.0
    options: Opts

    def __init__(self, options: Opts) -> None:
        self.options = options

    def check(self, size: SizeOptions, mode: str) -> None:
        """Refuse, before any work, options this backend cannot run with; raise :class:`ChainError`."""

    def setup(self, context: RunContext) -> None:
        """Load what the backend needs, once per run (share models through ``context.cache``)."""

    def scale(self) -> float:
        """The scale used when the user gives neither factor nor size (after :meth:`setup`)."""
        return self.native_factor or 1.0

    def upscale(self, image: Image.Image, target: tuple[int, int], item: ImageItem, result: dict[str, Any]) -> Image.Image:
        """The enlarged image (``process`` backends); its size may differ from ``target`` (the stage
        then resizes it with lanczos and records that). Add what the record should say to ``result``."""
        raise NotImplementedError

    def upscale_latents(self, batch: DenoiseBatch, context: RunContext) -> dict[str, Any]:
        """Replace ``batch.latents`` by enlarged latents (``after_denoise`` backends); return the record entry."""
        raise NotImplementedError


class UpscaleBackendRegistry(BackendRegistry[UpscaleBackend[Any]]):
    """Upscale backends by name, in registration order, filled through ``sdmark_register_upscale_backends``."""

    kind = "upscale backend"

    def check(self, backend: Any) -> str:
        if not (isinstance(backend, type) and issubclass(backend, UpscaleBackend)):
            raise PluginError(f"upscale backend {backend!r} is not an UpscaleBackend subclass")
        name = self.name_of(backend)
        if backend.phase not in PHASES:
            raise PluginError(f"upscale backend {name!r} has phase {backend.phase!r}; use one of {', '.join(PHASES)}")
        return name


def backend_registry(runtime: Runtime) -> UpscaleBackendRegistry:
    """Every upscale backend ``runtime``'s plugins register (built once per runtime)."""
    return runtime.collect("sdmark_register_upscale_backends", UpscaleBackendRegistry, UpscaleBackendRegistry.register)


# -- built-in backends ---------------------------------------------------------------------------


class LanczosBackend(UpscaleBackend[StageOptions]):
    name = "lanczos"
    description = "Pillow's lanczos resampling to any size"

    def upscale(self, image: Image.Image, target: tuple[int, int], item: ImageItem, result: dict[str, Any]) -> Image.Image:
        return resample.lanczos(image, target)


@dataclass(frozen=True)
class OpencvOptions(StageOptions):
    interpolation: str = option("cubic", "OpenCV interpolation", choices=tuple(resample.OPENCV_INTERPOLATIONS))


class OpencvBackend(UpscaleBackend[OpencvOptions]):
    name = "opencv"
    description = "OpenCV's resize with a chosen interpolation"

    def upscale(self, image: Image.Image, target: tuple[int, int], item: ImageItem, result: dict[str, Any]) -> Image.Image:
        result["interpolation"] = self.options.interpolation
        return resample.opencv(image, target, self.options.interpolation)


@dataclass(frozen=True)
class ModelFileOptions(StageOptions):
    model: str = option("", "a .safetensors (preferred) or .pth super-resolution model file")
    tile: int = option(512, "tile size in input pixels, so large images fit in memory (0 = whole image)", minimum=0)
    overlap: int = option(32, "context pixels around each tile (hides seams)", minimum=0)
    dtype: str = option("auto", _DTYPE_HELP, choices=DTYPES)


class ModelFileBackend(UpscaleBackend[ModelFileOptions]):
    name = "model"
    description = "a super-resolution model file (ESRGAN & co., read by spandrel), tiled with overlap"
    native_factor = None  # the model's own scale, known once it is loaded

    def check(self, size: SizeOptions, mode: str) -> None:
        if not self.options.model:
            raise ChainError("upscale:backend=model needs model=PATH (a .safetensors or .pth super-resolution model)")
        from sdmark.plugins.upscale.sr_model import check_model_file

        try:
            check_model_file(Path(self.options.model).expanduser())
        except ModelLoadError as exc:
            raise ChainError(str(exc)) from None

    def setup(self, context: RunContext) -> None:
        from sdmark.plugins.upscale.sr_model import load_sr_model

        path = Path(self.options.model).expanduser().resolve()
        key = ("upscale:model", str(path), context.device, self.options.dtype)
        if key not in context.cache:
            context.cache[key] = load_sr_model(path, context.device, self.options.dtype)
        self._model: SRModel = context.cache[key]

    def scale(self) -> float:
        return self._model.scale

    def upscale(self, image: Image.Image, target: tuple[int, int], item: ImageItem, result: dict[str, Any]) -> Image.Image:
        out = self._model.upscale(image, self.options.tile, self.options.overlap)
        result["model"] = self._model.describe()
        result["tile"] = self.options.tile if self._model.tiling_allowed else 0
        return out


@dataclass(frozen=True)
class X4Options(StageOptions):
    model: str = option("", f"a hub id or folder (default {diffusion.X4_MODEL})")
    dtype: str = option("auto", _DTYPE_HELP, choices=DTYPES)
    prompt: str = option("", _PROMPT_HELP)
    noise_level: int = option(20, "noise added to the low-resolution image (more = more invented detail)", minimum=0, maximum=350)
    steps: int = option(20, _STEPS_HELP, minimum=1, maximum=500)
    guidance: float = option(-1.0, f"guidance scale; -1 = the backend's default ({diffusion.X4_GUIDANCE:g})", minimum=-1.0)


@dataclass(frozen=True)
class LatentX2Options(StageOptions):
    model: str = option("", f"a hub id or folder (default {diffusion.LATENT_X2_MODEL})")
    dtype: str = option("auto", _DTYPE_HELP, choices=DTYPES)
    prompt: str = option("", _PROMPT_HELP)
    steps: int = option(20, _STEPS_HELP, minimum=1, maximum=500)
    guidance: float = option(-1.0, f"guidance scale; -1 = the backend's default ({diffusion.LATENT_GUIDANCE:g})", minimum=-1.0)


D = TypeVar("D", X4Options, LatentX2Options)


class _DiffusionBackend(UpscaleBackend[D]):
    """What the two diffusers upscalers share: a hub id or folder, a dtype, a guidance default."""

    kind: ClassVar[str]
    default_model: ClassVar[str]
    default_guidance: ClassVar[float]

    def model_id(self) -> str:
        return self.options.model or self.default_model

    def guidance(self) -> float:
        guidance = self.options.guidance
        return guidance if guidance >= 0 else self.default_guidance

    def check(self, size: SizeOptions, mode: str) -> None:
        try:
            diffusion.check_model_source(self.model_id())
        except ModelLoadError as exc:
            raise ChainError(str(exc)) from None

    def setup(self, context: RunContext) -> None:
        from sdmark.core.pipeline import pick_dtype

        dtype = pick_dtype(None if self.options.dtype == "auto" else self.options.dtype, context.device)
        key = ("upscale:" + self.kind, self.model_id(), context.device, str(dtype))
        if key not in context.cache:
            context.cache[key] = diffusion.load_upscaler(self.kind, self.model_id(), context.device, dtype)
        self._pipe: Any = context.cache[key]


class X4Backend(_DiffusionBackend[X4Options]):
    name = "sd-x4"
    description = "diffusers' Stable Diffusion x4 upscaler on the decoded image, guided by a prompt"
    native_factor = 4
    kind = "x4"
    default_model = diffusion.X4_MODEL
    default_guidance = diffusion.X4_GUIDANCE

    def upscale(self, image: Image.Image, target: tuple[int, int], item: ImageItem, result: dict[str, Any]) -> Image.Image:
        opts = self.options
        prompt = opts.prompt or item.prompt or ""
        seed = item.seed if item.seed is not None else 0
        out = diffusion.upscale_image_x4(self._pipe, image, prompt, opts.noise_level, opts.steps, self.guidance(), seed)
        result.update(model=self.model_id(), prompt=prompt, noise_level=opts.noise_level, steps=opts.steps,
                      guidance=self.guidance(), seed=seed)
        return out


class LatentX2Backend(_DiffusionBackend[LatentX2Options]):
    name = "sd-latent-x2"
    description = "diffusers' latent x2 upscaler on the final latents (generate only)"
    phase = "after_denoise"
    native_factor = 2
    kind = "latent"
    default_model = diffusion.LATENT_X2_MODEL
    default_guidance = diffusion.LATENT_GUIDANCE

    def check(self, size: SizeOptions, mode: str) -> None:
        if size.factor not in (0, 2) or size.width or size.height:
            raise ChainError("upscale:backend=sd-latent-x2 always doubles the size (in latent space); drop "
                             "factor/width/height or pick another backend")
        super().check(size, mode)

    def setup(self, context: RunContext) -> None:
        super().setup(context)
        self._check_generation_size(context)

    def _check_generation_size(self, context: RunContext) -> None:
        """Refuse, before denoising, an image size the latent upscaler's UNet cannot halve often enough."""
        from sdmark.core.pipeline import default_size

        pipe, settings = context.pipeline, context.settings
        if pipe is None or settings is None:
            return
        step = pipe.vae_scale_factor * diffusion.latent_multiple(self._pipe)
        width, height = settings.width or default_size(pipe), settings.height or default_size(pipe)
        if width % step or height % step:
            raise ChainError(f"upscale:backend=sd-latent-x2 needs image sides that are multiples of {step} with this model; got {width}x{height}")

    def upscale_latents(self, batch: DenoiseBatch, context: RunContext) -> dict[str, Any]:
        opts = self.options
        prompts = [opts.prompt] * len(batch.prompts) if opts.prompt else list(batch.prompts)
        before = tuple(batch.latents.shape[-2:])
        batch.latents = diffusion.upscale_latents_x2(
            self._pipe, batch.latents, prompts, opts.steps, self.guidance(),
            getattr(context.settings, "negative_prompt", None), batch.seeds,
        )
        after = tuple(batch.latents.shape[-2:])
        factor = getattr(context.pipeline, "vae_scale_factor", 8)
        size_in, size_out = (before[1] * factor, before[0] * factor), (after[1] * factor, after[0] * factor)
        return {
            "backend": self.name, "model": self.model_id(), "input_size": list(size_in), "output_size": list(size_out),
            "latent_size": [list(before[::-1]), list(after[::-1])], "steps": opts.steps, "guidance": self.guidance(),
            "prompt": opts.prompt or None,
            "summary": f"sd-latent-x2 {size_in[0]}x{size_in[1]} -> {size_out[0]}x{size_out[1]} (in latent space)",
        }


def builtin_backends() -> tuple[type[UpscaleBackend[Any]], ...]:
    """The backends this plugin registers, in the order ``sdmark stages`` lists them."""
    return (LanczosBackend, OpencvBackend, ModelFileBackend, X4Backend, LatentX2Backend)
