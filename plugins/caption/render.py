"""Drawing a caption onto an image: a band along the top or bottom edge, or a corner label.

Sizes scale with the image's shorter side, so a caption covers the same share of a 256 px and a
4096 px image. Colours are picked by the WCAG relative luminance of the pixels the text lands on:
a box (or an extended strip) is light only over mostly light pixels (above 0.5), else dark, with
text in the opposite tone; outlined text without a box is black above the point where black and
white contrast equally (0.179), else white. Only the caption's rectangle is touched
(or, with ``mode="extend"``, a new strip added to the canvas); alpha is kept when the image has it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageColor, ImageDraw

from sdmark.plugins.caption.fonts import CaptionFont
from sdmark.plugins.caption.layout import ELLIPSIS, wrap

BANDS = ("bottom", "top")
CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")
# Luminance where black and white text have the same WCAG contrast: sqrt(1.05 * 0.05) - 0.05.
_CROSSOVER = 0.179
# With a box, its text has full contrast whichever tone it takes; the tone only decides what blends
# in. A light box over a mid-tone photo (luminance 0.18-0.5: a cat, a blown-out cup) was lost to
# OCR reading the whole image (Tesseract's colour thresholding), a dark one was read on every photo
# measured; a mostly white picture (a logo on white) keeps a light box.
_BOX_CROSSOVER = 0.5
_BLACK, _WHITE = (0, 0, 0), (255, 255, 255)


@dataclass(frozen=True)
class Style:
    """How a caption looks; the caption stage's options, checked."""

    position: str = "bottom"
    mode: str = "overlay"
    size: float = 0.06
    min_px: int = 12
    color: str = "auto"
    background: str = "box"
    background_opacity: float = 0.8
    opacity: float = 1.0
    max_lines: int = 3
    corner_width: float = 0.6
    """Widest a corner label may be, as a share of the image width (it wraps beyond)."""
    padding: float = 1.0
    """Space around the text, in font sizes. OCR reading a whole image finds a band by the calm
    around its text: 0.4 (the old default) let the picture's edges crowd it and OCR missed it."""


@dataclass
class Stamped:
    """The captioned image and what was drawn (for the provenance record)."""

    image: Image.Image
    lines: list[str]
    truncated: bool
    font_px: int
    box: tuple[int, int, int, int]
    text_color: str
    box_color: str | None
    extended: int
    """Pixels added to the canvas height (``mode="extend"``), else 0."""


def font_pixels(width: int, height: int, style: Style) -> int:
    """The font size in pixels for an image of this size."""
    return max(style.min_px, round(style.size * min(width, height)))


def stamp(image: Image.Image, text: str, font: CaptionFont, style: Style, ellipsis: str = ELLIPSIS) -> Stamped:
    """Draw ``text`` on a copy of ``image`` as ``style`` says; the input image is not changed."""
    keep_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    mode = "RGBA" if keep_alpha else "RGB"
    # Only the caption's rectangle is composited in RGBA: converting a whole 4096 px image costs more.
    base = image if image.mode == mode else image.convert(mode)
    width, height = base.size
    px = font_pixels(width, height, style)
    face = font.at(px)
    pad = max(2, round(px * style.padding))
    ascent, descent = face.getmetrics()
    line_height, gap = ascent + descent, round(px * 0.15)
    band = style.position in BANDS
    available = width - 2 * pad if band else style.corner_width * width - 2 * pad
    lines, truncated = wrap(text, face, max(available, 1.0), style.max_lines, ellipsis)
    widths = [face.getlength(line) for line in lines]
    text_height = len(lines) * line_height + (len(lines) - 1) * gap
    box_height = text_height + 2 * pad

    label_width = round(max(widths) + 2 * pad)
    canvas, box, sample, extended = _place(base, style, label_width, box_height, pad)
    boxed = extended or style.background == "box"
    text_rgb, box_rgb = _colors(style.color, _luminance(sample), _BOX_CROSSOVER if boxed else _CROSSOVER)
    region = canvas.crop(box).convert("RGBA")
    size = region.size
    if extended:
        region = Image.new("RGBA", size, (*box_rgb, 255))
    elif style.background == "box":
        region = Image.alpha_composite(region, Image.new("RGBA", size, (*box_rgb, round(255 * style.background_opacity))))

    text_mask = Image.new("L", size, 0)
    outline_mask = Image.new("L", size, 0) if style.background == "none" and not extended else None
    stroke = max(1, round(px / 10))
    for index, (line, line_width) in enumerate(zip(lines, widths)):
        if band:
            x = (size[0] - line_width) / 2
        elif style.position.endswith("left"):
            x = pad
        else:
            x = size[0] - pad - line_width
        y = pad + index * (line_height + gap)
        ImageDraw.Draw(text_mask).text((x, y), line, font=face, fill=255)
        if outline_mask is not None:
            ImageDraw.Draw(outline_mask).text((x, y), line, font=face, fill=255, stroke_width=stroke, stroke_fill=255)
    if outline_mask is not None:
        region = Image.alpha_composite(region, _layer(box_rgb, outline_mask, style.opacity))
    region = Image.alpha_composite(region, _layer(text_rgb, text_mask, style.opacity))

    canvas.paste(region.convert(mode), box[:2])
    return Stamped(
        image=canvas,
        lines=lines,
        truncated=truncated,
        font_px=px,
        box=box,
        text_color=_hex(text_rgb),
        box_color=_hex(box_rgb) if (extended or style.background != "none") else None,
        extended=extended,
    )


def _place(
    base: Image.Image, style: Style, label_width: int, box_height: int, pad: int
) -> tuple[Image.Image, tuple[int, int, int, int], Image.Image, int]:
    """Where the caption goes: the canvas to draw on (a copy, taller for ``extend``), the caption's
    box on it, the pixels that decide its colours, and the number of rows added."""
    width, height = base.size
    if style.position in CORNERS:
        x0 = pad if style.position.endswith("left") else max(0, width - pad - label_width)
        y0 = pad if style.position.startswith("top") else max(0, height - pad - box_height)
        box = (x0, y0, min(width, x0 + label_width), min(height, y0 + box_height))
        return base.copy(), box, base.crop(box), 0
    top = style.position == "top"
    if style.mode != "extend":
        y0 = 0 if top else max(0, height - box_height)
        box = (0, y0, width, min(height, y0 + box_height))
        return base.copy(), box, base.crop(box), 0
    canvas = Image.new(base.mode, (width, height + box_height))
    canvas.paste(base, (0, box_height if top else 0))
    # The new strip's colours follow the image edge it continues.
    edge = (0, 0, width, min(box_height, height)) if top else (0, max(0, height - box_height), width, height)
    box = (0, 0, width, box_height) if top else (0, height, width, height + box_height)
    return canvas, box, base.crop(edge), box_height


def check_color(value: str) -> tuple[int, int, int] | None:
    """``None`` for ``auto``, else the RGB of a Pillow colour name or ``#hex``; ValueError if unknown."""
    if value == "auto":
        return None
    return ImageColor.getrgb(value)[:3]


def _colors(color: str, luminance: float, crossover: float = _CROSSOVER) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Text and box colours: opposite tones, the box on the same side as the pixels underneath."""
    chosen = check_color(color)
    if chosen is None:
        return (_BLACK, _WHITE) if luminance > crossover else (_WHITE, _BLACK)
    own = float(_luminance_of(np.array(chosen, dtype=np.float64) / 255.0))
    return chosen, (_BLACK if own > _CROSSOVER else _WHITE)


def _luminance(region: Image.Image) -> float:
    """Mean WCAG relative luminance of ``region``, weighted by alpha (fully transparent counts as light)."""
    pixels = np.asarray(region.convert("RGBA"))
    if pixels.size == 0:
        return 1.0
    # A regular grid of ~65k pixels estimates the mean well and keeps 4096 px images fast.
    step = max(1, int(np.sqrt(pixels.shape[0] * pixels.shape[1] / 65536)))
    pixels = pixels[::step, ::step].reshape(-1, 4)
    linear = _LINEAR[pixels[:, :3]]
    alpha = pixels[:, 3:] / 255.0
    # Transparent pixels are usually shown on white: blend them towards white, as viewers do.
    linear = linear * alpha + (1.0 - alpha)
    return float((linear @ _WEIGHTS).mean())


def _luminance_of(rgb: np.ndarray) -> np.ndarray:
    """WCAG relative luminance of sRGB values in 0..1 (last axis R, G, B)."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return linear @ _WEIGHTS


_WEIGHTS = np.array([0.2126, 0.7152, 0.0722])
_CODES = np.arange(256) / 255.0
_LINEAR = np.where(_CODES <= 0.04045, _CODES / 12.92, ((_CODES + 0.055) / 1.055) ** 2.4)
"""sRGB code value (0-255) to linear light."""


def _layer(rgb: tuple[int, int, int], mask: Image.Image, opacity: float) -> Image.Image:
    """A solid colour whose alpha is ``mask`` times ``opacity`` (straight alpha, no dark fringes)."""
    layer = Image.new("RGBA", mask.size, (*rgb, 0))
    layer.putalpha(mask if opacity >= 1.0 else mask.point(lambda value: round(value * opacity)))
    return layer


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)
