"""Uploads into private temp files, judged by their content, never by the name the client sent.

The client's file name is kept only as a display string (``Upload.name``); files on disk are
``upload-N.<sniffed extension>`` in a fresh ``mkdtemp`` folder (mode 0700) that the request's
ticket deletes when the work ends.
"""

from __future__ import annotations

import hashlib
import shutil
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from sdmark.core.io import max_pixels

# Pillow formats we accept, and the extension and MIME type each is stored and answered with.
# Sniffing is restricted to these, so no other Pillow plugin (EPS runs Ghostscript) ever sees an upload.
FORMATS = {
    "PNG": (".png", "image/png"),
    "JPEG": (".jpg", "image/jpeg"),
    "MPO": (".jpg", "image/jpeg"),
    "WEBP": (".webp", "image/webp"),
    "TIFF": (".tif", "image/tiff"),
    "BMP": (".bmp", "image/bmp"),
    "GIF": (".gif", "image/gif"),
}
# MPO (multi-picture JPEG) is opened by the JPEG plugin, which reports it as its own format.
OPENERS = [fmt for fmt in FORMATS if fmt != "MPO"]
COPY_CHUNK = 1024 * 1024


class UploadRejected(Exception):
    """An upload refused before verification, with the HTTP status and the metric reason."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason


@dataclass(frozen=True)
class Upload:
    """One uploaded image: a display name from the client, the private file holding its bytes."""

    name: str
    path: Path
    format: str
    mime: str
    size: int
    sha256: str


def display_name(raw: str | None, index: int) -> str:
    """The client's file name made safe to show: last path component, no control characters, short."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    return name[:120] or f"upload-{index + 1}"


async def receive_uploads(request: Any, folder: Path, max_files: int, max_bytes: int) -> list[Upload]:
    """Parse the multipart body of ``request`` and store each ``file`` part in ``folder``.

    Raises :class:`UploadRejected` for a body that is not multipart (415), malformed multipart
    (400), no ``file`` field or too many files (422), a file that is not an image (415), a file over
    the size or pixel limit (413 / 422).
    """
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException

    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UploadRejected(415, "send the image as multipart/form-data in the field 'file'", "bad_type")
    try:
        form = await request.form(max_files=max_files, max_fields=8, max_part_size=64 * 1024)
    except HTTPException as exc:  # Starlette's answer to a malformed body or too many parts
        raise UploadRejected(400, f"malformed multipart body: {exc.detail}", "malformed") from None
    try:
        parts = [part for part in form.getlist("file") if isinstance(part, UploadFile)]
        if not parts:
            raise UploadRejected(422, "no image in the field 'file'", "missing_file")
        uploads = []
        for index, part in enumerate(parts):
            uploads.append(await _store(part, folder, index, max_bytes))
        return uploads
    finally:
        await form.close()


async def _store(part: Any, folder: Path, index: int, max_bytes: int) -> Upload:
    name = display_name(part.filename, index)
    staging = folder / f"upload-{index}"
    digest = hashlib.sha256()
    size = 0
    with open(staging, "xb") as out:
        while chunk := await part.read(COPY_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise UploadRejected(413, f"{name}: larger than the {max_bytes / (1024 * 1024):.0f} MB limit", "too_large")
            digest.update(chunk)
            out.write(chunk)
    if size == 0:
        raise UploadRejected(422, f"{name}: empty file", "empty")
    fmt = sniff_image(staging, name)
    suffix, mime = FORMATS[fmt]
    path = staging.with_suffix(suffix)
    staging.rename(path)
    return Upload(name=name, path=path, format=fmt, mime=mime, size=size, sha256=digest.hexdigest())


def sniff_image(path: Path, name: str) -> str:
    """The Pillow format of the file at ``path`` from its header; refuses non-images and bombs."""
    limit = max_pixels()
    Image.MAX_IMAGE_PIXELS = limit  # as read_image does: Pillow's own bomb check at our limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=OPENERS) as image:
                width, height = image.size
                fmt = image.format
    except UnidentifiedImageError:
        raise UploadRejected(415, f"{name}: not an image (accepted: PNG, JPEG, WebP, TIFF, BMP, GIF)", "bad_type") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadRejected(422, f"{name}: refused as a possible decompression bomb (over {limit / 1e6:.0f} MP)",
                             "bomb") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UploadRejected(422, f"{name}: cannot read the image header ({exc or type(exc).__name__})", "corrupt") from None
    if width * height > limit:
        raise UploadRejected(422, f"{name}: {width}x{height} is over the {limit / 1e6:.0f} MP limit "
                                  "(possible decompression bomb)", "bomb")
    if fmt not in FORMATS:
        raise UploadRejected(415, f"{name}: {fmt} images are not accepted", "bad_type")
    return fmt


def keep_copy(upload: Upload, folder: Path) -> Path:
    """The operator's opt-in: a copy named by content hash (never by the client's name), readable
    by the server's user only (uploads are other people's images): folder 0700, file 0600."""
    import os

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = folder / f"{upload.sha256}{upload.path.suffix}"
    if not target.exists():
        partial = target.with_name(target.name + ".part")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as out, open(upload.path, "rb") as source:
            shutil.copyfileobj(source, out)
        partial.replace(target)
    return target
