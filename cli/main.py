"""The ``sdmark`` click group, error handling, and the introspection commands."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from sdmark import __version__
from sdmark.cli.text import printable
from sdmark.core.errors import SdmarkError
from sdmark.core.runtime import Runtime


class SdmarkGroup(click.Group):
    """Turns :class:`SdmarkError` into one line on stderr and its exit code (``SDMARK_DEBUG=1``
    shows the traceback instead). ``runtime`` is the :class:`Runtime` its commands use."""

    runtime: Runtime | None = None

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and self.runtime is not None and self.runtime.skipped:
            # Commands come from plugins (verify from the watermark plugin): say which are off.
            raise click.UsageError(
                f"no command {cmd_name!r}: plugins add commands, and these are turned off: "
                f"{', '.join(self.runtime.skipped)} (SDMARK_DISABLE_PLUGINS / SDMARK_LOAD_PLUGINS)", ctx)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SdmarkError as exc:
            if os.environ.get("SDMARK_DEBUG"):
                raise
            click.echo(f"Error: {printable(exc)}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=SdmarkGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sdmark")
@click.option("-v", "--verbose", is_flag=True,
              help="Show the libraries' own log lines and loading bars (diffusers, transformers); same as SDMARK_VERBOSE=1.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Generate Stable Diffusion images that are safety-checked and provably marked, verify
    marks, and run the same stages on existing images.

    Set SDMARK_DEBUG=1 to see tracebacks, SDMARK_TRACE_PLUGINS=1 to trace plugin hooks.
    SDMARK_MAX_PIXELS is the largest image read or made (default 160 MP; a guard against
    decompression bombs).
    """
    if verbose:
        # For this command only (the environment is how core code, far from click, learns of it).
        previous = os.environ.get("SDMARK_VERBOSE")
        os.environ["SDMARK_VERBOSE"] = "1"

        def restore() -> None:
            if previous is None:
                os.environ.pop("SDMARK_VERBOSE", None)
            else:
                os.environ["SDMARK_VERBOSE"] = previous

        ctx.call_on_close(restore)


def current_runtime() -> Runtime:
    """The runtime of the ``sdmark`` command being run (for commands that plugins add, too)."""
    root = click.get_current_context().find_root().command
    runtime = getattr(root, "runtime", None)
    if runtime is None:  # a command invoked on its own, outside make_cli()
        runtime = Runtime.load()
        root.runtime = runtime  # type: ignore[attr-defined]
    return runtime


def _option_type(option: Any, runtime: Runtime) -> str:
    allowed = option.allowed(runtime)
    return "|".join(allowed) if allowed else option.type.__name__


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per stage.")
def stages(as_json: bool) -> None:
    """List the installed stages with their phases and options."""
    runtime = current_runtime()
    registry = runtime.stages
    for stage in registry:
        declared = stage.describe_options(runtime)
        options = [
            {"name": o.name, "type": o.type.__name__, "default": o.default if not hasattr(o.default, "__fspath__") else str(o.default),
             "choices": list(o.allowed(runtime) or []) or None, "help": o.help,
             **({"applies_to": {o.applies_to[0]: list(o.applies_to[1])}} if o.applies_to else {})}
            for o in declared
        ]
        if as_json:
            click.echo(json.dumps({"name": stage.name, "description": stage.description, "phases": list(stage.phases),
                                   "plugin": registry.owner(stage.name), "options": options}))
            continue
        click.echo(f"{stage.name}  ({', '.join(stage.phases)})  from {registry.owner(stage.name)}")
        if stage.description:
            click.echo(f"    {stage.description}")
        for option, data in zip(declared, options):
            default = "" if data["default"] in (None, "") else f", default {data['default']}"
            click.echo(f"    {option.name}  ({_option_type(option, runtime)}{default})")
            click.echo(f"        {option.help}")
    if not as_json and not registry.names():
        click.echo("no stages installed (check SDMARK_LOAD_PLUGINS / SDMARK_DISABLE_PLUGINS)")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per plugin.")
def plugins(as_json: bool) -> None:
    """List the loaded plugins and the hooks each implements."""
    for plugin in current_runtime().summary():
        if as_json:
            click.echo(json.dumps(plugin))
        else:
            origin = f"{plugin['distribution']} {plugin['version'] or ''}".strip() if plugin["distribution"] else plugin["module"]
            click.echo(f"{plugin['name']}  ({origin})")
            for hook in plugin["hooks"]:
                click.echo(f"    {hook}")


def make_cli(runtime: Runtime | None = None) -> click.Group:
    """A fresh ``sdmark`` group: the core commands, then every command ``runtime``'s plugins add
    (the installed plugins when ``runtime`` is ``None``). Raises :class:`PluginError` when a plugin
    cannot load."""
    from sdmark.cli import generate, process, serve  # noqa: F401  (they attach themselves to `cli`)

    runtime = runtime if runtime is not None else Runtime.load()
    group = SdmarkGroup(name=cli.name, commands=dict(cli.commands), callback=cli.callback, params=list(cli.params),
                        help=cli.help, context_settings=dict(cli.context_settings))
    group.runtime = runtime
    runtime.register_commands(cli=group)
    return group


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    if not os.environ.get("SDMARK_DEBUG"):
        # transformers warns at import that CLIPImageProcessor prefers torchvision; users can do nothing about it.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        group = make_cli()
    except SdmarkError as exc:
        if os.environ.get("SDMARK_DEBUG"):
            raise
        click.echo(f"Error: {printable(exc)}", err=True)
        sys.exit(exc.exit_code)
    group.main(args=argv, prog_name="sdmark")


def get_cli(runtime: Runtime | None = None) -> click.Group:
    """The click group with every plugin command attached (what tests drive with CliRunner)."""
    return make_cli(runtime)
