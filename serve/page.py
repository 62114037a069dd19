"""The HTML report: one view per verify report, rendered by Jinja2 with autoescaping.

The view is built from the report generically: known fields get plain words, every other field is
still shown (as a definition list), so a field added to the verify report later never breaks the
page and never goes missing from it. Every asset is served by sdmark itself (``static/``).
"""

from __future__ import annotations

import base64
import io
import json
import math
import secrets
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

HERE = Path(__file__).parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
THUMB_SIDE = 320
MAX_GREY_SIDE = 256
DATA_URI_PREFIXES = ("data:image/png;base64,", "data:image/jpeg;base64,", "data:image/webp;base64,")

SOURCE_TYPES = {
    "trainedAlgorithmicMedia": "made by a generative AI model",
    "compositeWithTrainedAlgorithmicMedia": "a composite that includes AI-generated content",
    "algorithmicMedia": "made by an algorithm (not a trained model)",
    "compositeSynthetic": "a composite that includes synthetic content",
    "digitalCapture": "captured by a camera or scanner",
    "computationalCapture": "captured by a camera with computational processing",
    "composite": "a composite of several sources",
    "digitalArt": "drawn or painted digitally by a person",
    "minorHumanEdits": "a capture with minor human edits",
    "dataDrivenMedia": "made from data (e.g. a chart)",
}
STATUS_WORDS = {
    "valid": "valid: intact, and the signer chains to a trust anchor of this server",
    "untrusted": "intact, but the signer is not under any trust anchor of this server",
    "tampered": "tampered: the file changed after it was signed",
    "invalid": "invalid: the signature or certificate does not check out",
    "absent": "none in the file",
}
RECOVERY_WORDS = {
    "matched": "matched: this image's content matches the registered image as far as the signed fingerprint can "
               "resolve (see the changes and resolution below); the credentials below describe the registered image, "
               "not changes made since",
    "different-content": "DIFFERENT CONTENT: the watermark's payload is registered for another image; the mark was copied "
                         "or forged onto this one, and those credentials do not apply to it",
    "inconsistent": "inconsistent: the registry rows are contradicted by their own signed manifests, so they are ignored",
    "ambiguous": "ambiguous: several registered images carry this payload and the content does not pick one",
    "unverifiable": "unverifiable: the registered manifest cannot be compared with this image",
    "not-registered": "not registered: the watermark's payload is in no row of this server's registry",
}
# Fields a section below already shows; anything else in the report is listed under "other findings".
REPORT_SHOWN = {"path", "watermarked", "detections", "error", "checked", "content_credentials", "parameters",
                "xmp_digital_source_type", "record"}
DETECTION_SHOWN = {"scheme", "band", "p_value", "payload", "key"}
CREDENTIALS_SHOWN = {"present", "status", "trusted", "signer", "digital_source_type", "actions", "ingredients",
                     "summary", "error", "record", "recovered_from_registry", "trust_anchors", "binding", "recovery",
                     "embedded", "digital_source_type_inherited"}
# In a report without a ``recovery`` object these describe the recovered manifest, shown in its section.
RECOVERED_SHOWN = {"registry_entry", "registry", "soft_binding", "soft_binding_matches_watermark", "claim_generator",
                   "manifest", "validation_state", "failures"}


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True, default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["p_value"] = format_p_value
    env.filters["source_type"] = source_type_words
    env.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False, default=str)
    env.tests["mapping"] = lambda value: isinstance(value, dict)
    env.tests["sequence"] = lambda value: isinstance(value, (list, tuple))
    return env


def render_index(views: list[dict[str, Any]]) -> str:
    """The whole page: the upload form, and the reports when there are any."""
    return _environment().get_template("index.html").render(views=views)


def render_reports(views: list[dict[str, Any]]) -> str:
    """The reports alone (what the page's script inserts after each upload)."""
    return _environment().get_template("reports.html").render(views=views)


def render_error(status: int, message: str) -> str:
    return _environment().get_template("error.html").render(status=status, message=message)


def format_p_value(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        return "not reported"
    return f"{value:.1e}" if value < 0.001 else f"{value:.3f}"


def source_type_words(value: Any) -> str:
    if not isinstance(value, str) or not value:
        return "not declared"
    term = value.rstrip("/").rsplit("/", 1)[-1]
    words = SOURCE_TYPES.get(term)
    return f"{words} ({term})" if words else term


def thumbnail_data_uri(path: Path) -> str | None:
    """A small JPEG of the upload as a data URI (kept in the response only, never on disk)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft("RGB", (THUMB_SIDE, THUMB_SIDE))
            image.thumbnail((THUMB_SIDE, THUMB_SIDE))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, "JPEG", quality=80)
    except Exception:  # the report already says why the image is unreadable
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _safe_image(value: Any) -> str | None:
    """A registered thumbnail as an inline image: an inline PNG/JPEG/WebP data URI, or a signed
    fingerprint's small greyscale thumbnail (``grey_zlib_b64``); never a URL."""
    if isinstance(value, dict):
        if isinstance(value.get("data_uri"), str):
            value = value["data_uri"]
        elif isinstance(value.get("mime"), str) and isinstance(value.get("base64"), str):
            value = f"data:{value['mime']};base64,{value['base64']}"
        elif isinstance(value.get("grey_zlib_b64"), str):
            return _grey_thumbnail(value)
    if isinstance(value, str) and value.startswith(DATA_URI_PREFIXES):
        return value
    return None


def _grey_thumbnail(value: dict[str, Any]) -> str | None:
    import zlib

    from PIL import Image

    try:
        width, height = int(value["width"]), int(value["height"])
        if not (0 < width <= MAX_GREY_SIDE and 0 < height <= MAX_GREY_SIDE):
            return None
        raw = zlib.decompressobj().decompress(base64.b64decode(value["grey_zlib_b64"]), width * height + 1)
        if len(raw) != width * height:
            return None
        image = Image.frombytes("L", (width, height), raw)
        scale = max(1, THUMB_SIDE // max(width, height))
        buffer = io.BytesIO()
        image.resize((width * scale, height * scale), Image.Resampling.NEAREST).save(buffer, "PNG")
    except (KeyError, TypeError, ValueError, zlib.error):
        return None
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _find_thumbnail(*holders: Any) -> str | None:
    for holder in holders:
        if not isinstance(holder, dict):
            continue
        for key, value in holder.items():
            if "thumbnail" in key:
                found = _safe_image(value)
                if found:
                    return found
    return None


def _recovery(credentials: dict[str, Any]) -> dict[str, Any] | None:
    """The registry recovery, from a report with a ``recovery`` verdict or from one that only says
    ``recovered_from_registry`` (then the recovered manifest's fields sit in the credentials)."""
    recovery = credentials.get("recovery")
    if isinstance(recovery, dict):
        chosen = recovery.get("matched") if isinstance(recovery.get("matched"), dict) else None
        verdict = recovery.get("verdict")
        candidates = [c for c in recovery.get("candidates") or [] if isinstance(c, dict)]
        shown = {"verdict", "matched", "candidates", "reason", "payload", "key", "scheme", "note"}
        return {
            "verdict": verdict, "words": RECOVERY_WORDS.get(verdict if isinstance(verdict, str) else "", str(verdict or "no verdict")),
            "reason": recovery.get("reason"), "note": recovery.get("note"), "payload": recovery.get("payload"),
            "key": recovery.get("key"), "scheme": recovery.get("scheme"), "manifest": chosen,
            "content": (chosen or {}).get("content") if isinstance((chosen or {}).get("content"), dict) else None,
            "candidates": candidates if not chosen or len(candidates) > 1 else [],
            "extra": {k: v for k, v in recovery.items() if k not in shown and v not in (None, [], {})},
            "thumbnail": _find_thumbnail(chosen, (chosen or {}).get("content"), recovery, *candidates),
        }
    if credentials.get("recovered_from_registry"):
        return {"verdict": None, "words": "recovered (this report has no content comparison)", "reason": None,
                "note": credentials.get("note"), "payload": (credentials.get("soft_binding") or {}).get("payload"),
                "key": None, "scheme": None, "manifest": credentials, "content": None, "candidates": [], "extra": {},
                "thumbnail": _find_thumbnail(credentials, credentials.get("registry_entry"))}
    return None


def _verdict(report: dict[str, Any], detections: list[dict[str, Any]]) -> dict[str, str]:
    if report.get("error"):
        return {"kind": "error", "headline": "Could not check this image", "detail": str(report["error"])}
    if report.get("watermarked"):
        found = [d for d in detections if d.get("band") in ("likely", "very likely")] or detections
        parts = []
        for d in found:
            payload = f", payload {d['payload']}" if d.get("payload") not in (None, "") else ""
            parts.append(f"{d.get('scheme', 'unknown scheme')} ({d.get('band', 'no band')}{payload})")
        return {"kind": "marked", "headline": "Watermark found", "detail": "; ".join(parts)}
    if report.get("watermarked") is None:
        return {"kind": "error", "headline": "No verdict", "detail": "the check did not say whether a mark is present"}
    weak = [d.get("scheme", "?") for d in detections]
    detail = (f"only weak, inconclusive readings: {', '.join(weak)}" if weak
              else "none of the checked schemes reads a mark")
    return {"kind": "unmarked", "headline": "No watermark found", "detail": detail}


def view(report: dict[str, Any], upload_thumbnail: str | None = None) -> dict[str, Any]:
    """What the templates show for one verify report; tolerant of missing or unexpected fields."""
    report = report if isinstance(report, dict) else {"error": "malformed report"}
    detections = [d for d in report.get("detections") or [] if isinstance(d, dict)]
    credentials = report.get("content_credentials")
    credentials = credentials if isinstance(credentials, dict) else {}
    recovery = _recovery(credentials)
    recovered_manifest = (recovery or {}).get("manifest") or {}
    record = report.get("record") or credentials.get("record") or recovered_manifest.get("record")
    # An embedded manifest's record is only its signer's claim unless the manifest is valid and trusted.
    record_unverified = (not report.get("record") and bool(credentials.get("record"))
                         and not (credentials.get("status") == "valid" and credentials.get("trusted") is True))
    hidden = CREDENTIALS_SHOWN | (RECOVERED_SHOWN if recovery else set())
    return {
        "uid": secrets.token_hex(6),  # element ids stay unique when the script adds reports to the page
        "report": report,
        "name": str(report.get("path") or "upload"),
        "verdict": _verdict(report, detections),
        "detections": [{**d, "extra": {k: v for k, v in d.items() if k not in DETECTION_SHOWN}} for d in detections],
        "checked": report.get("checked") or [],
        "credentials": credentials,
        "embedded": bool(credentials.get("present")),
        "recovery": recovery,
        "status_words": STATUS_WORDS,
        "credentials_extra": {k: v for k, v in credentials.items() if k not in hidden and v not in (None, [], {})},
        "record": record if isinstance(record, dict) else None,
        "record_unverified": record_unverified,
        "file_metadata": {k: report.get(k) for k in ("xmp_digital_source_type", "parameters") if report.get(k)},
        "other": {k: v for k, v in report.items() if k not in REPORT_SHOWN and v not in (None, [], {})},
        "upload_thumbnail": upload_thumbnail,
    }
