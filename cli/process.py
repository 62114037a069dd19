"""``sdmark process``: the same stages on existing images."""

from __future__ import annotations

from pathlib import Path

import click

from sdmark.cli.executor_options import executor_options
from sdmark.cli.main import cli
from sdmark.cli.options import EXIT_CODES, build_chain, chain_options, output_options, warn
from sdmark.cli.report import Reporter, run_reported
from sdmark.core.output import OutputOptions
from sdmark.core.process import process_images


@cli.command("process", epilog=EXIT_CODES)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Images per stage call.")
@click.option("--device", default="auto", show_default=True, envvar="SDMARK_DEVICE", show_envvar=True,
              help="Device for model-based stages: cuda, cuda:N, mps, cpu or auto.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (Ray actors with --executor ray), each with its own models and signer.")
@click.option("--keep-metadata", is_flag=True,
              help="Carry each input's own text metadata (other tools' PNG text, an A1111 'parameters' text) into "
                   "its output, renamed 'source:KEY' and at most 16 KiB a value; without it, it is dropped. "
                   "Either way the record lists what the input carried.")
@executor_options
@chain_options(default="safety watermark")
@output_options(default_dir="processed")
def process_command(inputs, batch_size, device, jobs, keep_metadata, executor, ray_address, chain_spec, no_safety,
                    output_dir, fmt,
                    quality, overwrite, as_json, progress) -> None:
    """Run the chain on image files and folders (recursively) and write the results to -o DIR.

    A chain without 'safety' gets it added first (--no-safety is the only way out). Output names:
    a single folder's structure is kept under DIR; with several inputs each folder gets its own
    subfolder (named after it) and files go at the top. 'pic.jpg' becomes 'pic.png' (with
    --format png), or 'pic.jpg.png' when another input is also called 'pic'; each line says which
    input became which file. A file given twice is processed once; files inside DIR, hidden files
    and files without an image extension are skipped and counted. Inputs are never overwritten;
    existing outputs are found before any work (--overwrite to replace them). A file that cannot
    be read is reported and the rest go on.
    """
    chain = build_chain(chain_spec, ensure_safety=True, no_safety=no_safety, verb="process")
    reporter = Reporter(as_json)
    output = OutputOptions(output_dir, fmt, quality, overwrite)
    run = dict(safety="off" if no_safety else "on", batch_size=batch_size, device=device, progress=progress,
               on_result=reporter, warn=warn, on_skipped=reporter.skipped, keep_metadata=keep_metadata)

    def work() -> None:
        if executor == "local" and jobs == 1:
            process_images(list(inputs), chain, output, **run)
            return
        from sdmark.core.executor import make_executor
        from sdmark.core.executor_steps import process_with

        with make_executor(executor, jobs, ray_address) as pool:
            process_with(pool, list(inputs), chain, output, **run)

    run_reported(work, reporter, output_dir)
