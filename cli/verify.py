"""``sdmark verify``: which images carry a watermark, whose, how sure, and what payload."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import click

from sdmark.cli.main import cli
from sdmark.cli.text import json_line, printable
from sdmark.plugins.c2pa.settings import trust_anchors_option

EXIT_ALL_MARKED, EXIT_SOME_UNMARKED, EXIT_UNREADABLE = 0, 1, 2


def _verify_one(job: tuple[str, str | None, tuple[str, ...], bool]) -> dict[str, Any]:
    """Verify one input (runs in worker processes with ``--jobs``; loads plugins on first call)."""
    path, error, names, all_schemes = job
    if error:
        return {"path": path, "watermarked": None, "detections": [], "error": error}
    from sdmark.plugins.watermark.verify import select_schemes, verify_file

    return verify_file(path, select_schemes(names, all_schemes))


def _human(report: dict[str, Any]) -> str:
    if report["error"]:
        return f"error        {report['path']}  ({report['error']})"
    credentials = report.get("content_credentials") or {}
    extra = f"  [credentials: {credentials['summary']}]" if credentials.get("summary") not in (None, "none") else ""
    found = [d for d in report["detections"] if d["band"] in ("likely", "very likely")]
    if found:
        parts = []
        for d in found:
            payload = f" payload={d['payload']}" if d.get("payload") else ""
            parts.append(f"{d['scheme']} ({d['band']}, p={d['p_value']:.1e}{payload})")
        return f"watermarked  {report['path']}  " + "; ".join(parts) + extra
    weak = [f"{d['scheme']} partial, p={d['p_value']:.1e}" for d in report["detections"]]
    return f"unmarked     {report['path']}" + (f"  ({'; '.join(weak)})" if weak else "") + extra


def _list_schemes() -> None:
    from sdmark.plugins.watermark.schemes import scheme_registry

    for scheme in scheme_registry():
        flag = "  [on request]" if scheme.costly else ""
        click.echo(f"{scheme.name:<18} {scheme.decoder:<22} {scheme.description}{flag}")


@cli.command("verify")
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image on stdout.")
@click.option("--scheme", "schemes", multiple=True, metavar="NAME",
              help="Check only this scheme (repeatable); see --list-schemes.")
@click.option("--all-schemes", is_flag=True, help="Also run costly schemes (rivaGan's network: 2 to 4 s an image on a 2-core CPU, 30-50x the default schemes; benchmarks/verify_costly_schemes.py).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes for large folders.")
@click.option("--progress/--no-progress", default=None, help="Force the progress bar on or off (default: on a terminal).")
@click.option("--list-schemes", is_flag=True, help="List the schemes verify knows and exit.")
@click.option("--trust", "trust", multiple=True, type=click.Path(dir_okay=False, path_type=Path), metavar="CA.pem",
              callback=trust_anchors_option, expose_value=False,
              help="Trust anchor for Content Credentials (repeatable; adds to SDMARK_TRUST_ANCHORS): "
                   "manifests signed under it are reported valid, others untrusted.")
def verify_command(inputs, as_json, schemes, all_schemes, jobs, progress, list_schemes) -> None:
    """Check image files and folders (recursively) for invisible watermarks.

    For each image: whether it is watermarked, by which scheme, the p-value (chance that an unmarked
    image reads this well) with its band (none / partial / likely / very likely) and the payload.
    Exit code: 0 when every image is watermarked, 1 when at least one is not, 2 when at least one
    could not be read.
    """
    from tqdm.auto import tqdm

    from sdmark.core.io import iter_inputs
    from sdmark.plugins.watermark.verify import select_schemes

    if list_schemes:
        _list_schemes()
        return
    if not inputs:
        raise click.UsageError("give at least one image or folder (or --list-schemes)")
    select_schemes(schemes, all_schemes)  # unknown scheme names fail here, before any work
    skipped: list[Path] = []
    entries = list(iter_inputs(inputs, skipped=skipped))
    if not entries:
        click.echo("no images found" + (f" ({len(skipped)} skipped: not image file names)" if skipped else ""), err=True)
        sys.exit(EXIT_UNREADABLE)
    work = [(str(e.path), e.error, tuple(schemes), all_schemes) for e in entries]
    counts = {"watermarked": 0, "unmarked": 0, "error": 0}
    with tqdm(total=len(work), unit="img", desc="verifying", file=sys.stderr,
              disable=None if progress is None else not progress) as bar:
        for report in _run(work, jobs):
            key = "error" if report["error"] else ("watermarked" if report["watermarked"] else "unmarked")
            counts[key] += 1
            line = json_line(report, default=str) if as_json else printable(_human(report))
            bar.clear()
            click.echo(line)
            bar.update(1)
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n) + f" ({len(work)} checked)"
    if skipped:
        summary += f", {len(skipped)} skipped (not image file names: no or unknown extension, or hidden)"
    click.echo(summary, err=True)
    if counts["error"]:
        sys.exit(EXIT_UNREADABLE)
    sys.exit(EXIT_SOME_UNMARKED if counts["unmarked"] else EXIT_ALL_MARKED)


def _run(work: list[tuple[str, str | None, tuple[str, ...], bool]], jobs: int) -> Iterator[dict[str, Any]]:
    """Reports in input order; with ``jobs > 1`` from a pool of fresh (spawned) processes."""
    if jobs == 1 or len(work) < 2:
        for job in work:
            yield _verify_one(job)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the parent may hold threads (torch, tqdm) that a forked child would inherit locked.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(work)), mp_context=context) as pool:
        yield from pool.map(_verify_one, work, chunksize=max(1, min(16, len(work) // (4 * jobs))))
