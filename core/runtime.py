"""The Runtime: one object that owns sdmark's plugin manager, plugin loading and every registry.

A :class:`Runtime` is built with :meth:`Runtime.load` (the CLI builds one per invocation, a library
user one per process or per test) and travels with the work: a :class:`~sdmark.core.chain.Chain`
holds the runtime it was built from and every :class:`~sdmark.core.stages.RunContext` carries it.
Nothing about plugins lives in module globals: two runtimes never share a registry.

Environment variables read by :meth:`Runtime.load`:

``SDMARK_LOAD_PLUGINS``
    Comma-separated allowlist of entry-point names to load; set but empty loads none. This is the
    way out when a broken plugin stops sdmark from starting.
``SDMARK_DISABLE_PLUGINS``
    Comma-separated entry-point names to skip (pluggy's ``set_blocked``).
``SDMARK_TRACE_PLUGINS=1``
    Print every hook call, its arguments and results to stderr.

Registries: each kind of contribution (stages, watermark schemes and methods, safety and upscale
backends) is filled the same way, through a ``sdmark_register_*(register)`` hook whose
``register`` callback the registry supplies; :meth:`Runtime.collect` builds each one once per
runtime, and registering or unregistering a plugin forgets them all.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence, TypeVar

import pluggy
from pluggy import HookImpl

from sdmark.core import hookspecs
from sdmark.core.errors import PluginError, SdmarkError

if TYPE_CHECKING:
    import click

    from sdmark.core.output import OutputOptions
    from sdmark.core.stages import DenoiseBatch, ImageItem, RunContext, StageRegistry

ENTRY_POINT_GROUP = "sdmark"
PROJECT = "sdmark"

hookimpl = pluggy.HookimplMarker(PROJECT)
"""The marker plugins put on their hook implementations: ``@hookimpl def sdmark_...``."""

R = TypeVar("R")
_SETTINGS = ("SDMARK_LOAD_PLUGINS", "SDMARK_DISABLE_PLUGINS", "SDMARK_TRACE_PLUGINS")


def _names(environ: Mapping[str, str], variable: str) -> set[str] | None:
    value = environ.get(variable)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


class Runtime:
    """The plugin manager, the loaded plugins and their registries, with a typed method per hook.

    Error policy of the hook methods (what a plugin's exception does):

    - registration, configuration and model loading (:meth:`register_commands`,
      :meth:`check_config`, :meth:`load_pipeline`, the registries): the exception stops the run;
      a :class:`~sdmark.core.errors.SdmarkError` keeps its exit code.
    - generation events (:meth:`before_denoise`, :meth:`on_step_end`, :meth:`after_denoise`,
      :meth:`after_decode`): the exception stops the batch and the run (latents or images may be
      half changed, so nothing of that batch is written).
    - writing (:meth:`before_save`, :meth:`finalize_output`): the exception fails that image (its
      file is not written, the run goes on).
    - :meth:`after_save`: the file is already in place; an exception becomes a warning through
      ``context.warn`` and the image stays written.
    - :meth:`inspect_image`: an exception is recorded in the report's ``inspect_error`` and the
      verdict stands.
    """

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        # Plugins declare their own hooks (pytest's pytest_addhooks): historic, so every plugin
        # registered later is asked too.
        self.pm.hook.sdmark_add_hookspecs.call_historic(kwargs={"pluginmanager": self.pm})
        self._registries: dict[str, Any] = {}
        self._origins: dict[str, tuple[str | None, str | None]] = {}
        self._undo_tracing: Callable[[], None] | None = None
        self._resources: dict[tuple[str, int], Any] = {}
        self._resources_lock = threading.RLock()
        self._runs: dict[int, int] = {}  # runs under way per process (run_resources)
        self._close_when_idle: set[int] = set()  # processes where an ended run asked for a close
        self._environ: dict[str, str] = {}
        self.skipped: list[str] = []
        """Entry points the allowlist or the deny list kept out (in entry-point order)."""
        from sdmark.core import pipeline

        # The core's own default implementations (pipeline loading) are not optional.
        self.pm.register(pipeline, name="sdmark.core.pipeline")

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> Runtime:
        """A runtime with every plugin of the ``sdmark`` entry-point group that the environment allows.

        Raises :class:`PluginError` naming the plugin when one fails to import or implements a hook
        that no specification (core or plugin-declared) defines.
        """
        runtime = cls()
        runtime.load_entry_points(os.environ if environ is None else environ)
        return runtime

    def reload(self) -> Runtime:
        """A fresh runtime loaded from the entry points again, with the settings this one was
        loaded with (this one is left as it was; plugins added with :meth:`register` are not carried)."""
        return Runtime.load(self._environ)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # A plugin manager holds modules and cannot be pickled: a worker process (spawned pool,
        # Ray actor) loads its own runtime from the same entry points with the same settings.
        return (Runtime.load, (dict(self._environ),))

    def load_entry_points(self, environ: Mapping[str, str]) -> None:
        """Register every entry-point plugin that ``environ``'s allowlist and deny list let through."""
        self._environ = {key: environ[key] for key in _SETTINGS if key in environ}
        allow = _names(environ, "SDMARK_LOAD_PLUGINS")
        for name in _names(environ, "SDMARK_DISABLE_PLUGINS") or set():
            self.pm.set_blocked(name)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if (allow is not None and ep.name not in allow) or self.pm.is_blocked(ep.name):
                self.skipped.append(ep.name)
                continue
            if self.pm.has_plugin(ep.name):
                continue
            dist = ep.dist.name if ep.dist else "unknown distribution"
            try:
                module = ep.load()
                self.pm.register(module, name=ep.name)
            except Exception as exc:  # a third-party import can fail in any way
                raise PluginError(
                    f"plugin {ep.name!r} (from {dist}, {ep.value}) failed to load: "
                    f"{type(exc).__name__}: {exc}. Skip it with SDMARK_DISABLE_PLUGINS={ep.name} "
                    "or list the plugins you want in SDMARK_LOAD_PLUGINS."
                ) from exc
            self._origins[ep.name] = (ep.dist.name, ep.dist.version) if ep.dist else (None, None)
        self.check_pending()
        if environ.get("SDMARK_TRACE_PLUGINS", "") not in ("", "0"):
            self.enable_tracing()

    def register(self, plugin: Any, name: str | None = None) -> Any:
        """Add a plugin object (a module, a class instance) now; the registries are rebuilt on next use."""
        self.pm.register(plugin, name=name)
        try:
            self.check_pending()
        except PluginError:
            self.pm.unregister(plugin)  # a plugin with an unknown hook is refused whole
            raise
        self._registries.clear()
        return plugin

    def unregister(self, plugin: Any) -> None:
        """Remove a plugin added with :meth:`register`; the registries are rebuilt on next use."""
        self.pm.unregister(plugin)
        self._registries.clear()

    def is_loaded(self, name: str) -> bool:
        """Whether a plugin of this name (an entry-point name, or ``sdmark.core.pipeline``) is registered."""
        return self.pm.has_plugin(name)

    def check_pending(self) -> None:
        """Fail with the plugin's name if it implements a hook that no specification defines."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(
                f"plugin {exc.plugin!r} implements an unknown hook: {exc}. "
                "Hook names start with 'sdmark_' and are listed in docs/plugins.md."
            ) from exc

    def enable_tracing(self, write: Callable[[str], None] | None = None) -> None:
        """Print each hook call with its keyword arguments and its result (to stderr by default)."""
        if self._undo_tracing is not None:
            return
        out = write or (lambda text: print(text, file=sys.stderr))

        def before(hook_name: str, hook_impls: Sequence[HookImpl], kwargs: Mapping[str, Any]) -> None:
            plugins = ", ".join(impl.plugin_name for impl in hook_impls)
            args = ", ".join(f"{k}={_short(v)}" for k, v in kwargs.items())
            out(f"[sdmark] hook {hook_name}({args}) -> [{plugins}]")

        def after(outcome: pluggy.Result[Any], hook_name: str, hook_impls: Sequence[HookImpl], kwargs: Mapping[str, Any]) -> None:
            exc = outcome.exception
            out(f"[sdmark] hook {hook_name} {'raised ' + repr(exc) if exc else 'returned ' + _short(outcome.get_result())}")

        self._undo_tracing = self.pm.add_hookcall_monitoring(before, after)

    def summary(self) -> list[dict[str, Any]]:
        """What is loaded: one dict per plugin with its name, distribution, version and hooks."""
        summary = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda pair: pair[0]):
            if plugin is None:  # a blocked name
                continue
            default = ("sdmark", None) if name.startswith("sdmark.") else (None, None)
            dist, version = self._origins.get(name, default)
            hooks = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or [])
            summary.append({"name": name, "module": getattr(plugin, "__name__", repr(plugin)),
                            "distribution": dist, "version": version, "hooks": hooks})
        return summary

    # -- registries --------------------------------------------------------------------------

    def collect(self, hook_name: str, new: Callable[[], R], add: Callable[[R, Any], None]) -> R:
        """The registry filled through the ``register``-callback hook ``hook_name``, built once.

        ``new()`` makes the empty registry; ``add(registry, thing)`` checks and adds one thing a
        plugin passed to ``register``. Raises :class:`PluginError` when the hook is not declared
        (the plugin that declares it is not loaded).
        """
        if hook_name not in self._registries:
            if not self.has_hook(hook_name):
                raise PluginError(f"no plugin declares the hook {hook_name!r} (is the plugin that owns it disabled?)")
            registry = new()
            getattr(self.pm.hook, hook_name)(register=lambda thing: add(registry, thing))
            self._registries[hook_name] = registry
        return self._registries[hook_name]

    # -- what plugins keep open for a run ---------------------------------------------------

    def resource(self, name: str, open: Callable[[], R]) -> R:
        """The object ``name`` that a plugin keeps open for the length of a run (a database
        connection, a cache), made by ``open()`` on first use in this process and kept until
        :meth:`close_resources`. Whoever drives a run (verify's drivers, a server's engine) closes
        them when it ends; a worker process's die with it."""
        key = (name, os.getpid())  # an object opened before a fork stays with its process
        with self._resources_lock:  # threads of one server share a run's resources: opened once
            if key not in self._resources:
                self._resources[key] = open()
            return self._resources[key]

    def close_resources(self) -> None:
        """Close (``close()``) and forget every :meth:`resource` of this process; the next use opens anew."""
        with self._resources_lock:
            closing = self._take_resources()
        _close_all(closing)

    @contextlib.contextmanager
    def run_resources(self, keep: bool = False) -> Iterator[None]:
        """The block is a run that uses this runtime's resources. When it ends, they are closed
        once no other run of this process is still under way (threads of a library user running
        two runs on one runtime: the first to end must not close what the other is using); then the
        last run to end closes them. ``keep``: this run leaves them open (a server's engine runs
        many runs and closes them itself)."""
        pid = os.getpid()
        with self._resources_lock:
            self._runs[pid] = self._runs.get(pid, 0) + 1
        try:
            yield
        finally:
            with self._resources_lock:
                left = self._runs.pop(pid) - 1
                if left:
                    self._runs[pid] = left
                if not keep:
                    self._close_when_idle.add(pid)
                closing = []
                if not left and pid in self._close_when_idle:
                    self._close_when_idle.discard(pid)
                    closing = self._take_resources()
            _close_all(closing)

    def close_idle_resources(self) -> None:
        """:meth:`close_resources` unless a run of this process is under way (:meth:`run_resources`),
        whose end closes them instead (a worker of a run that runs in the driver's own process)."""
        with self._resources_lock:
            if self._runs.get(os.getpid()):
                return
            closing = self._take_resources()
        _close_all(closing)

    def _take_resources(self) -> list[Any]:
        pid = os.getpid()
        return [self._resources.pop(key) for key in [key for key in self._resources if key[1] == pid]]

    def has_hook(self, hook_name: str) -> bool:
        """Whether a loaded plugin (or the core) declares the hook ``hook_name``."""
        caller = getattr(self.pm.hook, hook_name, None)
        return caller is not None and caller.spec is not None

    @property
    def stages(self) -> StageRegistry:
        """Every installed stage class by name (``sdmark_register_stages``)."""
        from sdmark.core.stages import StageRegistry

        return self.collect("sdmark_register_stages", StageRegistry,
                            lambda registry, stage: registry.register(stage, stage.__module__))

    # -- typed hook calls (error policy in the class docstring) -----------------------------

    def register_commands(self, cli: click.Group) -> None:
        self.pm.hook.sdmark_register_commands(cli=cli)

    def load_pipeline(self, model: str, device: str, dtype: Any, options: dict[str, Any]) -> Any:
        return self.pm.hook.sdmark_load_pipeline(model=model, device=device, dtype=dtype, options=options)

    def check_config(self, mode: str, output: OutputOptions | None) -> None:
        self.pm.hook.sdmark_check_config(mode=mode, output=output)

    def before_denoise(self, batch: DenoiseBatch, context: RunContext) -> None:
        self.pm.hook.sdmark_before_denoise(batch=batch, context=context)

    def on_step_end(self, batch: DenoiseBatch, step: int, timestep: Any, context: RunContext) -> None:
        self.pm.hook.sdmark_on_step_end(batch=batch, step=step, timestep=timestep, context=context)

    def after_denoise(self, batch: DenoiseBatch, context: RunContext) -> None:
        self.pm.hook.sdmark_after_denoise(batch=batch, context=context)

    def after_decode(self, items: list[ImageItem], context: RunContext) -> None:
        self.pm.hook.sdmark_after_decode(items=items, context=context)

    def before_save(self, item: ImageItem, path: Path, context: RunContext) -> None:
        self.pm.hook.sdmark_before_save(item=item, path=path, context=context)

    def finalize_output(self, path: Path, final: Path, item: ImageItem, context: RunContext) -> None:
        self.pm.hook.sdmark_finalize_output(path=path, final=final, item=item, context=context)

    def after_save(self, path: Path, item: ImageItem, context: RunContext) -> None:
        """The file is in place: a plugin's error here is a warning, never a failed image."""
        try:
            self.pm.hook.sdmark_after_save(path=path, item=item, context=context)
        except Exception as exc:  # the bookkeeping of one plugin must not unwrite a file
            detail = str(exc) if isinstance(exc, SdmarkError) else f"{type(exc).__name__}: {exc}"
            context.warn(f"{path} was written, but after saving it: {detail}")

    def inspect_image(self, path: Path, image: Any, metadata: dict[str, Any], report: dict[str, Any]) -> None:
        """Let plugins add to a verify report; a plugin's error lands in ``report["inspect_error"]``."""
        if not self.has_hook("sdmark_inspect_image"):
            return
        try:
            self.pm.hook.sdmark_inspect_image(path=path, image=image, metadata=metadata, report=report, runtime=self)
        except Exception as exc:  # a plugin's extra report must not stop a folder or hide the verdict
            report["inspect_error"] = f"{type(exc).__name__}: {exc}"


def _close_all(resources: list[Any]) -> None:
    for resource in resources:
        close = getattr(resource, "close", None)
        if close is not None:
            close()


def _short(value: Any, limit: int = 80) -> str:
    shape = getattr(value, "shape", None)
    text = f"<{type(value).__name__} {tuple(shape)}>" if shape is not None else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
