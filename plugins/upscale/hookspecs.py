"""The hook the upscale plugin declares and calls (added through ``sdmark_add_hookspecs``)."""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("sdmark")


@hookspec
def sdmark_register_upscale_backends(register: Callable[[Any], None]) -> None:
    """Contribute backends that the ``upscale`` stage can use (``upscale:backend=NAME``).

    Runs once per runtime, the first time the backend registry is built.

    :param register: call ``register(BackendClass)`` with a subclass of the upscale plugin's
        ``UpscaleBackend``.
    """
