"""``sdmark process``: the same stages on existing images."""

from __future__ import annotations

import sys
from pathlib import Path

import click

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
@click.option("--keep-metadata", is_flag=True,
              help="Carry each input's own text metadata (other tools' PNG text, an A1111 'parameters' text) into "
                   "its output, renamed 'source:KEY' and at most 16 KiB a value; without it, it is dropped. "
                   "Either way the record lists what the input carried.")
@chain_options(default="safety watermark")
@output_options(default_dir="processed")
def process_command(inputs, batch_size, device, keep_metadata, chain_spec, no_safety, output_dir, fmt, quality,
                    overwrite, as_json, progress) -> None:
    """Run the chain on image files and folders (recursively) and write the results to -o DIR.

    Folder structure is kept under DIR; inputs are never overwritten. A file that cannot be read is
    reported and the rest go on (exit code 1 if any image failed).
    """
    chain = build_chain(chain_spec, ensure_safety=False, no_safety=no_safety)
    reporter = Reporter(as_json)
    process_images(list(inputs), chain, OutputOptions(output_dir, fmt, quality, overwrite),
                   safety="off" if no_safety else "on", batch_size=batch_size, device=device,
                   progress=progress, on_result=reporter, warn=warn, keep_metadata=keep_metadata)
    sys.exit(reporter.finish(output_dir))
