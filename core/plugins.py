"""The plugin manager: built-in and third-party plugins load from the ``sdmark`` entry-point group.

Environment variables:

``SDMARK_LOAD_PLUGINS``
    Comma-separated allowlist of entry-point names to load; set but empty loads none. This is the
    way out when a broken plugin stops sdmark from starting.
``SDMARK_DISABLE_PLUGINS``
    Comma-separated entry-point names to skip.
``SDMARK_TRACE_PLUGINS=1``
    Print every hook call, its arguments and results to stderr.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import entry_points
from typing import Any

import pluggy

from sdmark.core import hookspecs
from sdmark.core.errors import PluginError

ENTRY_POINT_GROUP = "sdmark"

hookimpl = pluggy.HookimplMarker("sdmark")
"""The marker plugins put on their hook implementations: ``@hookimpl def sdmark_...``."""

pm = pluggy.PluginManager("sdmark")
pm.add_hookspecs(hookspecs)

_loaded = False
_undo_tracing: Any = None
_origins: dict[str, tuple[str | None, str | None]] = {}


def _names(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def load_plugins() -> pluggy.PluginManager:
    """Load every plugin of the ``sdmark`` entry-point group, once per process.

    Respects ``SDMARK_LOAD_PLUGINS`` and ``SDMARK_DISABLE_PLUGINS``. Raises :class:`PluginError`
    naming the plugin when one fails to import or implements a hook that does not exist.
    """
    global _loaded
    if _loaded:
        return pm
    # The core's own default implementations (pipeline loading) are not optional.
    from sdmark.core import pipeline

    if not pm.is_registered(pipeline):
        pm.register(pipeline, name="sdmark.core.pipeline")

    allow = _names("SDMARK_LOAD_PLUGINS")
    deny = _names("SDMARK_DISABLE_PLUGINS") or set()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if (allow is not None and ep.name not in allow) or ep.name in deny:
            continue
        if pm.has_plugin(ep.name):
            continue
        dist = ep.dist.name if ep.dist else "unknown distribution"
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
            _origins[ep.name] = (ep.dist.name, ep.dist.version) if ep.dist else (None, None)
        except Exception as exc:  # a third-party import can fail in any way
            raise PluginError(
                f"plugin {ep.name!r} (from {dist}, {ep.value}) failed to load: "
                f"{type(exc).__name__}: {exc}. Skip it with SDMARK_DISABLE_PLUGINS={ep.name} "
                "or list the plugins you want in SDMARK_LOAD_PLUGINS."
            ) from exc
    check_pending()
    # Only a complete load counts: after a PluginError the next call must fail the same way,
    # not return a half-filled manager that looks like "no plugins installed".
    _loaded = True
    if os.environ.get("SDMARK_TRACE_PLUGINS", "") not in ("", "0"):
        enable_tracing()
    return pm


def check_pending() -> None:
    """Fail with the plugin's name if it implements a hook that no specification defines."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"plugin {exc.plugin!r} implements an unknown hook: {exc}. "
            "Hook names start with 'sdmark_' and are listed in docs/plugins.md."
        ) from exc


def enable_tracing(write: Any = None) -> None:
    """Print each hook call with its keyword arguments and its result (to stderr by default)."""
    global _undo_tracing
    if _undo_tracing is not None:
        return
    out = write or (lambda text: print(text, file=sys.stderr))

    def before(hook_name: str, hook_impls: list, kwargs: dict) -> None:
        plugins = ", ".join(impl.plugin_name for impl in hook_impls)
        args = ", ".join(f"{k}={_short(v)}" for k, v in kwargs.items())
        out(f"[sdmark] hook {hook_name}({args}) -> [{plugins}]")

    def after(outcome: Any, hook_name: str, hook_impls: list, kwargs: dict) -> None:
        exc = outcome.exception
        out(f"[sdmark] hook {hook_name} {'raised ' + repr(exc) if exc else 'returned ' + _short(outcome.get_result())}")

    _undo_tracing = pm.add_hookcall_monitoring(before, after)


def _short(value: Any, limit: int = 80) -> str:
    shape = getattr(value, "shape", None)
    text = f"<{type(value).__name__} {tuple(shape)}>" if shape is not None else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plugin_summary() -> list[dict[str, Any]]:
    """What is loaded: one dict per plugin with its name, distribution, version and hooks."""
    load_plugins()
    summary = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda pair: pair[0]):
        dist, version = _origins.get(name, ("sdmark", None) if name.startswith("sdmark.") else (None, None))
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        summary.append(
            {
                "name": name,
                "module": getattr(plugin, "__name__", repr(plugin)),
                "distribution": dist,
                "version": version,
                "hooks": hooks,
            }
        )
    return summary
