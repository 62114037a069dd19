"""Fonts for captions: the bundled default face or a TrueType/OpenType file, at any size.

The default is DejaVu Sans Mono Bold, shipped in ``fonts/`` (Bitstream Vera licence, see
``fonts/DejaVu-LICENSE.txt``). It was chosen for machine legibility: OCR (Tesseract) reading a whole
image finds it where Pillow's own font (Aileron Regular) was missed, and its capital I has serifs,
so "AI-generated" is not read as "Al-generated" (measured by ``benchmarks/caption_ocr.py``).
``caption:font=pillow`` picks Pillow's bundled font. :meth:`CaptionFont.missing` finds the
characters a font has no glyph for, so the stage can say so instead of silently drawing boxes.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from pathlib import Path

from PIL import ImageFont, features

from sdmark.core.errors import ChainError

# A private-use code point no font maps: it renders as the font's .notdef glyph.
_UNMAPPED = "\U0010fffd"
DEFAULT_FONT = Path(__file__).with_name("fonts") / "DejaVuSansMono-Bold.ttf"
PILLOW_FONT = Path("pillow")
"""``caption:font=pillow``: Pillow's bundled scalable font instead of the default."""


class CaptionFont:
    """One font face that hands out :class:`ImageFont.FreeTypeFont` objects by pixel size."""

    def __init__(self, path: Path | None = None) -> None:
        if not features.check("freetype2"):
            raise ChainError("caption needs Pillow built with FreeType (scalable fonts); this Pillow has none")
        self.path = path
        probe = self.at(32)
        family, style = probe.getname()
        self.label = f"{family} {style}" if path in (None, PILLOW_FONT) else f"{family} {style} ({path})"
        if path is None:
            self.label += " (sdmark's bundled font)"
        elif path == PILLOW_FONT:
            self.label += " (Pillow's bundled font)"

    @classmethod
    def load(cls, path: Path | None) -> CaptionFont:
        """The bundled font (``path=None``) or the font file at ``path``; :class:`ChainError` if unusable.

        A bare file name that is not a file here is looked up in the system font folders (Pillow's
        rule), so ``DejaVuSans.ttf`` works where that font is installed.
        """
        if path is not None and path != PILLOW_FONT and not path.is_file() and (path.parent != Path(".") or path.suffix == ""):
            raise ChainError(f"caption:font: no font file at {path}")
        try:
            return cls(path)
        except OSError as exc:
            if path is None:  # pragma: no cover - the bundled font is part of Pillow
                raise ChainError(f"caption: Pillow's bundled font cannot be loaded ({exc})") from None
            if not path.is_file():
                raise ChainError(f"caption:font: no font file at {path} (nor in the system font folders)") from None
            raise ChainError(f"caption:font: {path} is not a font FreeType can read ({exc})") from None

    def at(self, pixels: int) -> ImageFont.FreeTypeFont:
        """The font at ``pixels`` pixels per em (cached)."""
        return _font(self.path, pixels)

    def missing(self, text: str) -> list[str]:
        """The distinct characters of ``text`` this font has no glyph for, in order of appearance."""
        font = self.at(24)
        notdef = _mask(font, _UNMAPPED)
        missing = []
        for char in dict.fromkeys(text):
            # Spaces, controls and combining marks draw nothing alone: nothing to compare.
            if unicodedata.category(char)[0] in "ZCM":
                continue
            if _mask(font, char) == notdef:
                missing.append(char)
        return missing


@lru_cache(maxsize=64)
def _font(path: Path | None, pixels: int) -> ImageFont.FreeTypeFont:
    if path is None:
        return ImageFont.truetype(str(DEFAULT_FONT), pixels)
    if path == PILLOW_FONT:
        font = ImageFont.load_default(size=pixels)
        if not isinstance(font, ImageFont.FreeTypeFont):  # pragma: no cover - needs a Pillow without FreeType
            raise ChainError("Pillow's bundled font is not scalable here (Pillow < 10.1 or no FreeType)")
        return font
    return ImageFont.truetype(str(path), pixels)


def _mask(font: ImageFont.FreeTypeFont, char: str) -> tuple[tuple[int, int], bytes]:
    mask = font.getmask(char)
    return mask.size, bytes(mask)
