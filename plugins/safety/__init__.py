"""The safety plugin: the ``safety`` stage and its two built-in backends (``nudenet``, ``sd-clip``).

Only hook implementations live here (this module is imported on every CLI start); the stage
and the backends import their models lazily.
"""

from __future__ import annotations

from typing import Any, Callable

from sdmark.core.runtime import hookimpl


@hookimpl
def sdmark_add_hookspecs(pluginmanager: Any) -> None:
    from sdmark.plugins.safety import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


@hookimpl
def sdmark_register_stages(register: Callable[[type], None]) -> None:
    from sdmark.plugins.safety.stage import SafetyStage

    register(SafetyStage)


@hookimpl
def sdmark_register_safety_backends(register: Callable[[Any], None]) -> None:
    from sdmark.plugins.safety.nudenet_backend import NudeNetBackend
    from sdmark.plugins.safety.sdclip_backend import SdClipBackend

    register(NudeNetBackend)
    register(SdClipBackend)
