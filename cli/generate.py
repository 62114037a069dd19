"""``sdmark generate``: text to checked, marked images."""

from __future__ import annotations

from pathlib import Path

import click

from sdmark.cli.executor_options import executor_options
from sdmark.cli.main import cli
from sdmark.cli.options import EXIT_CODES, build_chain, chain_options, output_options, warn
from sdmark.cli.report import Reporter, run_reported
from sdmark.core.errors import SdmarkError
from sdmark.core.generate import GenerationSettings, generate
from sdmark.core.output import OutputOptions
from sdmark.core.pipeline import DEFAULT_MODEL, SCHEDULERS


def _size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        width, _, height = value.lower().partition("x")
        size = int(width), int(height or width)
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT (e.g. 512x768), got {value!r}", param_hint="--size") from None
    if min(size) < 8 or size[0] % 8 or size[1] % 8:
        nearest = "x".join(str(max(8, 8 * round(side / 8))) for side in size)
        hint = f" (nearest valid size: {nearest})" if min(size) > 0 else ""
        raise click.BadParameter(f"width and height must be positive multiples of 8; got {value!r}{hint}", param_hint="--size")
    return size


def _read_prompts(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SdmarkError(f"cannot read prompts file {path}: {exc}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise SdmarkError(f"prompts file {path} has no prompts (one per line; # starts a comment)")
    return prompts


@cli.command("generate", epilog=EXIT_CODES)
@click.argument("prompt", required=False)
@click.option("--prompts-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Read prompts from a UTF-8 file, one per line; blank lines and lines starting with # are ignored.")
@click.option("-n", "--count", type=click.IntRange(min=1), default=1, show_default=True, help="Images per prompt.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), help="Base seed; image i uses seed+i. Random (and recorded) if omitted.")
@click.option("--steps", type=click.IntRange(min=1), default=30, show_default=True, help="Denoising steps.")
@click.option("-g", "--guidance", type=float, default=7.5, show_default=True, help="Classifier-free guidance scale (CFG).")
@click.option("--negative", "negative_prompt", help="Negative prompt.")
@click.option("--size", help="WIDTHxHEIGHT, each a multiple of 8 (default: the model's native size). The watermark "
              "stage's invisible-watermark methods (dwtDct, dwtDctSvd, rivaGan) need at least 65536 pixels (256x256), "
              "its sdmark method at least 30976 pixels (176x176) and 128 a side; checked before any work.")
@click.option("-m", "--model", default=DEFAULT_MODEL, show_default=True, help="Hub id, local diffusers folder, or .safetensors file.")
@click.option("--scheduler", type=click.Choice(list(SCHEDULERS)), help="Sampler (default: the model's own).")
@click.option("--device", default="auto", show_default=True, envvar="SDMARK_DEVICE", show_envvar=True,
              help="cuda, cuda:1, mps, cpu or auto.")
@click.option("--dtype", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto", show_default=True,
              help="Weights precision; auto = fp16 on GPU, fp32 on CPU.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True, help="Images denoised together.")
@click.option("--cpu-offload", is_flag=True, help="Keep models on the CPU and move each to the GPU when used (small GPUs).")
@click.option("--vae-slicing", is_flag=True, help="Decode a batch one image at a time (less memory).")
@click.option("--vae-tiling", is_flag=True, help="Decode large images in tiles (less memory).")
@click.option("--attention-slicing", is_flag=True, help="Compute attention in slices (less memory, slower).")
@click.option("--append", is_flag=True,
              help="Number new images after the highest NNNNN- already in the output folder, so a rerun adds to it.")
@executor_options
@chain_options(default="safety watermark")
@output_options(default_dir="outputs")
def generate_command(prompt, prompts_file, count, seed, steps, guidance, negative_prompt, size, model, scheduler, device,
                     dtype, batch_size, cpu_offload, vae_slicing, vae_tiling, attention_slicing, append, executor,
                     ray_address, chain_spec, no_safety, output_dir, fmt, quality, overwrite, as_json, progress) -> None:
    """Generate images for PROMPT (or each line of --prompts-file), run the chain, write them.

    Image i of the run (over prompts, then copies) uses seed SEED+i and is written as
    NNNNN-SEED.EXT (00000-42.png, 00001-43.png, ...). Existing files of those names are an error
    found before any work: --overwrite replaces them, --append numbers after them. A chain
    without 'safety' gets it added first; --no-safety is the only way out.
    """
    if (prompt is None) == (prompts_file is None):
        raise click.UsageError("give a PROMPT or --prompts-file (one of them)")
    prompts = [prompt] if prompt is not None else _read_prompts(prompts_file)
    dims = _size(size)
    settings = GenerationSettings(
        prompts=prompts, negative_prompt=negative_prompt, count=count, seed=seed, steps=steps,
        guidance_scale=guidance, width=dims[0] if dims else None, height=dims[1] if dims else None,
        model=model, scheduler=scheduler, device=device, dtype=dtype, batch_size=batch_size,
        cpu_offload=cpu_offload, vae_slicing=vae_slicing, vae_tiling=vae_tiling, attention_slicing=attention_slicing,
    )
    chain = build_chain(chain_spec, ensure_safety=True, no_safety=no_safety)
    reporter = Reporter(as_json)
    output = OutputOptions(output_dir, fmt, quality, overwrite, append=append)
    run = dict(safety="off" if no_safety else "on", progress=progress, on_result=reporter, warn=warn)

    def work() -> None:
        if executor == "local":
            generate(settings, chain, output, **run)
            return
        # One pipeline per GPU of the cluster (one CPU actor where it has none).
        from sdmark.core.executor import make_executor
        from sdmark.core.executor_steps import generate_with

        with make_executor(executor, None, ray_address) as pool:
            generate_with(pool, settings, chain, output, **run)

    run_reported(work, reporter, output_dir)

