"""Reading images safely and writing them atomically.

Reading normalises what users throw at us (palette, greyscale, 16-bit, CMYK, EXIF rotation, ICC
profiles) to 8-bit RGB or RGBA, and turns every way a file can be bad into an
:class:`ImageReadError` that names the file. Writing never overwrites an input, never leaves a
half-written file, and refuses to clobber an existing output unless asked to.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from PIL import ExifTags, Image, ImageCms, ImageOps, UnidentifiedImageError

from sdmark.core.errors import ImageReadError, ImageWriteError, SdmarkError
from sdmark.core.metadata import read_metadata

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"})
OUTPUT_FORMATS = {"png": ("PNG", ".png"), "jpeg": ("JPEG", ".jpg"), "jpg": ("JPEG", ".jpg"), "webp": ("WEBP", ".webp")}
# 160 MP admits the largest single-shot camera files (151 MP medium format, a 12000x12000 scan)
# while keeping one image's working memory to a few GB (see benchmarks/memory.py).
DEFAULT_MAX_PIXELS = 160_000_000
MAX_PIXELS_VARIABLE = "SDMARK_MAX_PIXELS"


def max_pixels() -> int:
    """The largest image, in pixels, that sdmark decodes or produces: a guard against decompression bombs.

    Set by ``SDMARK_MAX_PIXELS`` (default 160 MP); a value that is not a positive whole number is
    a configuration error (:class:`SdmarkError`, exit 2), never silently replaced.
    """
    raw = os.environ.get(MAX_PIXELS_VARIABLE)
    if raw is None or not raw.strip():
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise SdmarkError(f"{MAX_PIXELS_VARIABLE}={raw[:40]!r} is not a positive number of pixels "
                          f"(the default is {DEFAULT_MAX_PIXELS})")
    return value


def pillow_max_pixels() -> int | None:
    """The size over which Pillow itself refuses to open an image in this process (None: no limit).

    Pillow warns over ``PIL.Image.MAX_IMAGE_PIXELS`` and refuses over twice that. sdmark never
    changes that process-wide setting (a program embedding sdmark owns it); it applies its own
    limit instead, so only Pillow's refusal can stop an image that sdmark's limit admits.
    """
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


def _megapixels(pixels: int) -> str:
    if pixels < 1_000_000:
        return f"{pixels / 1e6:.3g} MP"
    return f"{pixels / 1e6:,.1f}".removesuffix(".0") + " MP"


def pixel_limit_error(path: Path | str, size: tuple[int, int] | None, pixels: int, limit: int) -> str:
    """The message for an image over sdmark's pixel limit: its size, the limit and how to raise it."""
    shape = f"{size[0]}x{size[1]} = " if size else ""
    return (f"{path}: {shape}{_megapixels(pixels)}, over sdmark's limit of {_megapixels(limit)} "
            f"({limit} pixels, a guard against decompression bombs); set {MAX_PIXELS_VARIABLE} to allow larger images")


_PILLOW_SIZE = re.compile(r"Image size \((\d+) pixels\)")


@dataclass
class LoadedImage:
    """An input image normalised to 8-bit RGB/RGBA, with what its file carried."""

    path: Path
    image: Image.Image
    format: str
    metadata: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def read_image(path: Path | str) -> LoadedImage:
    """Open, fully decode and normalise one image; raise :class:`ImageReadError` naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if path.is_dir():
        raise ImageReadError(f"{path}: is a directory")
    if size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    limit = max_pixels()
    try:
        with warnings.catch_warnings():
            # Pillow's warning band (over its MAX_IMAGE_PIXELS) is ours to judge, with our limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size
                if width * height > limit:
                    raise ImageReadError(pixel_limit_error(path, (width, height), width * height, limit))
                fmt = opened.format or "unknown"
                notes = []
                frames = getattr(opened, "n_frames", 1)
                if frames > 1:
                    notes.append(f"{frames} frames: only the first is used")
                opened.load()
                metadata = read_metadata(opened)
                image = _normalise(opened)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(_bomb_message(path, exc, limit)) from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason:
            reason = f"truncated or corrupt ({reason})"
        raise ImageReadError(f"{path}: cannot decode: {reason}") from None
    return LoadedImage(path=path, image=image, format=fmt, metadata=metadata, notes=notes)


def _bomb_message(path: Path, exc: Exception, limit: int) -> str:
    """Pillow refused the file before we saw its size: say which limit it was over, and whose."""
    found = _PILLOW_SIZE.search(str(exc))
    pixels = int(found.group(1)) if found else None
    if pixels is not None and pixels > limit:
        return pixel_limit_error(path, None, pixels, limit)
    pillow = pillow_max_pixels()
    what = _megapixels(pixels) if pixels is not None else "its size"
    over = f"{_megapixels(pillow)} ({pillow} pixels)" if pillow else "its limit"
    return (f"{path}: {what} is over Pillow's own limit of {over} in this process, below sdmark's "
            f"{MAX_PIXELS_VARIABLE}={limit}; sdmark does not change Pillow's process-wide PIL.Image.MAX_IMAGE_PIXELS")


def _normalise(image: Image.Image) -> Image.Image:
    """EXIF orientation applied, colour converted to sRGB, 8-bit RGB or RGBA out."""
    icc = image.info.get("icc_profile")
    # exif_transpose copies the whole image even when there is nothing to turn.
    if image.getexif().get(ExifTags.Base.Orientation, 1) not in (1, None):
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Pillow's own I;16 -> L conversion clips at 255 instead of scaling.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
        image = Image.fromarray(np.clip(np.rint(array * (255.0 / peak)), 0, 255).astype(np.uint8), "L")
        mode = "L"
    elif mode == "F":
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 if array.max(initial=0) <= 1.0 else 1.0
        image = Image.fromarray(np.clip(np.rint(array * scale), 0, 255).astype(np.uint8), "L")
        mode = "L"
    if icc and mode in ("RGB", "RGBA", "CMYK"):
        image = _to_srgb(image, icc)
        mode = image.mode
    if mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if mode in ("LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        alpha = image.getchannel("A")
        return image.convert("RGB") if alpha.getextrema() == (255, 255) else image
    if mode != "RGB":
        return image.convert("RGB")
    return image


def _to_srgb(image: Image.Image, icc: bytes) -> Image.Image:
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (OSError, ImageCms.PyCMSError):
        return image.convert("RGB") if image.mode == "CMYK" else image
    description = (ImageCms.getProfileDescription(source) or "").lower()
    if "srgb" in description and image.mode != "CMYK":
        return image
    alpha = image.getchannel("A") if image.mode == "RGBA" else None
    base = image.convert("RGB") if image.mode == "RGBA" else image
    try:
        converted = ImageCms.profileToProfile(base, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except ImageCms.PyCMSError:
        converted = None
    if converted is None:  # a failed conversion (None is also what inPlace=True returns, not used here)
        converted = base.convert("RGB")
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


@dataclass(frozen=True)
class InputEntry:
    """One input found on the command line: a file to read, or an error to report."""

    path: Path
    error: str | None = None
    relative: Path | None = None


def iter_inputs(
    paths: Iterable[Path | str], recursive: bool = True, skipped: list[Path] | None = None
) -> Iterator[InputEntry]:
    """Expand files and folders into image files, in a stable order; unreadable entries are reported.

    Files named explicitly are always tried (so a non-image gets a clear error); inside folders
    only files with an image extension are taken (the others are appended to ``skipped`` when it
    is given). ``relative`` keeps the folder structure for output.
    """
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            yield InputEntry(path, error=f"{path}: no such file or directory")
        elif path.is_dir():
            errors: list[OSError] = []
            found = []
            for root, dirs, files in os.walk(path, onerror=errors.append):
                dirs.sort()
                if not recursive:
                    dirs.clear()
                for name in sorted(files):
                    if Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."):
                        found.append(Path(root) / name)
                    elif skipped is not None:
                        skipped.append(Path(root) / name)
            for error in errors:
                yield InputEntry(Path(error.filename or path), error=f"{error.filename}: cannot list ({error.strerror})")
            for file in found:
                yield InputEntry(file, relative=file.relative_to(path))
        else:
            yield InputEntry(path, relative=Path(path.name))


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def output_format(name: str) -> tuple[str, str]:
    """Pillow format name and file suffix for ``png``, ``jpeg``/``jpg`` or ``webp``."""
    try:
        return OUTPUT_FORMATS[name.lower()]
    except KeyError:
        raise ImageWriteError(f"unknown output format {name!r}; choose png, jpeg or webp") from None


def write_atomic(
    path: Path,
    encode: Callable[[Path], None],
    *,
    overwrite: bool = False,
    protected: Iterable[Path] = (),
    finalize: Callable[[Path], None] | None = None,
) -> Path:
    """Write a file through ``encode(tmp_path)`` then move it into place in one step.

    ``protected`` are input files: never replaced, whatever ``overwrite`` says. Without
    ``overwrite`` an existing ``path`` is an error, checked again at the final link so a file that
    appears meanwhile is not clobbered. ``finalize(tmp_path)`` is the last write (e.g. signing).
    """
    path = Path(path)
    target = path.resolve()
    for item in protected:
        try:
            if Path(item).resolve() == target or (target.exists() and os.path.samefile(item, target)):
                raise ImageWriteError(f"{path}: refusing to overwrite an input file; choose another output folder")
        except OSError:
            continue
    if path.exists() and not overwrite:
        raise ImageWriteError(f"{path}: already exists (pass --overwrite to replace it)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageWriteError(f"{path.parent}: cannot create folder ({exc.strerror or exc})") from None
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        encode(tmp)
        if finalize is not None:
            finalize(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise ImageWriteError(f"{path}: already exists (pass --overwrite to replace it)") from None
            except OSError:  # filesystems without hard links
                if path.exists():
                    raise ImageWriteError(f"{path}: already exists (pass --overwrite to replace it)") from None
                os.replace(tmp, path)
    except SdmarkError:
        raise
    except OSError as exc:
        raise ImageWriteError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except Exception as exc:  # an encoder or a finalising plugin failing on one image
        raise ImageWriteError(f"{path}: cannot encode: {type(exc).__name__}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path
