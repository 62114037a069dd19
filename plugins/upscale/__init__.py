"""The upscale plugin: the ``upscale`` stage and its built-in backends (lanczos, OpenCV,
super-resolution model files via spandrel, and diffusers' x4 and latent x2 upscalers), registered
through the hook this plugin declares. The work lives in the modules beside this one, imported only
when the stage is used."""

from __future__ import annotations

from typing import Any, Callable

from sdmark.core.runtime import hookimpl


@hookimpl
def sdmark_add_hookspecs(pluginmanager: Any) -> None:
    from sdmark.plugins.upscale import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


@hookimpl
def sdmark_register_stages(register: Callable[[type], None]) -> None:
    from sdmark.plugins.upscale.stage import UpscaleStage

    register(UpscaleStage)


@hookimpl
def sdmark_register_upscale_backends(register: Callable[[Any], None]) -> None:
    from sdmark.plugins.upscale.backends import builtin_backends

    for backend in builtin_backends():
        register(backend)
