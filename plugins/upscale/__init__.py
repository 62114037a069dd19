"""The upscale plugin: the ``upscale`` stage (lanczos, OpenCV, super-resolution model files via
spandrel, and diffusers' x4 and latent x2 upscalers). The work lives in the modules beside this one,
imported only when the stage is used."""

from __future__ import annotations

from typing import Callable

from sdmark.core.runtime import hookimpl


@hookimpl
def sdmark_register_stages(register: Callable[[type], None]) -> None:
    from sdmark.plugins.upscale.stage import UpscaleStage

    register(UpscaleStage)
