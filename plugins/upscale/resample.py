"""Plain resampling (Pillow's lanczos, OpenCV's interpolations) and the output-size arithmetic."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sdmark.core.errors import StageError

if TYPE_CHECKING:
    from PIL import Image

# Option value -> cv2 constant name (looked up lazily: cv2 is imported only when used).
OPENCV_INTERPOLATIONS = {
    "nearest": "INTER_NEAREST",
    "nearest-exact": "INTER_NEAREST_EXACT",
    "linear": "INTER_LINEAR",
    "linear-exact": "INTER_LINEAR_EXACT",
    "cubic": "INTER_CUBIC",
    "area": "INTER_AREA",
    "lanczos4": "INTER_LANCZOS4",
}


def target_size(size: tuple[int, int], factor: float, width: int, height: int) -> tuple[int, int]:
    """The output size for an input of ``size`` (w, h).

    ``width`` and ``height`` (0 = unset) win over ``factor``; one of them alone keeps the aspect
    ratio. Raises :class:`StageError` when the result is empty or larger than the pixel limit.
    """
    from sdmark.core.io import max_pixels

    w, h = size
    if width and height:
        out = (width, height)
    elif width:
        out = (width, max(1, round(h * width / w)))
    elif height:
        out = (max(1, round(w * height / h)), height)
    else:
        out = (max(1, round(w * factor)), max(1, round(h * factor)))
    if out[0] * out[1] > max_pixels():
        raise StageError(
            f"output of {out[0]}x{out[1]} exceeds the {max_pixels() / 1e6:.0f} MP limit (SDMARK_MAX_PIXELS)"
        )
    return out


def lanczos(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Pillow's lanczos (a=3) resampling to ``size``; alpha is resampled premultiplied by Pillow."""
    from PIL import Image as PILImage

    if image.size == size:
        return image.copy()
    return image.resize(size, PILImage.Resampling.LANCZOS)


def opencv(image: Image.Image, size: tuple[int, int], interpolation: str) -> Image.Image:
    """``cv2.resize`` with the named interpolation; works on any channel order, so RGB(A) goes in as is."""
    import cv2
    import numpy as np
    from PIL import Image as PILImage

    flag = getattr(cv2, OPENCV_INTERPOLATIONS[interpolation])
    array = np.ascontiguousarray(np.asarray(image))
    return PILImage.fromarray(cv2.resize(array, size, interpolation=flag), image.mode)
