"""The hook the safety plugin declares and calls (added through ``sdmark_add_hookspecs``)."""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("sdmark")


@hookspec
def sdmark_register_safety_backends(register: Callable[[Any], None]) -> None:
    """Contribute NSFW-checker backends that the ``safety`` stage can use (``safety:backend=NAME``).

    Runs once per runtime, the first time the backend registry is built.

    :param register: call ``register(BackendClass)`` with a class implementing the safety plugin's
        ``SafetyBackend`` protocol.
    """
