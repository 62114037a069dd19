"""Breaking caption text into lines that fit a width in pixels."""

from __future__ import annotations

from PIL import ImageFont

ELLIPSIS = "\u2026"


def wrap(
    text: str, font: ImageFont.FreeTypeFont, width: float, max_lines: int, ellipsis: str = ELLIPSIS
) -> tuple[list[str], bool]:
    """Greedy word wrap of ``text`` into lines at most ``width`` pixels wide.

    Explicit newlines are kept; a word wider than a line is broken between characters. Returns
    the lines and whether text was cut to ``max_lines`` (the last line then ends with ``ellipsis``).
    """
    lines: list[str] = []
    for paragraph in text.split("\n"):
        words = paragraph.split()
        if not words:
            lines.append("")
            continue
        line = ""
        for word in words:
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            for char in word:  # only a word longer than a whole line gets here with chars left
                if line and font.getlength(line + char) > width:
                    lines.append(line)
                    line = ""
                line += char
            # the rest of the word starts the next line
        lines.append(line)
    while len(lines) > 1 and not lines[-1]:
        lines.pop()
    if len(lines) <= max_lines:
        return lines, False
    kept = lines[:max_lines]
    line = kept[-1].rstrip()
    while line and font.getlength(line + ellipsis) > width:
        line = line[:-1].rstrip()
    kept[-1] = line + ellipsis
    return kept, True
