"""The watermark plugin: the ``watermark`` stage and the schemes ``sdmark verify`` knows.

Modules: :mod:`.stage` (the stage), :mod:`.methods` (embedding methods by name),
:mod:`.schemes` (detectors, p-values, bands, the scheme registry), :mod:`.payload` (our versioned,
BCH-protected payload), :mod:`.dwt` (vectorised dwtDct/dwtDctSvd), :mod:`.rivagan` (rivaGan via
onnxruntime), :mod:`.verify` (the verify API), :mod:`.calibration` (false-positive measurements).
"""

from __future__ import annotations

from typing import Any, Callable

from sdmark.core.runtime import hookimpl


@hookimpl
def sdmark_add_hookspecs(pluginmanager: Any) -> None:
    from sdmark.plugins.watermark import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


@hookimpl
def sdmark_register_stages(register: Callable[[type], None]) -> None:
    from sdmark.plugins.watermark.stage import WatermarkStage

    register(WatermarkStage)


@hookimpl(tryfirst=True)
def sdmark_finalize_output(path: Any, item: Any, context: Any) -> None:
    """Read the mark back from the encoded file: lossy formats or alpha flattening can erase it."""
    from sdmark.plugins.watermark.stage import check_written_mark

    check_written_mark(path, item, context.runtime)


@hookimpl
def sdmark_register_watermark_schemes(register: Callable[[Any], None]) -> None:
    from sdmark.plugins.watermark.schemes import builtin_schemes

    for scheme in builtin_schemes():
        register(scheme)


@hookimpl
def sdmark_register_watermark_methods(register: Callable[[Any], None]) -> None:
    from sdmark.plugins.watermark.methods import builtin_methods

    for method in builtin_methods():
        register(method)


@hookimpl
def sdmark_register_commands(cli: Any) -> None:
    """``sdmark verify`` belongs to this plugin: without it there is no scheme to check."""
    from sdmark.plugins.watermark.command import make_verify_command

    cli.add_command(make_verify_command(cli.runtime))
