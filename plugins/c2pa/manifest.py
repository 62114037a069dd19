"""The C2PA manifest definition for one written image, built from its provenance record.

``generate``: a ``c2pa.created`` action with the IPTC digital source type
``trainedAlgorithmicMedia``, sdmark as software agent and the model id, then one action per stage
that ran. ``process``: ``c2pa.opened`` on the input (the parent ingredient), then the stages as
edit actions. When a watermark stage ran, its action is ``c2pa.watermarked`` and a
``c2pa.soft-binding`` assertion names the scheme and payload, so the credentials can be found
again from the pixels alone. The whole sdmark record goes in a ``dev.sdmark.record`` assertion.

Pure data: nothing here imports ``c2pa``.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from sdmark.core.metadata import TRAINED_ALGORITHMIC_MEDIA
from sdmark.core.results import RESIZE, SAFETY, WATERMARK, SafetyVerdict
from sdmark.core.records import ProvenanceRecord, StageRecord

RECORD_LABEL = "dev.sdmark.record"
SOFT_BINDING_LABEL = "c2pa.soft-binding"
FINGERPRINT_LABEL = "c2pa.soft-binding"
"""The second soft-binding assertion (C2PA numbers repeated labels ``__1``, ``__2``...): the content fingerprint."""
ACTIONS_LABEL = "c2pa.actions.v2"
PARENT_ID = "parent"
SOFT_BINDING_ALG_PREFIX = "dev.sdmark.watermark."
# Standard C2PA actions by stage kind (sdmark.core.results), whatever the stage is called; other
# stages get an edit (when they change pixels) or a custom action in sdmark's namespace.
KIND_ACTIONS = {
    WATERMARK: "c2pa.watermarked",
    RESIZE: "c2pa.resized",
    SAFETY: "dev.sdmark.safety_checked",
}
BUILTIN_KINDS = {"watermark": WATERMARK, "upscale": RESIZE, "safety": SAFETY}
"""The kinds of sdmark's own stages, for callers that build a manifest without a runtime."""
MIME_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_HEX = re.compile(r"^(0x)?[0-9a-fA-F]+$")


@dataclass(frozen=True)
class SoftBinding:
    """What the watermark stage embedded: its scheme and payload (as the stage reported them)."""

    scheme: str
    payload: str

    @property
    def alg(self) -> str:
        return SOFT_BINDING_ALG_PREFIX + self.scheme


def payload_key(payload: Any) -> str:
    """The canonical text of a watermark payload, so a detection and a record compare equal."""
    text = str(payload).strip()
    return text.lower().removeprefix("0x") if _HEX.match(text) and len(text) % 2 == 0 else text


def soft_binding(record: ProvenanceRecord, watermark_stages: Iterable[str] = ("watermark",)) -> SoftBinding | None:
    """The watermark that the record says was embedded last, if any stage embedded one.

    ``watermark_stages`` names the stages that embed watermarks (``Stage.embeds_watermark``); their
    result carries ``payload`` and ``scheme`` (or ``method``).
    """
    names = set(watermark_stages)
    for entry in reversed(record.stages):
        result = entry.result or {}
        payload = result.get("payload")
        if entry.stage not in names or payload in (None, "") or result.get("embedded") is False:
            continue
        scheme = result.get("scheme") or result.get("method") or entry.options.get("scheme") or entry.options.get("method") or entry.stage
        return SoftBinding(scheme=str(scheme), payload=payload_key(payload))
    return None


def build_manifest(record: ProvenanceRecord, *, title: str, fmt: str, software_version: str,
                   source_format: str | None = None, stage_flags: dict[str, bool] | None = None,
                   watermark_stages: Iterable[str] = ("watermark",),
                   fingerprint: dict[str, Any] | None = None,
                   stage_kinds: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The manifest definition (``c2pa.Builder.from_json`` input) for an image with ``record``.

    ``fmt`` is the Pillow format written (PNG, JPEG, WEBP); ``source_format`` the input's format in
    ``process`` (a change of format adds ``c2pa.transcoded``); ``stage_flags`` maps stage names to
    whether they change pixels, for stages sdmark has no standard action for;
    ``watermark_stages`` the stages whose payload becomes the soft binding; ``fingerprint`` the
    content fingerprint of the pixels as written (:meth:`Fingerprint.to_json`), signed as a second
    soft-binding assertion so a recovered manifest can be compared with the image under test;
    ``stage_kinds`` the kind of each stage (:func:`sdmark.core.results.stage_kinds`; sdmark's own
    stages' when not given), which picks the standard action.
    """
    kinds = BUILTIN_KINDS if stage_kinds is None else stage_kinds
    agent = {"name": "sdmark", "version": software_version}
    actions: list[dict[str, Any]] = []
    if record.kind == "generated":
        generation = record.generation or {}
        actions.append({
            "action": "c2pa.created",
            "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
            "softwareAgent": agent,
            "description": f"generated by {generation.get('model') or 'a diffusion model'} from a text prompt",
            "parameters": cbor_safe({"model": generation.get("model"), "safety": record.safety}),
        })
    else:
        actions.append({
            "action": "c2pa.opened",
            "softwareAgent": agent,
            "parameters": {"ingredientIds": [PARENT_ID]},
        })
    watermark_stages = set(watermark_stages)
    for entry in record.stages:
        actions.append(stage_action(entry, agent, (stage_flags or {}).get(entry.stage, True), entry.stage in watermark_stages,
                                    kinds.get(entry.stage)))
    if record.kind == "processed" and source_format and source_format.upper() != fmt.upper():
        actions.append({"action": "c2pa.transcoded", "softwareAgent": agent,
                        "description": f"re-encoded from {source_format} to {fmt}"})
    assertions: list[dict[str, Any]] = [{"label": ACTIONS_LABEL, "data": {"actions": actions}}]
    binding = soft_binding(record, watermark_stages)
    if binding is not None:
        assertions.append({
            "label": SOFT_BINDING_LABEL,
            "data": {
                "alg": binding.alg,
                "name": f"sdmark {binding.scheme} invisible watermark",
                "blocks": [{"scope": {}, "value": _payload_value(binding.payload)}],
                "alg_params": {"scheme": binding.scheme, "payload": binding.payload},
            },
        })
    if fingerprint is not None:
        from sdmark.plugins.c2pa.fingerprint import ALG

        assertions.append({
            "label": FINGERPRINT_LABEL,
            "data": {
                "alg": ALG,
                "name": "sdmark content fingerprint (PDQ hash and greyscale thumbnail of the pixels as signed)",
                "blocks": [{"scope": {}, "value": base64.b64encode(bytes.fromhex(fingerprint["pdq"])).decode("ascii")}],
                "alg_params": {"fingerprint": json.dumps(fingerprint, separators=(",", ":"))},
            },
        })
    # The record as JSON text: the SDK's JSON-to-CBOR step turns arrays of numbers into byte
    # strings (and truncates them), so structured values would not come back as written.
    assertions.append({"label": RECORD_LABEL, "data": {"schema": record.schema, "json": record.to_json()}})
    return {
        "claim_generator_info": [agent],
        "title": title,
        "format": MIME_TYPES.get(fmt.upper(), "application/octet-stream"),
        "assertions": assertions,
    }


def stage_action(entry: StageRecord, agent: dict[str, str], changes_pixels: bool = True,
                 embeds_watermark: bool = False, kind: str | None = None) -> dict[str, Any]:
    """One stage's entry of the record as a C2PA action (name, summary, options and result)."""
    result = {k: v for k, v in (entry.result or {}).items() if k != "summary"}
    name = KIND_ACTIONS.get(kind or "") or ("c2pa.edited" if changes_pixels else f"dev.sdmark.{_slug(entry.stage)}")
    if embeds_watermark:
        # A stage that found a mark and left it (watermark:existing=keep) embedded nothing.
        name = "dev.sdmark.watermark_kept" if result.get("embedded") is False else "c2pa.watermarked"
    if kind == SAFETY and SafetyVerdict.from_result(result).changed_pixels:
        name = "c2pa.filtered"  # the policy blurred, pixelated, blacked out or replaced the image
    action: dict[str, Any] = {
        "action": name,
        "softwareAgent": agent,
        "parameters": cbor_safe({"stage": entry.stage, "phase": entry.phase, "options": entry.options, "result": result}),
    }
    summary = (entry.result or {}).get("summary")
    action["description"] = f"{entry.stage}: {summary}" if summary else f"sdmark stage {entry.stage}"
    return action


def cbor_safe(value: Any) -> Any:
    """Lists of numbers become JSON text: the SDK would store them as (truncated) byte strings."""
    if isinstance(value, dict):
        return {str(k): cbor_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return json.dumps(list(value))
        return [cbor_safe(v) for v in value]
    return value


def _payload_value(payload: str) -> str:
    """The soft-binding block value: base64 of the payload bytes (hex payloads as their bytes)."""
    raw = bytes.fromhex(payload) if _HEX.match(payload) and len(payload) % 2 == 0 else payload.encode("utf-8")
    return base64.b64encode(raw).decode("ascii")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or "stage"
