"""The Content Credentials (C2PA) plugin: signed manifests on every written image, found again
through the watermark when a platform strips them.

Hooks only; the work is in the modules beside this one, imported when first needed (the ``c2pa``
native library is large and this module is imported on every CLI start):

``manifest``  the manifest definition built from an image's provenance record
``sign``      signing the written file in place (``sdmark_finalize_output``)
``signer``    a ``c2pa.Signer`` from a key file, a command or a callback, once per process
``registry``  the SQLite store of signed manifests keyed by watermark payload
``verify``    reading and judging credentials for ``sdmark verify`` (``sdmark_inspect_image``)
``identity``  ``sdmark keys init``: a local CA and signing certificate
``settings``  where keys, registry and trust anchors live (environment variables)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdmark.core.runtime import hookimpl
from sdmark.plugins.c2pa.settings import set_signing_config, set_trust_anchors

__all__ = ["set_signing_config", "set_trust_anchors"]

_MISSING = "c2pa-python is not installed (pip install 'sdmark[c2pa]')"
_MISSING_WARNED = "c2pa.missing-warned"


@hookimpl
def sdmark_register_commands(cli: Any) -> None:
    from sdmark.plugins.c2pa.commands import keys

    cli.add_command(keys)


@hookimpl
def sdmark_check_config(mode: str, output: Any) -> None:
    """An incomplete signing identity is a configuration error before any work, not one per image."""
    if output is not None:
        from sdmark.plugins.c2pa.settings import signing_config

        signing_config()


@hookimpl(trylast=True)
def sdmark_finalize_output(path: Path, final: Path, item: Any, context: Any) -> None:
    """Sign the file in place; ``trylast`` so that no other plugin's final write comes after it."""
    from sdmark.plugins.c2pa.sign import sign_output

    try:
        sign_output(path, item, context, final)
    except ImportError as exc:
        if exc.name != "c2pa":
            raise
        if not context.cache.get(_MISSING_WARNED):
            context.cache[_MISSING_WARNED] = True
            context.warn(f"{_MISSING}: images are written without Content Credentials")


@hookimpl
def sdmark_before_save(item: Any, path: Path, context: Any) -> None:
    """A processed image's input: what its own valid, trusted credentials prove (``source.credentials``),
    which is all the writer carries on from it (its declared metadata stays unverified)."""
    source = item.record.source
    if item.record.kind != "processed" or item.source is None or source is None:
        return
    from sdmark.plugins.c2pa.verify import input_credentials

    try:
        found = input_credentials(Path(item.source), context.runtime)
    except ImportError as exc:
        if exc.name != "c2pa":
            raise
        return  # without c2pa nothing of the input is proven: its claims stay quoted as unverified
    if found is not None:
        source["credentials"] = found
        declared = source.get("declared") or {}
        if "record" in found and declared.get("record") == found["record"]:
            del declared["record"]  # the same record, now proven: quoted once, as verified
            if not {"record", "digital_source_type"} & declared.keys():
                del source["declared"]


@hookimpl
def sdmark_after_save(path: Path, item: Any, context: Any) -> None:
    from sdmark.plugins.c2pa.sign import register_written

    register_written(path, item, context)


# The watermark plugin declares this hook and the next; optional, so c2pa loads without it.
@hookimpl(optionalhook=True)
def sdmark_inspect_image(path: Path, image: Any, metadata: dict[str, Any], report: dict[str, Any], runtime: Any) -> None:
    report.setdefault("xmp_digital_source_type", metadata.get("digital_source_type"))
    report.setdefault("parameters", metadata.get("parameters"))
    try:
        from sdmark.plugins.c2pa.verify import inspect_credentials, recovery_session

        # One registry connection and row cache per run, kept by the runtime (closed when the run ends).
        report["content_credentials"] = inspect_credentials(Path(path), report.get("detections"), image,
                                                            recovery_session(runtime), runtime)
    except ImportError as exc:
        if exc.name != "c2pa":
            raise
        report["content_credentials"] = {"present": None, "status": None, "error": _MISSING, "summary": _MISSING}


@hookimpl(optionalhook=True)
def sdmark_extend_verify(command: Any) -> None:
    import click

    from sdmark.plugins.c2pa.settings import trust_anchors_option

    command.params.append(click.Option(
        ["--trust", "trust"], multiple=True, type=click.Path(dir_okay=False, path_type=Path), metavar="CA.pem",
        callback=trust_anchors_option, expose_value=False,
        help="Trust anchor for Content Credentials (repeatable; adds to SDMARK_TRUST_ANCHORS): "
             "manifests signed under it are reported valid, others untrusted."))
