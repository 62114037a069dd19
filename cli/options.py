"""Options shared by the commands that run a chain and write images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from sdmark.cli.text import printable
from sdmark.core.chain import Chain, StageSpec, specs_from

F = Callable[..., Any]


def chain_options(default: str) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        func = click.option("--no-safety", is_flag=True,
                            help="Do not check images for unsafe content (the only way to run without the 'safety' "
                                 "stage, which is otherwise added first). Warned about, and recorded in each image's metadata.")(func)
        func = click.option("--chain", "chain_spec", default=default, show_default=True, metavar="SPEC|FILE.toml",
                            help="Stages to run, in order: 'safety caption:text=\"AI\" watermark:method=dwtDctSvd', or a TOML file with [[stage]] tables. See `sdmark stages`.")(func)
        return func

    return decorate


def output_options(default_dir: str) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        for option in reversed([
            click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path), default=default_dir,
                         show_default=True, help="Folder for the written images (created if needed)."),
            click.option("--format", "fmt", type=click.Choice(["png", "jpeg", "webp"]), default="png", show_default=True,
                         help="Output file format."),
            click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True, help="JPEG/WebP quality."),
            click.option("--overwrite", is_flag=True, help="Replace existing output files (inputs are never replaced)."),
            click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image on stdout."),
            click.option("--progress/--no-progress", default=None, help="Force the progress bar on or off (default: on a terminal)."),
        ]):
            func = option(func)
        return func

    return decorate


EXIT_CODES = ("Exit codes: 0 every image written (or dropped by the safety policy); 1 at least one image "
              "failed (the others are written); 2 usage or configuration error, found before any work; "
              "130 interrupted (Ctrl-C; the summary says what was finished); 143 terminated.")


def build_chain(spec: str, *, ensure_safety: bool, no_safety: bool, verb: str = "generate") -> Chain:
    """Build the user's chain; a chain without safety gets it first unless ``--no-safety``."""
    from sdmark.cli.main import current_runtime

    runtime = current_runtime()
    specs = specs_from(spec)
    if no_safety:
        specs = [s for s in specs if s.name != "safety"]
    elif ensure_safety and not any(s.name == "safety" for s in specs):
        chain = Chain.build([StageSpec("safety", {}), *specs], runtime)
        click.echo(f"note: adding the 'safety' stage first (use --no-safety to {verb} unchecked)", err=True)
        return chain
    return Chain.build(specs, runtime)


def warn(message: str) -> None:
    click.echo(f"warning: {printable(message)}", err=True)
