"""The ``caption`` stage: a visible, legible text stamp such as "AI-generated" or the seed and model.

Put it before ``watermark``: a caption drawn over a watermarked image may erase the mark (the
chain warns). Rendering lives in :mod:`sdmark.plugins.caption.render`; this module handles options,
templates and the record.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdmark.core.errors import ChainError
from sdmark.core.stages import ImageItem, RunContext, Stage, StageOptions, option

POSITIONS = ("bottom", "top", "bottom-right", "bottom-left", "top-right", "top-left")
_SUMMARY_CHARS = 40


@dataclass(frozen=True)
class CaptionOptions(StageOptions):
    text: str = option("AI-generated", "Caption template; fields: {prompt} {negative_prompt} {seed} {steps} {sampler} "
                       "{guidance} {model} {software} {date} {datetime} {kind} {width} {height} {name} {source}; {{ }} for braces.")
    position: str = option("bottom", "A band along an edge (top, bottom) or a label in a corner.", choices=POSITIONS)
    mode: str = option("overlay", "Bands: overlay (draw over the image) or extend (add a strip to the canvas).",
                       choices=("overlay", "extend"))
    size: float = option(0.06, "Font size as a share of the image's shorter side.", minimum=0.005, maximum=0.5)
    padding: float = option(1.0, "Space around the text, in font sizes (room that lets OCR find the band "
                            "on the whole image).", minimum=0.0, maximum=4.0)
    min_px: int = option(12, "Smallest font size in pixels (keeps captions on small images readable).",
                         minimum=4, maximum=512)
    font: Path | None = option(None, "TrueType/OpenType font file (default: the bundled DejaVu Sans Mono Bold, legible "
                               "to OCR, Latin/Greek/Cyrillic; 'pillow' for Pillow's bundled font).")
    color: str = option("auto", "Text colour: auto (black or white, whichever contrasts) or a colour (#ffcc00, red).")
    background: str = option("box", "box (a band/box in the contrasting tone) or none (outlined text).",
                             choices=("box", "none"))
    background_opacity: float = option(0.8, "Opacity of the box over the image (extend strips are opaque).",
                                       minimum=0.0, maximum=1.0)
    opacity: float = option(1.0, "Opacity of the text.", minimum=0.0, maximum=1.0)
    max_lines: int = option(3, "Wrap long text to at most this many lines (the rest is cut with an ellipsis).",
                            minimum=1, maximum=50)


class CaptionStage(Stage[CaptionOptions]):
    """Stamp a visible caption (template text) onto each image."""

    name = "caption"
    description = (
        "Stamp a visible caption (default 'AI-generated') as a band or corner label, sized to the image, "
        "with automatic contrast. Text is a template: {model}, {seed}, {date}, {prompt}, ... Put it before watermark."
    )
    phases = ("process",)
    changes_pixels = True

    def check(self, mode: str) -> None:
        """Reject unknown template fields, bad colours, an unusable font and extend on a corner."""
        from sdmark.plugins.caption.fields import template_fields
        from sdmark.plugins.caption.fonts import CaptionFont
        from sdmark.plugins.caption.render import check_color

        text = self.options.text
        if not text.strip():
            raise ChainError("caption:text is empty; give the text to stamp (default 'AI-generated')")
        template_fields(text)
        if self.options.mode == "extend" and self.options.position not in ("top", "bottom"):
            raise ChainError(
                f"caption:mode=extend adds a strip along an edge: use position=top or bottom "
                f"(position={self.options.position} is a corner label, drawn over the image)"
            )
        try:
            check_color(self.options.color)
        except ValueError:
            raise ChainError(
                f"caption:color {self.options.color!r} is not a colour; use auto, a name (white) or #rrggbb"
            ) from None
        CaptionFont.load(self.options.font)

    def setup(self, context: RunContext) -> None:
        from sdmark.plugins.caption.fonts import CaptionFont
        from sdmark.plugins.caption.layout import ELLIPSIS
        from sdmark.plugins.caption.render import Style

        self._font = CaptionFont.load(self.options.font)
        self._ellipsis = "..." if self._font.missing(ELLIPSIS) else ELLIPSIS
        names = {field.name for field in dataclasses.fields(Style)}
        self._style = Style(**{key: value for key, value in self.options.values().items() if key in names})

    def process_one(self, item: ImageItem, context: RunContext) -> dict[str, Any]:
        """Replace ``item.image`` with the captioned image (taller with ``mode=extend``)."""
        from sdmark.plugins.caption.fields import (GENERATION_FIELDS, UNVERIFIED_ORIGINS, fill, generation_origin,
                                                   template_fields)
        from sdmark.plugins.caption.render import stamp

        if not hasattr(self, "_style"):
            self.setup(context)
        text = fill(self.options.text, item)
        missing = self._font.missing(text)
        if missing:
            chars = "".join(missing)
            item.notes.append(
                f"caption: the font {self._font.label} has no glyph for {chars!r} (drawn as boxes); "
                "pass caption:font=PATH to a font that has them"
            )
        stamped = stamp(item.image, text, self._font, self._style, self._ellipsis)
        item.image = stamped.image
        result: dict[str, Any] = {
            "summary": self._summary(text, stamped.extended, stamped.truncated, len(stamped.lines)),
            "text": text,
            "lines": stamped.lines,
            "position": self.options.position,
            "mode": self.options.mode if self.options.position in ("top", "bottom") else "label",
            "font": self._font.label,
            "font_px": stamped.font_px,
            "box": list(stamped.box),
            "text_color": stamped.text_color,
            "box_color": stamped.box_color,
            "size": [stamped.image.width, stamped.image.height],
        }
        # The output is signed by us: a prompt or seed drawn from what the input merely claims is said to be unverified.
        origin = generation_origin(item)
        unverified = sorted(set(template_fields(self.options.text)) & set(GENERATION_FIELDS))
        if unverified and origin in UNVERIFIED_ORIGINS:
            result["unverified_fields"] = unverified
            result["fields_from"] = UNVERIFIED_ORIGINS[origin]
            result["summary"] += f" ({', '.join('{' + name + '}' for name in unverified)} from the input's unverified metadata)"
        if stamped.truncated:
            result["truncated"] = True
        if missing:
            result["missing_glyphs"] = missing
        return result

    def _summary(self, text: str, extended: int, truncated: bool, lines: int) -> str:
        shown = " ".join(text.split())
        if len(shown) > _SUMMARY_CHARS:
            shown = shown[: _SUMMARY_CHARS - 1].rstrip() + "\u2026"
        position = self.options.position
        where = f"{position} band" if position in ("top", "bottom") else f"{position} label"
        if extended:
            where += f" (+{extended} px)"
        if truncated:
            where += f", cut to {lines} line{'s' if lines > 1 else ''}"
        return f'"{shown}" {where}'
