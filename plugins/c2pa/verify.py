"""Reading and judging Content Credentials for ``sdmark verify``.

``status`` is one of:

``valid``      the manifest is intact and its signer chains to one of the trust anchors given
``untrusted``  the manifest is intact, but its signer is not under any anchor given (``--trust``)
``tampered``   the file (pixels or metadata the manifest covers) changed after signing
``invalid``    anything else the SDK rejects (expired or malformed certificate, bad signature)

A file without a manifest whose watermark payload is in the registry gets the registered manifest
back (``recovered_from_registry: true``). Its signature is checked as usual; that its hard binding
(the file hash) no longer matches is expected, since the file was re-encoded or stripped, and is
reported as ``binding: "watermark"`` instead of ``tampered``.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

from sdmark.plugins.c2pa import settings
from sdmark.plugins.c2pa.manifest import RECORD_LABEL, SOFT_BINDING_LABEL, payload_key
from sdmark.plugins.c2pa.registry import Entry, open_registry
from sdmark.plugins.c2pa.sign import sniff_mime

UNTRUSTED = "signingCredential.untrusted"
# Codes that say the asset's bytes are not the ones signed (as opposed to a problem with the signer).
HARD_BINDING_MISMATCH = {"assertion.dataHash.mismatch", "assertion.boxesHash.mismatch", "assertion.bmffHash.mismatch",
                         "assertion.collectionHash.mismatch"}
# A detection counts when its band says so (the watermark plugin's bands), or by p-value alone.
POSITIVE_BANDS = {"very likely", "likely"}
POSITIVE_P_VALUE = 1e-6
READABLE = {"image/png", "image/jpeg", "image/webp", "image/tiff", "image/gif", "image/avif", "image/heic"}
_contexts: dict[tuple, Any] = {}


def reading_context() -> tuple[Any, list[dict[str, str]]]:
    """The SDK context for reading (offline, trust anchors loaded) and a description of the anchors."""
    import c2pa

    from sdmark.plugins.c2pa.identity import describe_certificate

    paths = tuple(settings.trust_anchor_paths())
    key = (os.getpid(), paths)
    if key not in _contexts:
        config: dict[str, Any] = {"verify": {"verify_trust": True, "remote_manifest_fetch": False}}
        if paths:
            config["trust"] = {"user_anchors": "".join(settings.read_anchor(p) for p in paths)}
        anchors = [{"path": str(p), "subject": describe_certificate(p)["subject"]} for p in paths]
        _contexts.clear()
        _contexts[key] = (c2pa.Context.from_dict(config), anchors)
    return _contexts[key]


def inspect_credentials(path: Path, detections: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The ``content_credentials`` part of a verify report for the file at ``path``."""
    import c2pa

    context, anchors = reading_context()
    mime = sniff_mime(path)
    found: dict[str, Any] = {"present": False, "status": None, "recovered_from_registry": False, "trust_anchors": anchors}
    if mime in READABLE:
        try:
            with open(path, "rb") as stream:
                reader = c2pa.Reader.try_create(mime, stream, context=context)
                if reader is not None:
                    store = json.loads(reader.json())
                    found.update(describe_store(store), present=True, binding="embedded", record=_record(store))
                    reader.close()
        except c2pa.C2paError as exc:
            # A damaged manifest is a finding, not a crash: the image itself was readable.
            found.update(present=True, status="invalid", error=f"cannot read the C2PA manifest: {exc}")
    binding = found.get("soft_binding")
    if binding and detections:
        found["soft_binding_matches_watermark"] = any(
            payload_key(d.get("payload")) == binding["payload"] for d in _positive(detections))
    if not found["present"] and detections:
        found.update(_recover(detections, context))
    found["summary"] = summary(found)
    return found


def _positive(detections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Detections that found a mark and read a payload (verify also reports weak or absent marks)."""
    found = []
    for detection in detections:
        if detection.get("payload") in (None, ""):
            continue
        band = detection.get("band")
        p_value = detection.get("p_value")
        if band in POSITIVE_BANDS or (not band and isinstance(p_value, (int, float)) and p_value <= POSITIVE_P_VALUE):
            found.append(detection)
    return found


def _recover(detections: list[dict[str, Any]], context: Any) -> dict[str, Any]:
    """Look the detected payloads up in the registry and read the manifest stored there.

    A payload stored for several signed images (a fixed message, or an id the user reused) cannot
    say which one this is: nothing is recovered then, and the report says how many matched.
    """
    import c2pa

    registry_file = settings.registry_path()
    if registry_file is None:
        return {}
    try:
        registry = open_registry(registry_file)
        lookups = [(detection, registry.lookup(payload_key(detection["payload"]))) for detection in _positive(detections)]
    except Exception as exc:  # a broken registry must not stop verify: report it for this image
        return {"registry_error": f"{type(exc).__name__}: {exc}"}
    for detection, entries in lookups:
        if not entries:
            continue
        if len({entry.manifest_label for entry in entries}) > 1:
            return {"registry_matches": len(entries),
                    "note": f"watermark payload {entries[0].payload} is registered for {len(entries)} signed images; "
                            "it cannot identify one"}
        entry = entries[0]
        try:
            reader = c2pa.Reader("application/c2pa", io.BytesIO(entry.manifest), context=context)
            store = json.loads(reader.json())
            reader.close()
        except c2pa.C2paError as exc:
            return {"recovered_from_registry": True, "status": "invalid", "error": f"registered manifest unreadable: {exc}"}
        described = describe_store(store, expect_hard_binding_mismatch=True)
        described.update(
            recovered_from_registry=True, binding="watermark", registry=str(registry_file),
            soft_binding_matches_watermark=True,
            registry_entry=_entry_summary(entry), record=_record(store),
        )
        return described
    return {}


def _entry_summary(entry: Entry) -> dict[str, Any]:
    return {"title": entry.title, "manifest": entry.manifest_label, "signed": entry.created, "file_sha256": entry.file_sha256,
            "scheme": entry.scheme, "payload": entry.payload}


def describe_store(store: dict[str, Any], *, expect_hard_binding_mismatch: bool = False) -> dict[str, Any]:
    """Status, signer, actions, digital source type and soft binding of a manifest store (Reader JSON)."""
    manifests = store.get("manifests") or {}
    label = store.get("active_manifest")
    active = manifests.get(label) or {}
    results = (store.get("validation_results") or {}).get("activeManifest") or {}
    failures = [f.get("code") for f in results.get("failure") or [] if f.get("code")]
    if not results and store.get("validation_status"):
        failures = [f.get("code") for f in store["validation_status"] if f.get("code")]
    if expect_hard_binding_mismatch:
        failures = [code for code in failures if code not in HARD_BINDING_MISMATCH]
    state = store.get("validation_state")
    trusted = state == "Trusted" or any(s.get("code") == "signingCredential.trusted" for s in results.get("success") or [])
    if any(code.endswith(".mismatch") for code in failures):
        status = "tampered"
    elif any(code != UNTRUSTED for code in failures):
        status = "invalid"
    elif trusted:
        status = "valid"
    else:
        status = "untrusted"
    signature = active.get("signature_info") or {}
    actions = _actions(active)
    source_type, inherited = _digital_source_type(manifests, label)
    described: dict[str, Any] = {
        "status": status,
        "trusted": trusted and status == "valid",
        "validation_state": state,
        "failures": failures,
        "manifest": label,
        "claim_generator": _generator(active),
        "signer": {k: v for k, v in {
            "common_name": signature.get("common_name"), "issuer": signature.get("issuer"),
            "alg": signature.get("alg"), "serial": signature.get("cert_serial_number"), "time": signature.get("time"),
        }.items() if v},
        "actions": actions,
        "digital_source_type": source_type,
        "ingredients": [{k: ing.get(k) for k in ("title", "relationship", "format") if ing.get(k)} | (
            {"manifest": ing["active_manifest"]} if ing.get("active_manifest") else {})
            for ing in active.get("ingredients") or []],
    }
    if inherited:
        described["digital_source_type_inherited"] = True
    binding = _soft_binding(active)
    if binding:
        described["soft_binding"] = binding
    return described


def _actions(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    actions = []
    for assertion in manifest.get("assertions") or []:
        if assertion.get("label", "").startswith("c2pa.actions"):
            for action in (assertion.get("data") or {}).get("actions") or []:
                agent = action.get("softwareAgent")
                entry = {"action": action.get("action")}
                if action.get("description"):
                    entry["description"] = action["description"]
                if action.get("digitalSourceType"):
                    entry["digital_source_type"] = action["digitalSourceType"]
                if isinstance(agent, dict) and agent.get("name"):
                    entry["software_agent"] = f"{agent['name']} {agent.get('version', '')}".strip()
                elif isinstance(agent, str):
                    entry["software_agent"] = agent
                actions.append(entry)
    return actions


def _digital_source_type(manifests: dict[str, Any], label: str | None) -> tuple[str | None, bool]:
    """The digital source type declared by the active manifest, else by its parents (inherited)."""
    seen: set[str] = set()
    inherited = False
    while label and label not in seen:
        seen.add(label)
        manifest = manifests.get(label) or {}
        for action in _actions(manifest):
            if action.get("digital_source_type"):
                return action["digital_source_type"], inherited
        parents = [i.get("active_manifest") for i in manifest.get("ingredients") or []
                   if i.get("relationship") == "parentOf" and i.get("active_manifest")]
        label, inherited = (parents[0] if parents else None), True
    return None, False


def _generator(manifest: dict[str, Any]) -> str | None:
    info = manifest.get("claim_generator_info") or []
    if info and isinstance(info[0], dict):
        return f"{info[0].get('name', '')} {info[0].get('version', '')}".strip() or None
    return manifest.get("claim_generator")


def _soft_binding(manifest: dict[str, Any]) -> dict[str, Any] | None:
    for assertion in manifest.get("assertions") or []:
        if assertion.get("label") == SOFT_BINDING_LABEL:
            data = assertion.get("data") or {}
            params = data.get("alg_params") or {}
            return {"alg": data.get("alg"), "scheme": params.get("scheme"),
                    "payload": payload_key(params["payload"]) if params.get("payload") is not None else None}
    return None


def _record(store: dict[str, Any]) -> dict[str, Any] | None:
    """sdmark's own record from the active manifest (prompt, seed, stages), when it has one."""
    active = (store.get("manifests") or {}).get(store.get("active_manifest")) or {}
    for assertion in active.get("assertions") or []:
        if assertion.get("label") == RECORD_LABEL:
            try:
                return json.loads((assertion.get("data") or {}).get("json") or "null")
            except json.JSONDecodeError:
                return None
    return None


def summary(found: dict[str, Any]) -> str:
    """One line for the human output of ``verify``."""
    if not found.get("present") and not found.get("recovered_from_registry"):
        return "none"
    if found.get("error"):
        return f"{found.get('status')}: {found['error']}"
    parts = [found.get("status") or "?"]
    signer = found.get("signer") or {}
    if signer.get("common_name"):
        parts.append(f"signed by {signer['common_name']}" + (f" ({signer['issuer']})" if signer.get("issuer") else ""))
    if found.get("status") == "untrusted":
        parts.append("signer not under any trust anchor (--trust CA.pem)")
    source_type = found.get("digital_source_type")
    if source_type:
        parts.append(source_type.rsplit("/", 1)[-1])
    if found.get("recovered_from_registry"):
        parts.append("recovered from the registry through the watermark")
    return "; ".join(parts)


__all__ = ["inspect_credentials", "describe_store", "reading_context"]
