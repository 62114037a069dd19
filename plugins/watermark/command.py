"""``sdmark verify``: which images carry a watermark, whose, how sure, and what payload.

The watermark plugin owns the command (``sdmark_register_commands``); other plugins add options
to it through ``sdmark_extend_verify`` (c2pa adds ``--trust``). :func:`make_verify_command` builds
a new command each time, so extending one never changes another.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import click

from sdmark.cli.executor_options import executor_options
from sdmark.cli.main import current_runtime
from sdmark.cli.text import json_line, printable

if TYPE_CHECKING:
    from sdmark.core.runtime import Runtime

EXIT_ALL_MARKED, EXIT_SOME_UNMARKED, EXIT_UNREADABLE = 0, 1, 2


def _human(report: dict[str, Any]) -> str:
    """The plain-text lines for one report: the verdict line, then indented lines for what a
    detection is worth, the embedded credentials and the recovery, each in words. Control
    characters are escaped line by line, so a name or a message can never start a line of its own."""
    return "\n".join(printable(line) for line in _human_lines(report))


def _human_lines(report: dict[str, Any]) -> list[str]:
    if report["error"]:
        return [f"error        {report['path']}  ({report['error']})"]
    found = [d for d in report["detections"] if d["band"] in ("likely", "very likely")]
    details = []
    if found:
        parts = []
        for d in found:
            payload = f" payload={d['payload']}" if d.get("payload") else ""
            key = f"; key: {d['key']}" if d.get("key") else ""
            parts.append(f"{d['scheme']} ({d['band']}, p={d['p_value']:.1e}{payload}{key})")
        head = f"watermarked  {report['path']}  " + "; ".join(parts)
        if any(d.get("key") == "public" for d in found):
            from sdmark.plugins.watermark.verify import PUBLIC_KEY_MEANING

            details.append(f"mark: {PUBLIC_KEY_MEANING}")
    else:
        weak = [f"{d['scheme']} partial, p={d['p_value']:.1e}" for d in report["detections"]]
        head = f"unmarked     {report['path']}" + (f"  ({'; '.join(weak)})" if weak else "")
    for expected in report.get("expected_marks") or []:
        payload = f" id={expected['payload']}" if expected.get("payload") else ""
        details.append(f"not found: the image's own record says a {expected['scheme']} mark{payload} was embedded; "
                       f"to check it: {expected['how_to_check']}")
    credentials = report.get("content_credentials") or {}
    if credentials.get("present"):
        from sdmark.plugins.c2pa.verify import embedded_summary

        details.append(f"credentials: {embedded_summary(credentials)}")
    if credentials.get("recovery") is not None:
        from sdmark.plugins.c2pa.verify import recovery_summary

        details.append(f"credentials: none embedded; {recovery_summary(credentials['recovery'])}")
    elif credentials.get("registry_error"):
        details.append(f"credentials: registry unreadable: {credentials['registry_error']}")
    elif credentials.get("error") and not credentials.get("present"):
        details.append(f"credentials: {credentials['error']}")
    return [head, *(f"    {line}" for line in details)]


def meets_credentials(report: dict[str, Any]) -> bool:
    """``--require-credentials``: valid embedded credentials, or a clean ``matched`` recovery whose
    signer is trusted and whose fingerprint was fine enough to look for local edits. A tampered
    manifest never passes, and neither does a copy changed in part."""
    credentials = report.get("content_credentials") or {}
    if credentials.get("present"):
        return credentials.get("status") == "valid" and bool(credentials.get("trusted"))
    recovery = credentials.get("recovery") or {}
    chosen = recovery.get("matched") or {}
    content = chosen.get("content") or {}
    return (recovery.get("verdict") == "matched" and bool(chosen.get("trusted"))
            and content.get("local_edits_checked") is True and "locally edited" not in (content.get("changes") or []))


def _list_schemes(runtime: Runtime) -> None:
    from sdmark.plugins.watermark.schemes import scheme_registry

    for scheme in scheme_registry(runtime):
        flag = "  [on request]" if scheme.costly else ""
        click.echo(f"{scheme.name:<18} {scheme.decoder:<22} {scheme.description}{flag}")


def make_verify_command(runtime: Runtime) -> click.Command:
    """A new ``verify`` command with the options ``runtime``'s plugins add (``sdmark_extend_verify``)."""
    command = click.command("verify")(_verify_callback())
    runtime.pm.hook.sdmark_extend_verify(command=command)
    return command


def _verify_callback() -> Any:
    @click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per image on stdout.")
    @click.option("--scheme", "schemes", multiple=True, metavar="NAME",
                  help="Check only this scheme (repeatable); see --list-schemes.")
    @click.option("--all-schemes", is_flag=True,
                  help="Also run costly schemes (rivaGan's network: 2 to 4 s an image on a 2-core CPU, 30-50x the default "
                       "schemes; benchmarks/verify_costly_schemes.py).")
    @click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
                  help="Worker processes for large folders (Ray actors with --executor ray).")
    @executor_options
    @click.option("--progress/--no-progress", default=None, help="Force the progress bar on or off (default: on a terminal).")
    @click.option("--list-schemes", is_flag=True, help="List the schemes verify knows and exit.")
    @click.option("--require-credentials", is_flag=True,
                  help="Exit 1 unless every image has valid embedded Content Credentials from a trusted signer, or "
                       "a watermark recovery that matched its content and a trusted signer (use with --trust).")
    def verify(inputs: tuple[Path, ...], as_json: bool, schemes: tuple[str, ...], all_schemes: bool, jobs: int,
               executor: str, ray_address: str | None, progress: bool | None, list_schemes: bool,
               require_credentials: bool) -> None:
        """Check image files and folders (recursively) for invisible watermarks.

        For each image: whether it is watermarked, by which scheme, the p-value (chance that an unmarked
        image reads this well) with its band (none / partial / likely / very likely) and the payload.
        Content Credentials are judged apart: the file's own manifest (valid / tampered / untrusted /
        absent) and, for a file without one, the recovery through the watermark (matched /
        different-content / inconsistent / ambiguous / not-registered), which compares this image with
        the content signed in the registered manifest.

        Exit code: 0 when every image is watermarked, 1 when at least one is not (or, with
        --require-credentials, lacks credentials that pass), 2 when at least one could not be read or
        no watermark scheme is available.
        """
        from tqdm.auto import tqdm

        from sdmark.core.io import iter_inputs
        from sdmark.plugins.watermark.verify import select_schemes

        runtime = current_runtime()
        if list_schemes:
            _list_schemes(runtime)
            return
        if not inputs:
            raise click.UsageError("give at least one image or folder (or --list-schemes)")
        select_schemes(schemes, all_schemes, runtime)  # unknown scheme names fail here, before any work
        skipped: list[Path] = []
        entries = list(iter_inputs(inputs, skipped=skipped))
        if not entries:
            click.echo("no images found" + (f" ({len(skipped)} skipped: not image file names)" if skipped else ""), err=True)
            sys.exit(EXIT_UNREADABLE)
        work = [(str(e.path), e.error, tuple(schemes), all_schemes) for e in entries]
        counts = {"watermarked": 0, "unmarked": 0, "error": 0}
        lacking = 0
        with tqdm(total=len(work), unit="img", desc="verifying", file=sys.stderr,
                  disable=None if progress is None else not progress) as bar:
            for report in _run(work, jobs, runtime, executor, ray_address):
                key = "error" if report["error"] else ("watermarked" if report["watermarked"] else "unmarked")
                counts[key] += 1
                if require_credentials and not report["error"] and not meets_credentials(report):
                    lacking += 1
                line = json_line(report, default=str) if as_json else _human(report)
                bar.clear()
                click.echo(line)
                bar.update(1)
        summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n) + f" ({len(work)} checked)"
        if require_credentials:
            summary += f"; {lacking} without credentials that pass --require-credentials" if lacking else "; all with credentials"
        if skipped:
            summary += f", {len(skipped)} skipped (not image file names: no or unknown extension, or hidden)"
        click.echo(summary, err=True)
        if counts["error"]:
            sys.exit(EXIT_UNREADABLE)
        sys.exit(EXIT_SOME_UNMARKED if counts["unmarked"] or lacking else EXIT_ALL_MARKED)

    return verify


def _run(work: list[tuple[str, str | None, tuple[str, ...], bool]], jobs: int, runtime: Runtime,
         executor: str = "local", ray_address: str | None = None) -> Iterator[dict[str, Any]]:
    """Reports in input order, from this process, a pool of ``jobs`` processes or ``jobs`` Ray actors."""
    from sdmark.core.executor import make_executor
    from sdmark.core.executor_steps import verify_reports

    names, all_schemes = (work[0][2], work[0][3]) if work else ((), False)
    with make_executor(executor, jobs, ray_address) as pool:
        yield from verify_reports([(path, error) for path, error, _, _ in work], pool, names, all_schemes, runtime)
