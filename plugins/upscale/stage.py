"""The ``upscale`` stage: one stage, its backends chosen by ``backend=`` (:mod:`.backends`).

The size comes from ``factor``, or ``width``/``height``. A backend with a fixed scale (a model
file, the x4 upscaler) runs once and its output is then resized with lanczos to the exact target
(recorded as ``resized``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sdmark.core.errors import ChainError
from sdmark.core.stages import DenoiseBatch, ImageItem, OptionGroup, RunContext, Stage
from sdmark.plugins.upscale import resample
from sdmark.plugins.upscale.backends import SizeOptions, UpscaleBackend, backend_registry

if TYPE_CHECKING:
    from PIL import Image

    from sdmark.core.runtime import Runtime


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


class UpscaleStage(Stage[SizeOptions]):
    """Enlarge images by resampling, a super-resolution model, or a diffusion upscaler."""

    name = "upscale"
    description = "enlarge images: lanczos, OpenCV, a super-resolution model file (spandrel), or the SD x4 / latent x2 upscalers"
    kind = "resize"
    phases = ("process", "after_denoise")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._engine: UpscaleBackend[Any] | None = None

    @classmethod
    def option_groups(cls, runtime: Runtime) -> tuple[OptionGroup, ...]:
        """Each backend's own options (``backend=``)."""
        return (OptionGroup("backend", backend_registry(runtime).options()),)

    @property
    def backend(self) -> str:
        return self.options.backend

    @property
    def engine(self) -> UpscaleBackend[Any]:
        """The chosen backend, configured with its options (one per stage, made on first use)."""
        engine = self._engine
        if engine is None:
            if self.runtime is None:
                raise ChainError("the upscale stage was built outside a Chain (it has no runtime to find its backend in)")
            backend = backend_registry(self.runtime).get(self.backend)
            engine = backend(self.chosen.get("backend", backend.Options()))
            self._engine = engine
        return engine

    def active_phases(self) -> tuple[str, ...]:
        return (self.engine.phase,)

    def output_size(self, width: int, height: int) -> tuple[int, int] | None:
        native = self.engine.native_factor
        opts = self.options
        if native is None and not (opts.factor or opts.width or opts.height):
            return None  # e.g. a model file's own scale is known only once it is loaded
        try:
            return self._target((width, height), native or 1.0)
        except Exception:
            return None

    def check(self, mode: str) -> None:
        opts = self.options
        if opts.factor and (opts.width or opts.height):
            raise ChainError("upscale: give either factor or width/height, not both")
        self.engine.check(opts, mode)

    def setup(self, context: RunContext) -> None:
        """Load the model the backend needs (once per run, shared through ``context.cache``)."""
        self.engine.setup(context)

    def _target(self, size: tuple[int, int], native: float) -> tuple[int, int]:
        opts = self.options
        return resample.target_size(size, opts.factor or native, opts.width, opts.height)

    def process_one(self, item: ImageItem, context: RunContext) -> dict[str, Any]:
        """Replace ``item.image`` by its upscaled version; the result says how and to what size."""
        image, engine = item.image, self.engine
        result: dict[str, Any] = {"backend": self.backend, "input_size": list(image.size)}
        target = self._target(image.size, engine.scale())
        out = self._fit(engine.upscale(image, target, item, result), target, result)
        item.image = out
        result["output_size"] = list(out.size)
        result["summary"] = f"{self.backend} {_size(image.size)} -> {_size(out.size)}" + (" (lanczos to target)" if "resized" in result else "")
        return result

    @staticmethod
    def _fit(image: Image.Image, target: tuple[int, int], result: dict[str, Any]) -> Image.Image:
        """Resize a fixed-scale backend's output to the exact target with lanczos, and record that."""
        if image.size == target:
            return image
        result["resized"] = {"from": list(image.size), "to": list(target), "with": "lanczos"}
        return resample.lanczos(image, target)

    def after_denoise(self, batch: DenoiseBatch, context: RunContext) -> dict[str, Any]:
        """A latent backend (sd-latent-x2): replace ``batch.latents`` by enlarged latents, so the VAE
        decodes a larger image."""
        return self.engine.upscale_latents(batch, context)

