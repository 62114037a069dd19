"""The ``upscale`` stage: one stage, five backends chosen by ``backend=``.

* ``lanczos`` (Pillow) and ``opencv`` (``interpolation=``): plain resampling to any size;
* ``model``: a super-resolution model file read by spandrel (ESRGAN & co.), tiled with overlap;
* ``sd-x4``: diffusers' x4 upscaler on the decoded image, guided by a prompt;
* ``sd-latent-x2``: diffusers' latent x2 upscaler on the final latents during ``generate`` (its
  only phase is ``after_denoise``, so ``process`` refuses it before any work).

The size comes from ``factor``, or ``width``/``height``. A model with a fixed scale runs once and
its output is then resized with lanczos to the exact target (recorded as ``resized``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdmark.core.errors import ChainError, ModelLoadError
from sdmark.core.stages import DenoiseBatch, ImageItem, Option, RunContext, Stage
from sdmark.plugins.upscale import diffusion, resample

BACKENDS = ("lanczos", "opencv", "model", "sd-x4", "sd-latent-x2")
DTYPES = ("auto", "fp32", "fp16", "bf16")
_PLAIN_FACTOR = 2.0
# Options that only mean something for some backends (the others take factor/width/height only).
_BACKEND_OPTIONS = {
    "interpolation": ("opencv",),
    "model": ("model", "sd-x4", "sd-latent-x2"),
    "tile": ("model",),
    "overlap": ("model",),
    "dtype": ("model", "sd-x4", "sd-latent-x2"),
    "prompt": ("sd-x4", "sd-latent-x2"),
    "noise_level": ("sd-x4",),
    "steps": ("sd-x4", "sd-latent-x2"),
    "guidance": ("sd-x4", "sd-latent-x2"),
}


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


class UpscaleStage(Stage):
    """Enlarge images by resampling, a super-resolution model, or a diffusion upscaler."""

    name = "upscale"
    description = "enlarge images: lanczos, OpenCV, a super-resolution model file (spandrel), or the SD x4 / latent x2 upscalers"
    kind = "resize"
    options = (
        Option("backend", str, "lanczos", "lanczos, opencv, model (a super-resolution model file), sd-x4, or sd-latent-x2 (generate only)", choices=BACKENDS),
        Option("factor", float, 0.0, "scale factor; 0 = the backend's own (2 for lanczos/opencv, the model's scale, 4 for sd-x4, 2 for sd-latent-x2)", minimum=0.0, maximum=16.0),
        Option("width", int, 0, "target width in pixels (0 = from height's aspect ratio or factor)", minimum=0),
        Option("height", int, 0, "target height in pixels (0 = from width's aspect ratio or factor)", minimum=0),
        Option("interpolation", str, "cubic", "OpenCV interpolation (backend=opencv)", choices=tuple(resample.OPENCV_INTERPOLATIONS)),
        Option("model", str, "", f"backend=model: a .safetensors (preferred) or .pth file; sd-x4/sd-latent-x2: a hub id or folder (default {diffusion.X4_MODEL} / {diffusion.LATENT_X2_MODEL})"),
        Option("tile", int, 512, "backend=model: tile size in input pixels, so large images fit in memory (0 = whole image)", minimum=0),
        Option("overlap", int, 32, "backend=model: context pixels around each tile (hides seams)", minimum=0),
        Option("dtype", str, "auto", "model weights precision; auto = fp16 on a GPU, fp32 on the CPU", choices=DTYPES),
        Option("prompt", str, "", "sd-x4/sd-latent-x2: the text guiding the upscale (default: the image's generation prompt)"),
        Option("noise_level", int, 20, "sd-x4: noise added to the low-resolution image (more = more invented detail)", minimum=0, maximum=350),
        Option("steps", int, 20, "sd-x4/sd-latent-x2: denoising steps", minimum=1, maximum=500),
        Option("guidance", float, -1.0, f"sd-x4/sd-latent-x2: guidance scale; -1 = the backend's default ({diffusion.X4_GUIDANCE:g} / {diffusion.LATENT_GUIDANCE:g})", minimum=-1.0),
    )
    phases = ("process", "after_denoise")

    @property
    def backend(self) -> str:
        return self.options["backend"]

    def active_phases(self) -> tuple[str, ...]:
        return ("after_denoise",) if self.backend == "sd-latent-x2" else ("process",)

    def output_size(self, width: int, height: int) -> tuple[int, int] | None:
        native = {"lanczos": _PLAIN_FACTOR, "opencv": _PLAIN_FACTOR, "sd-x4": 4, "sd-latent-x2": 2}.get(self.backend)
        opts = self.options
        if native is None and not (opts["factor"] or opts["width"] or opts["height"]):
            return None  # a model file's own scale is known only once it is loaded
        try:
            return self._target((width, height), native or 1.0)
        except Exception:
            return None

    def check(self, mode: str) -> None:
        opts = self.options
        defaults = {option.name: option.default for option in type(self).options}
        for name, backends in _BACKEND_OPTIONS.items():
            if self.backend not in backends and opts[name] != defaults[name]:
                raise ChainError(f"option upscale:{name} does not apply to backend {self.backend!r} "
                                 f"(it is for {', '.join(backends)})")
        if opts["factor"] and (opts["width"] or opts["height"]):
            raise ChainError("upscale: give either factor or width/height, not both")
        if self.backend == "sd-latent-x2" and (opts["factor"] not in (0, 2) or opts["width"] or opts["height"]):
            raise ChainError("upscale:backend=sd-latent-x2 always doubles the size (in latent space); drop factor/width/height or pick another backend")
        if self.backend in ("sd-x4", "sd-latent-x2"):
            try:
                diffusion.check_model_source(self._model_id())
            except ModelLoadError as exc:
                raise ChainError(str(exc)) from None
        if self.backend == "model":
            if not opts["model"]:
                raise ChainError("upscale:backend=model needs model=PATH (a .safetensors or .pth super-resolution model)")
            from sdmark.plugins.upscale.sr_model import check_model_file

            try:
                check_model_file(Path(opts["model"]).expanduser())
            except ModelLoadError as exc:
                raise ChainError(str(exc)) from None

    def _model_id(self) -> str:
        default = diffusion.X4_MODEL if self.backend == "sd-x4" else diffusion.LATENT_X2_MODEL
        return self.options["model"] or default

    def _guidance(self) -> float:
        guidance = self.options["guidance"]
        if guidance >= 0:
            return guidance
        return diffusion.X4_GUIDANCE if self.backend == "sd-x4" else diffusion.LATENT_GUIDANCE

    def setup(self, context: RunContext) -> None:
        """Load the model this backend needs (once per run, shared through ``context.cache``)."""
        self._model: Any = None
        if self.backend == "model":
            from sdmark.plugins.upscale.sr_model import load_sr_model

            path = Path(self.options["model"]).expanduser().resolve()
            key = ("upscale:model", str(path), context.device, self.options["dtype"])
            if key not in context.cache:
                context.cache[key] = load_sr_model(path, context.device, self.options["dtype"])
            self._model = context.cache[key]
        elif self.backend in ("sd-x4", "sd-latent-x2"):
            from sdmark.core.pipeline import pick_dtype

            dtype = pick_dtype(None if self.options["dtype"] == "auto" else self.options["dtype"], context.device)
            kind = "x4" if self.backend == "sd-x4" else "latent"
            key = ("upscale:" + kind, self._model_id(), context.device, str(dtype))
            if key not in context.cache:
                context.cache[key] = diffusion.load_upscaler(kind, self._model_id(), context.device, dtype)
            self._model = context.cache[key]
            if kind == "latent":
                self._check_generation_size(context)

    def _check_generation_size(self, context: RunContext) -> None:
        """Refuse, before denoising, an image size the latent upscaler's UNet cannot halve often enough."""
        from sdmark.core.pipeline import default_size

        pipe, settings = context.pipeline, context.settings
        if pipe is None or settings is None:
            return
        step = pipe.vae_scale_factor * diffusion.latent_multiple(self._model)
        width, height = settings.width or default_size(pipe), settings.height or default_size(pipe)
        if width % step or height % step:
            raise ChainError(f"upscale:backend=sd-latent-x2 needs image sides that are multiples of {step} with this model; got {width}x{height}")

    def _target(self, size: tuple[int, int], native: float) -> tuple[int, int]:
        opts = self.options
        return resample.target_size(size, opts["factor"] or native, opts["width"], opts["height"])

    def process_one(self, item: ImageItem, context: RunContext) -> dict[str, Any]:
        """Replace ``item.image`` by its upscaled version; the result says how and to what size."""
        image, backend, opts = item.image, self.backend, self.options
        result: dict[str, Any] = {"backend": backend, "input_size": list(image.size)}
        if backend == "lanczos":
            out = resample.lanczos(image, self._target(image.size, _PLAIN_FACTOR))
        elif backend == "opencv":
            out = resample.opencv(image, self._target(image.size, _PLAIN_FACTOR), opts["interpolation"])
            result["interpolation"] = opts["interpolation"]
        elif backend == "model":
            target = self._target(image.size, self._model.scale)
            out = self._model.upscale(image, opts["tile"], opts["overlap"])
            result["model"] = self._model.describe()
            result["tile"] = opts["tile"] if self._model.tiling_allowed else 0
            out = self._fit(out, target, result)
        else:  # sd-x4
            target = self._target(image.size, 4)
            prompt = opts["prompt"] or item.prompt or ""
            seed = item.seed if item.seed is not None else 0
            out = diffusion.upscale_image_x4(self._model, image, prompt, opts["noise_level"], opts["steps"], self._guidance(), seed)
            result.update(model=self._model_id(), prompt=prompt, noise_level=opts["noise_level"], steps=opts["steps"],
                          guidance=self._guidance(), seed=seed)
            out = self._fit(out, target, result)
        item.image = out
        result["output_size"] = list(out.size)
        result["summary"] = f"{backend} {_size(image.size)} -> {_size(out.size)}" + (" (lanczos to target)" if "resized" in result else "")
        return result

    @staticmethod
    def _fit(image: Any, target: tuple[int, int], result: dict[str, Any]) -> Any:
        """Resize a fixed-scale model's output to the exact target with lanczos, and record that."""
        if image.size == target:
            return image
        result["resized"] = {"from": list(image.size), "to": list(target), "with": "lanczos"}
        return resample.lanczos(image, target)

    def after_denoise(self, batch: DenoiseBatch, context: RunContext) -> dict[str, Any]:
        """sd-latent-x2: replace ``batch.latents`` by 2x latents, so the VAE decodes a 2x image."""
        settings = context.settings
        prompts = [self.options["prompt"]] * len(batch.prompts) if self.options["prompt"] else list(batch.prompts)
        before = tuple(batch.latents.shape[-2:])
        batch.latents = diffusion.upscale_latents_x2(
            self._model, batch.latents, prompts, self.options["steps"], self._guidance(),
            getattr(settings, "negative_prompt", None), batch.seeds,
        )
        after = tuple(batch.latents.shape[-2:])
        factor = getattr(context.pipeline, "vae_scale_factor", 8)
        size_in, size_out = (before[1] * factor, before[0] * factor), (after[1] * factor, after[0] * factor)
        return {
            "backend": self.backend, "model": self._model_id(), "input_size": list(size_in), "output_size": list(size_out),
            "latent_size": [list(before[::-1]), list(after[::-1])], "steps": self.options["steps"], "guidance": self._guidance(),
            "prompt": self.options["prompt"] or None,
            "summary": f"sd-latent-x2 {_size(size_in)} -> {_size(size_out)} (in latent space)",
        }
