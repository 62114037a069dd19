"""Image metadata: A1111-style ``parameters`` text, our JSON record, and an XMP packet.

Where each piece goes, by format:

========  =============================  ===========================  ==========================
format    ``parameters`` (A1111)         sdmark JSON record           XMP packet
========  =============================  ===========================  ==========================
PNG       ``tEXt``/``iTXt`` parameters    ``iTXt`` sdmark + in XMP     ``iTXt`` XML:com.adobe.xmp
JPEG      EXIF UserComment (UNICODE)     in XMP (``sdmark:record``)   APP1 XMP
WebP      EXIF UserComment (UNICODE)     in XMP (``sdmark:record``)   XMP chunk
========  =============================  ===========================  ==========================
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Mapping
from xml.sax.saxutils import escape, quoteattr

from PIL import Image, PngImagePlugin

from sdmark.core.records import ProvenanceRecord, StageRecord

DIGITAL_SOURCE_TYPE_BASE = "http://cv.iptc.org/newscodes/digitalsourcetype/"
TRAINED_ALGORITHMIC_MEDIA = DIGITAL_SOURCE_TYPE_BASE + "trainedAlgorithmicMedia"
SDMARK_NS = "https://sdmark.dev/ns/1.0/"
_NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "sdmark": SDMARK_NS,
}
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_UNICODE_PREFIX = b"UNICODE\x00"
_ASCII_PREFIX = b"ASCII\x00\x00\x00"
PNG_XMP_KEY = "XML:com.adobe.xmp"
PNG_RECORD_KEY = "sdmark"


def a1111_parameters(generation: dict[str, Any], software: str, stages: Sequence[StageRecord] = (),
                     kinds: Mapping[str, str] | None = None) -> str:
    """The ``parameters`` text that AUTOMATIC1111, ComfyUI readers and civitai parse.

    ``Size`` is the generation size, as A1111 writes it; an ``upscale`` that ran later is described
    with A1111's own keys (``stages``: the image's provenance entries): ``Hires upscale``/``Hires
    upscaler`` for one in latent space, ``Postprocess upscale to``/``Postprocess upscaler`` (its
    Extras tab) for one on the decoded image. Several upscales of one kind become one entry: their
    factors multiplied (hires) or the last size (postprocess), with their upscalers joined by " + ".
    A resizing stage is any stage of kind ``resize`` in ``kinds`` (:func:`sdmark.core.results.stage_kinds`),
    whatever it is called; without ``kinds``, sdmark's own ``upscale``.
    """
    lines = [generation.get("prompt", "")]
    if generation.get("negative_prompt"):
        lines.append(f"Negative prompt: {generation['negative_prompt']}")
    fields = {
        "Steps": generation.get("steps"),
        "Sampler": generation.get("sampler"),
        "CFG scale": generation.get("guidance_scale"),
        "Seed": generation.get("seed"),
        "Size": f"{generation.get('width')}x{generation.get('height')}",
        "Model": generation.get("model"),
        **_upscale_fields(stages, kinds),
        "Version": software,
    }
    lines.append(", ".join(f"{key}: {_a1111_value(value)}" for key, value in fields.items() if value is not None))
    return "\n".join(lines)


def _upscale_fields(stages: Sequence[StageRecord], kinds: Mapping[str, str] | None) -> dict[str, Any]:
    from sdmark.core.results import RESIZE, ResizeResult, entries_of_kind

    # Without a runtime's kinds, sdmark's own resizing stage is the one to read.
    resizing = entries_of_kind(stages, RESIZE, {"upscale": RESIZE} if kinds is None else kinds)
    hires = False
    hires_factor: float | None = 1.0
    hires_by: list[str] = []
    post_by: list[str] = []
    post_size = None
    for entry in resizing:
        resized = ResizeResult.from_result(entry.result)
        if resized is None:
            continue
        if entry.phase == "after_denoise":
            before, after = resized.input_size or (0, 0), resized.output_size
            hires = True
            hires_factor = hires_factor * after[0] / before[0] if before[0] and hires_factor else None
            hires_by += [resized.backend] if resized.backend else []
        else:
            post_size = "x".join(str(v) for v in resized.output_size)
            post_by += [resized.backend] if resized.backend else []
    fields: dict[str, Any] = {}
    if hires:
        fields["Hires upscale"] = hires_factor
        fields["Hires upscaler"] = " + ".join(hires_by) or None
    if post_size:
        fields["Postprocess upscale to"] = post_size
        fields["Postprocess upscaler"] = " + ".join(post_by) or None
    return fields


def _a1111_value(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    # A1111 quotes values that contain its separators.
    return json.dumps(text) if any(ch in text for ch in ",:\n") else text


def build_xmp(record: ProvenanceRecord, digital_source_type: str | None) -> str:
    """An XMP packet with the IPTC digital source type (when known) and our JSON record."""
    props = [f"xmp:CreatorTool={quoteattr(record.software)}"]
    if digital_source_type:
        props.append(f"Iptc4xmpExt:DigitalSourceType={quoteattr(digital_source_type)}")
    namespaces = " ".join(f'xmlns:{prefix}="{uri}"' for prefix, uri in _NS.items() if prefix not in ("x", "rdf"))
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        f'  <rdf:Description rdf:about="" {namespaces}\n   ' + "\n   ".join(props) + ">\n"
        f"   <sdmark:record>{escape(record.to_json())}</sdmark:record>\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>'
    )


def parse_xmp(packet: str | bytes | None) -> dict[str, Any]:
    """Read the digital source type, creator tool and our record (if any) from an XMP packet."""
    result: dict[str, Any] = {"digital_source_type": None, "creator_tool": None, "record": None}
    if not packet:
        return result
    if isinstance(packet, bytes):
        packet = packet.decode("utf-8", errors="replace")
    start = packet.find("<x:xmpmeta")
    end = packet.rfind("</x:xmpmeta>")
    if start < 0 or end < 0:
        return result
    try:
        root = ET.fromstring(packet[start : end + len("</x:xmpmeta>")])
    except ET.ParseError:
        return result
    for desc in root.iter(f"{{{_NS['rdf']}}}Description"):
        for key, prefix, local in (
            ("digital_source_type", "Iptc4xmpExt", "DigitalSourceType"),
            ("creator_tool", "xmp", "CreatorTool"),
        ):
            qname = f"{{{_NS[prefix]}}}{local}"
            value = desc.get(qname)
            if value is None:
                child = desc.find(qname)
                value = child.text if child is not None else None
            if value and result[key] is None:
                result[key] = value.strip()
        record = desc.find(f"{{{SDMARK_NS}}}record")
        if record is not None and record.text and result["record"] is None:
            try:
                result["record"] = json.loads(record.text)
            except json.JSONDecodeError:
                pass
    return result


def _user_comment(text: str) -> bytes:
    return _UNICODE_PREFIX + text.encode("utf-16-be")


def _read_user_comment(raw: Any) -> str | None:
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, bytes) or len(raw) < 8:
        return None
    prefix, body = raw[:8], raw[8:]
    if prefix == _UNICODE_PREFIX:
        if body[:2] == b"\xff\xfe":
            return body[2:].decode("utf-16-le", errors="replace")
        if body[:2] == b"\xfe\xff":
            body = body[2:]
        # Some writers use little-endian without a BOM; ASCII text reveals the byte order.
        little = len(body) >= 2 and body[0] != 0 and body[1] == 0
        return body.decode("utf-16-le" if little else "utf-16-be", errors="replace")
    return body.decode("utf-8" if prefix == _ASCII_PREFIX else "latin-1", errors="replace").rstrip("\x00")


def save_with_metadata(
    image: Image.Image,
    path: Path,
    fmt: str,
    *,
    parameters: str | None,
    record: ProvenanceRecord,
    xmp: str,
    extra_text: dict[str, str] | None = None,
    quality: int = 95,
) -> None:
    """Encode ``image`` to ``path`` as ``fmt`` (PNG, JPEG or WEBP) with every piece of metadata."""
    fmt = fmt.upper()
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        for key, value in (extra_text or {}).items():
            info.add_text(key, value)
        if parameters:
            info.add_text("parameters", parameters)
        info.add_itxt(PNG_RECORD_KEY, record.to_json())
        info.add_itxt(PNG_XMP_KEY, xmp)
        image.save(path, "PNG", pnginfo=info)
        return
    if fmt not in ("JPEG", "WEBP"):
        raise ValueError(f"unsupported output format {fmt!r}; use png, jpeg or webp")
    exif = Image.Exif()
    if parameters:
        exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = _user_comment(parameters)
    kwargs: dict[str, Any] = {"quality": quality, "exif": exif.tobytes(), "xmp": xmp.encode("utf-8")}
    if fmt == "JPEG":
        kwargs["subsampling"] = 0 if quality >= 90 else 2
        if image.mode not in ("RGB", "L"):
            image = _flatten(image)
    image.save(path, fmt, **kwargs)


def _flatten(image: Image.Image) -> Image.Image:
    """JPEG has no alpha: composite on white, like browsers show transparent pixels."""
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def read_metadata(image: Image.Image) -> dict[str, Any]:
    """What an opened image carries: ``parameters``, our ``record``, XMP fields, other text chunks.

    Works on PNG, JPEG and WebP as Pillow opened them (before any conversion).
    """
    info = image.info
    parameters = info.get("parameters")
    if parameters is None:
        try:
            parameters = _read_user_comment(image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT))
        except Exception:  # malformed EXIF must not make the image unreadable
            parameters = None
    packet = info.get(PNG_XMP_KEY) or info.get("xmp")
    xmp = parse_xmp(packet)
    record = xmp["record"]
    if record is None and isinstance(info.get(PNG_RECORD_KEY), str):
        try:
            record = json.loads(info[PNG_RECORD_KEY])
        except json.JSONDecodeError:
            record = None
    text = {
        key: value
        for key, value in info.items()
        if isinstance(value, str) and key not in ("parameters", PNG_XMP_KEY, PNG_RECORD_KEY)
    }
    return {
        "parameters": parameters,
        "record": record,
        "digital_source_type": xmp["digital_source_type"],
        "creator_tool": xmp["creator_tool"],
        "xmp": packet.decode("utf-8", "replace") if isinstance(packet, bytes) else packet,
        "text": text,
    }


FOREIGN_VALUE_LIMIT = 16 * 1024
"""Longest text value (in characters) that an input's own metadata may carry into an output."""
FOREIGN_TOTAL_LIMIT = 64 * 1024
"""Most text (in characters, all keys together) that an input's metadata may carry into an output."""
FOREIGN_PREFIX = "source:"
"""What an input's text key is renamed with in the output, so it never reads as sdmark's own."""
SOURCE_RECORD_LIMIT = 64 * 1024
"""Largest sdmark record of an input (as JSON) that a processed image's record quotes."""


def foreign_text(metadata: dict[str, Any], keep: bool) -> tuple[dict[str, str], dict[str, Any] | None]:
    """What an input's own text metadata becomes in a processed output, and what its record says.

    ``metadata`` is :func:`read_metadata`'s result. Text that sdmark did not write (other tools'
    chunks, and an A1111 ``parameters`` text: anyone can write a fake prompt) is dropped unless
    ``keep``; kept text is renamed ``source:KEY`` (so no reader takes it for sdmark's ``parameters``),
    and values over :data:`FOREIGN_VALUE_LIMIT`, or past :data:`FOREIGN_TOTAL_LIMIT` in all, are
    left out. The second value, for the record (``None`` when the input had no text), lists every
    key found, which were kept under which name, and why any was left out.
    """
    found: dict[str, str] = {}
    if isinstance(metadata.get("parameters"), str):
        found["parameters"] = metadata["parameters"]
    found.update({key: value for key, value in (metadata.get("text") or {}).items() if isinstance(value, str)})
    if not found:
        return {}, None
    kept: dict[str, str] = {}
    kept_as: dict[str, str] = {}
    omitted: dict[str, str] = {}
    total = 0
    for key, value in found.items():
        name = _clean_key(FOREIGN_PREFIX + key)
        if not keep:
            omitted[key] = "not kept (process --keep-metadata keeps it, renamed)"
        elif len(value) > FOREIGN_VALUE_LIMIT:
            omitted[key] = f"{len(value)} characters, over the {FOREIGN_VALUE_LIMIT} limit"
        elif total + len(value) > FOREIGN_TOTAL_LIMIT:
            omitted[key] = f"over the {FOREIGN_TOTAL_LIMIT}-character limit for all kept text"
        else:
            kept[name] = value
            kept_as[_clean_key(key)] = name
            total += len(value)
    summary = {
        "found": [_clean_key(key) for key in found],
        "kept": kept_as,
        "omitted": {_clean_key(key): reason for key, reason in omitted.items()},
        "note": "text the input carried, not written by sdmark: an unverified claim of the input. Kept text "
                "is written as PNG text chunks named source:KEY (JPEG and WebP outputs carry no text chunks)",
    }
    return kept, summary


def _clean_key(key: str) -> str:
    """A key as PNG allows it (1-79 Latin-1 characters) and short enough to quote in a record."""
    cleaned = "".join(ch if " " <= ch <= "~" or "\xa1" <= ch <= "\xff" else "?" for ch in key)
    return cleaned[:79] or "?"


DECLARED_VALUE_LIMIT = 256
"""Longest digital source type (an IPTC URI) that a processed record quotes from its input."""
DECLARED_NOTE = ("declared by the input's own metadata (its sdmark text record, its XMP), not checked: "
                 "anyone can write these")


def declared_by_input(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """What an input's own metadata claims about it, for a processed image's record, marked unverified.

    The input's sdmark record (bounded, :func:`source_record`) and the IPTC digital source type of
    its XMP are quoted here and nowhere else: a processed image never re-declares them as its own
    (a plugin that verifies the input's credentials adds what they prove, ``source.credentials``).
    """
    declared: dict[str, Any] = {}
    record = source_record(metadata)
    if record is not None:
        declared["record"] = record
    source_type = metadata.get("digital_source_type")
    if isinstance(source_type, str) and source_type:
        declared["digital_source_type"] = (source_type if len(source_type) <= DECLARED_VALUE_LIMIT else
                                           source_type[:DECLARED_VALUE_LIMIT] + "... (cut)")
    if not declared:
        return None
    return declared | {"verified": False, "note": DECLARED_NOTE}


def source_record(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The input's own sdmark record to quote in a processed image's record, if it is small enough.

    A record over :data:`SOURCE_RECORD_LIMIT` bytes of JSON is replaced by a note of its size: an
    input may carry anything, and a processed record must not grow with it.
    """
    record = metadata.get("record")
    if not isinstance(record, dict):
        return None
    size = len(json.dumps(record, ensure_ascii=False))
    if size > SOURCE_RECORD_LIMIT:
        return {"omitted": f"the input's record is {size} bytes, over the {SOURCE_RECORD_LIMIT}-byte limit"}
    return record
