"""Signing a written image in place: the last write before it is moved to its final name."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdmark.core.errors import SdmarkError
from sdmark.core.io import sha256_file
from sdmark.core.stages import ImageItem, RunContext
from sdmark.plugins.c2pa import jumbf, settings
from sdmark.plugins.c2pa.manifest import PARENT_ID, build_manifest, soft_binding
from sdmark.plugins.c2pa.fingerprint import Fingerprint, fingerprint, thumbnail_png
from sdmark.plugins.c2pa.registry import Entry, open_registry

if TYPE_CHECKING:
    from sdmark.core.runtime import Runtime

SUFFIX_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
MIME_BY_SUFFIX = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
                  ".tif": "image/tiff", ".tiff": "image/tiff", ".gif": "image/gif", ".bmp": "image/bmp"}
_WARNED = "c2pa.unsigned-warned"


class SigningError(SdmarkError):
    """Signing was configured but failed for this image (it is then not written)."""

    exit_code = 1


def sign_output(path: Path, item: ImageItem, context: RunContext, final: Path | None = None) -> bool:
    """Embed a signed C2PA manifest in the image at ``path``; return whether it was signed.

    ``final`` is where the file will be moved (its name is the manifest's title); ``path`` itself
    when it is already in place.

    Without a signing identity it warns once per run and leaves the file as it is. A configured
    identity that fails raises :class:`SdmarkError`: the image is reported as failed rather than
    silently written without the credentials the deployment asked for.
    """
    config = settings.signing_config()
    if config is None:
        if not settings.signing_disabled() and not context.cache.get(_WARNED):
            context.cache[_WARNED] = True
            context.warn(
                "no C2PA signing identity: images are written without Content Credentials "
                f"(run `sdmark keys init`, or set SDMARK_SIGN_CERT and SDMARK_SIGN_KEY; looked in {settings.keys_dir()})"
            )
        return False
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        return False
    import c2pa

    from sdmark import __version__
    from sdmark.plugins.c2pa.signer import callback_error, get_signer

    signer = get_signer(config)
    title = (final or path).name
    source = item.record.source or {}
    flags, watermarks, kinds = _stage_flags(context.require_runtime())
    content = content_fingerprint(path, title)
    manifest = build_manifest(item.record, title=title, fmt=fmt, software_version=__version__,
                              source_format=source.get("format"), stage_flags=flags, watermark_stages=watermarks,
                              fingerprint=content.to_json(), stage_kinds=kinds)
    mime = MIME_BY_SUFFIX[path.suffix.lower()]
    signed = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.signing{path.suffix}")
    try:
        builder = c2pa.Builder.from_json(manifest, context=signing_context(context.require_runtime()))
        if item.record.kind == "processed" and item.source is not None:
            _add_parent(builder, item.source)
        with open(path, "rb") as src, open(signed, "w+b") as dst:
            manifest_store = builder.sign(signer, mime, src, dst)
        os.replace(signed, path)
    except c2pa.C2paError as exc:
        reason = callback_error(signer)
        raise SigningError(f"{title}: C2PA signing failed: {reason or exc}") from None
    except OSError as exc:
        raise SigningError(f"{title}: C2PA signing failed: {exc.strerror or exc}") from None
    finally:
        signed.unlink(missing_ok=True)
    # Registered only once the file is in place (sdmark_after_save): a failed move leaves no entry.
    context.cache.setdefault(PENDING, {})[id(item)] = (title, mime, manifest_store, watermarks, content,
                                                       signer_identity(config, context))
    return True


PENDING = "c2pa.pending-registrations"


def register_written(path: Path, item: ImageItem, context: RunContext) -> None:
    """Store the signed manifest of a file that is now in place, keyed by its watermark payload.

    The file is written and signed whatever happens here: a registry that cannot take the row is a
    warning (``not registered: REASON``, also kept in ``item.notes``), never a failed image.
    """
    pending = context.cache.get(PENDING, {}).pop(id(item), None)
    if pending is None:
        return
    title, mime, manifest_store, watermarks, content, signer = pending
    try:
        _register(item, path, title, mime, manifest_store, watermarks, content, signer, context)
    except SdmarkError as exc:
        note = f"not registered: {exc}"
        item.notes.append(note)
        context.warn(f"{title}: {note}")


def content_fingerprint(path: Path, title: str) -> Fingerprint:
    """The content fingerprint of the pixels as written to ``path`` (read back, so JPEG's losses count)."""
    from sdmark.core.io import read_image

    try:
        return fingerprint(read_image(path).image)
    except (SdmarkError, OSError, ValueError) as exc:
        raise SigningError(f"{title}: cannot fingerprint the written pixels for the C2PA manifest: {exc}") from None


def signer_identity(config: settings.SigningConfig, context: RunContext) -> tuple[str | None, str | None]:
    """The signing certificate's common name and SHA-256 fingerprint (hex), once per run and identity."""
    key = ("c2pa.signer-identity", config.fingerprint())
    if key not in context.cache:
        from sdmark.plugins.c2pa.identity import certificate_identity

        try:
            context.cache[key] = certificate_identity(config.cert_chain)
        except SdmarkError:
            context.cache[key] = (None, None)
    return context.cache[key]


def signing_context(runtime: Runtime) -> Any:
    """The SDK context used for signing: no thumbnails (they cost ~50 ms and up to 0.9 MB each).
    Made once per run and set of trust anchors, and kept by ``runtime`` until the run ends."""
    anchors = tuple(settings.trust_anchor_paths())
    return runtime.resource(f"c2pa.signing-context:{anchors}", lambda: _new_signing_context(anchors))


def _new_signing_context(anchors: tuple[Path, ...]) -> Any:
    import c2pa

    config: dict[str, Any] = {"builder": {"thumbnail": {"enabled": False}}}
    if anchors:
        # Lets an ingredient's own credentials be judged against the same anchors as verify.
        config["trust"] = {"user_anchors": "".join(settings.read_anchor(p) for p in anchors)}
    return c2pa.Context.from_dict(config)


def _add_parent(builder: Any, source: Path) -> None:
    """The input as parent ingredient; the SDK keeps its own manifest (if any) inside ours."""
    import c2pa

    ingredient = {"title": source.name, "relationship": "parentOf", "label": PARENT_ID}
    mime = sniff_mime(source) or MIME_BY_SUFFIX.get(source.suffix.lower(), "application/octet-stream")
    try:
        with open(source, "rb") as stream:
            builder.add_ingredient(ingredient, mime, stream)
    except (OSError, c2pa.C2paError) as exc:
        raise SigningError(f"{source}: cannot record the input as C2PA ingredient ({exc})") from None


def sniff_mime(path: Path) -> str | None:
    """The MIME type from the file's first bytes (a JPEG named .png is still a JPEG)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
    except OSError:
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:2] == b"BM":
        return "image/bmp"
    return None


def _stage_flags(runtime: Runtime) -> tuple[dict[str, bool], set[str], dict[str, str]]:
    """Which installed stages change pixels, which embed a watermark (by kind), and every stage's kind."""
    from sdmark.core.results import WATERMARK, stage_kinds

    kinds = stage_kinds(runtime)
    return ({stage.name: bool(stage.changes_pixels) for stage in runtime.stages},
            {name for name, kind in kinds.items() if kind == WATERMARK}, kinds)


def _register(item: ImageItem, path: Path, title: str, mime: str, manifest_store: bytes, watermarks: set[str],
              content: Fingerprint, signer: tuple[str | None, str | None], context: RunContext) -> None:
    """Keep the signed manifest under the image's watermark payload, when it has one."""
    binding = soft_binding(item.record, watermarks)
    registry_file = settings.registry_path()
    if binding is None or registry_file is None or not manifest_store:
        return
    labels = manifest_labels(manifest_store)
    # The active manifest is the last one in a manifest store (parents' manifests come first).
    label = labels[-1] if labels else ""
    # One writer per run, kept by the runtime and closed when the run ends (its driver closes it).
    registry = context.require_runtime().resource(f"c2pa.registry-writer:{registry_file}",
                                                  lambda: open_registry(registry_file))
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise SdmarkError(f"cannot hash the written file ({exc.strerror or exc})") from None
    registry.add(Entry(
        payload=binding.payload, scheme=binding.scheme, manifest_label=label, manifest=manifest_store,
        format=mime, title=title, file_sha256=digest, pdq=content.pdq.hex(), thumbnail=thumbnail_png(content),
        signer=signer[0], signer_sha256=signer[1],
    ))


def manifest_labels(store: bytes) -> list[str]:
    """Labels of the manifests in a JUMBF manifest store, in order (the active one last)."""
    return [label for label, _, _ in jumbf.manifests(store)]


