"""``sdmark process``: the same stages on existing images."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sdmark.cli.executor_options import executor_options
from sdmark.cli.main import cli
from sdmark.cli.options import build_chain, chain_options, output_options, warn
from sdmark.cli.report import Reporter
from sdmark.core.output import OutputOptions
from sdmark.core.process import process_images


@cli.command("process")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Images per stage call.")
@click.option("--device", default="auto", show_default=True, envvar="SDMARK_DEVICE", show_envvar=True,
              help="Device for model-based stages: cuda, cpu or auto.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (Ray actors with --executor ray), each with its own models and signer.")
@executor_options
@chain_options(default="safety watermark")
@output_options(default_dir="processed")
def process_command(inputs, batch_size, device, jobs, executor, ray_address, chain_spec, no_safety, output_dir, fmt,
                    quality, overwrite, as_json, progress) -> None:
    """Run the chain on image files and folders (recursively) and write the results to -o DIR.

    Folder structure is kept under DIR; inputs are never overwritten. A file that cannot be read is
    reported and the rest go on (exit code 1 if any image failed).
    """
    chain = build_chain(chain_spec, ensure_safety=False, no_safety=no_safety)
    reporter = Reporter(as_json)
    run = dict(safety="off" if no_safety else "on", batch_size=batch_size, device=device, progress=progress,
               on_result=reporter, warn=warn)
    output = OutputOptions(output_dir, fmt, quality, overwrite)
    if executor == "local" and jobs == 1:
        process_images(list(inputs), chain, output, **run)
    else:
        from sdmark.core.executor import make_executor
        from sdmark.core.executor_steps import process_with

        with make_executor(executor, jobs, ray_address) as pool:
            process_with(pool, list(inputs), chain, output, **run)
    sys.exit(reporter.finish(output_dir))
