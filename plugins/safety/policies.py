"""What happens to a flagged image: the ``policy`` option of the ``safety`` stage.

Policies that change pixels act on the alpha channel too, since a transparent silhouette can show
what the colours hid: it is blurred or pixelated with them, and ``black``/``replace`` are opaque.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

POLICIES = ("blur", "pixelate", "black", "replace", "flag", "drop")
DEFAULT_POLICY = "blur"
ACTIONS = {
    "blur": "blurred",
    "pixelate": "pixelated",
    "black": "blacked out",
    "replace": "replaced",
    "flag": "kept (flag only)",
    "drop": "dropped",
}

BLUR_FRACTION = 0.08
"""Default blur radius as a fraction of the longer side: shapes and skin are no longer readable."""
PIXEL_BLOCKS = 16
"""Default pixelation: this many blocks along the longer side."""


def blur(image: Image.Image, radius: float = 0.0) -> Image.Image:
    """Gaussian blur; ``radius`` 0 means :data:`BLUR_FRACTION` of the longer side."""
    from PIL import ImageFilter

    radius = radius or max(2.0, BLUR_FRACTION * max(image.size))
    return image.filter(ImageFilter.GaussianBlur(radius))


def pixelate(image: Image.Image, size: int = 0) -> Image.Image:
    """Blocks of ``size`` pixels (0: :data:`PIXEL_BLOCKS` blocks along the longer side)."""
    from PIL import Image as PILImage

    size = size or max(2, math.ceil(max(image.size) / PIXEL_BLOCKS))
    small = image.resize((max(1, math.ceil(image.width / size)), max(1, math.ceil(image.height / size))),
                         PILImage.Resampling.BOX)
    return small.resize(image.size, PILImage.Resampling.NEAREST)


def black(image: Image.Image) -> Image.Image:
    """An opaque black image of the same size and mode (what SD's checker returns)."""
    from PIL import Image as PILImage

    canvas = PILImage.new(image.mode, image.size, 0)
    if "A" in image.getbands():
        canvas.putalpha(255)
    return canvas


def replace(image: Image.Image, replacement: Image.Image) -> Image.Image:
    """``replacement`` scaled to fit (aspect kept), centred on opaque black, at the image's size."""
    from PIL import ImageOps

    canvas = black(image)
    fitted = ImageOps.contain(replacement.convert(image.mode), image.size)
    canvas.paste(fitted, ((image.width - fitted.width) // 2, (image.height - fitted.height) // 2))
    return canvas
