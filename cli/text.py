"""Making untrusted text safe to print: file names and messages may carry terminal escape sequences."""

from __future__ import annotations

import json
import re
from typing import Any

# C0 controls except none, DEL, and C1 controls (0x9b is a one-byte CSI on some terminals).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# json.dumps already escapes C0; with ensure_ascii=False it leaves DEL and C1 raw.
_JSON_RAW_CONTROL = re.compile(r"[\x7f-\x9f]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return {"\t": "\\t", "\n": "\\n", "\r": "\\r"}.get(char) or f"\\x{ord(char):02x}"


def printable(text: Any) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``), so a file name or a
    message can never move the cursor, retitle the terminal or hide what follows."""
    return _CONTROL.sub(_escape, str(text))


def json_line(value: Any, **kwargs: Any) -> str:
    """``json.dumps(value, ensure_ascii=False)`` with DEL and C1 controls escaped too (still valid JSON)."""
    return _JSON_RAW_CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(value, ensure_ascii=False, **kwargs))
