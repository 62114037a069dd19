"""The hooks the watermark plugin declares and calls (added through ``sdmark_add_hookspecs``).

Another plugin implementing one marks it ``@hookimpl(optionalhook=True)``: it then loads whether
or not the watermark plugin does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    import click

hookspec = pluggy.HookspecMarker("sdmark")


@hookspec
def sdmark_register_watermark_schemes(register: Callable[[Any], None]) -> None:
    """Contribute watermark schemes that ``sdmark verify`` checks for.

    Runs once per runtime, the first time the scheme registry is built.

    :param register: call ``register(scheme)`` with an object implementing the watermark plugin's
        ``Scheme`` protocol (a name, the decoder it needs and a verdict from decoded bits).
    """


@hookspec
def sdmark_register_watermark_methods(register: Callable[[Any], None]) -> None:
    """Contribute embedding methods the ``watermark`` stage offers (``watermark:method=NAME``).

    Runs once per runtime, the first time the method registry is built.

    :param register: call ``register(method)`` with a
        :class:`~sdmark.plugins.watermark.methods.Method`; its ``scheme`` must name a registered scheme.
    """


@hookspec
def sdmark_inspect_image(path: Path, image: Any, metadata: dict[str, Any], report: dict[str, Any], runtime: Any) -> None:
    """Runs in ``sdmark verify`` for each readable image, after watermark detection.

    :param path: the image file.
    :param image: the decoded image (PIL, RGB or RGBA, EXIF orientation applied).
    :param metadata: what the file carried (:func:`sdmark.core.metadata.read_metadata`).
    :param report: the image's verify report: ``path``, ``watermarked``, ``detections`` (each with
        ``scheme``, ``p_value``, ``payload``, ``band``) and ``error``.
    :param runtime: the :class:`~sdmark.core.runtime.Runtime` running this verify;
        ``runtime.resource(name, open)`` keeps something open for the run (c2pa: the registry).

    May change: ``report``: add keys of your own (e.g. ``content_credentials``); do not remove or
    rewrite the keys above. Printed in ``--json`` output as they are.
    """


@hookspec
def sdmark_extend_verify(command: click.Command) -> None:
    """Add options to ``sdmark verify`` (c2pa adds ``--trust``).

    Runs once each time the command line is built, on a new ``verify`` command.

    :param command: the ``verify`` command; append :class:`click.Option` objects to
        ``command.params``. Verify passes no new arguments to its callback, so an option acts
        through its own ``callback`` with ``expose_value=False``.

    May change: ``command.params`` (add to it; do not remove or reorder the options there).
    """
