"""The manifest definition built from a provenance record, and the registry store, without signing."""

from __future__ import annotations

import json

from sdmark.core.metadata import TRAINED_ALGORITHMIC_MEDIA
from sdmark.core.records import ProvenanceRecord
from sdmark.plugins.c2pa.manifest import build_manifest, cbor_safe, payload_key, soft_binding


def _generated() -> ProvenanceRecord:
    record = ProvenanceRecord(kind="generated", safety="checked",
                              generation={"prompt": "a cat", "seed": 1, "model": "runwayml/stable-diffusion-v1-5"})
    record.add("safety", "process", {"policy": "blur"}, {"verdict": "flagged", "action": "blurred", "summary": "FLAGGED -> blurred"})
    record.add("caption", "process", {"text": "AI"}, {"summary": "AI"})
    record.add("upscale", "process", {"scale": 2}, {"size": [1024, 1024]})
    record.add("watermark", "process", {"method": "dwtDctSvd"}, {"scheme": "sdmark-dwtDctSvd", "payload": "0xAB12", "summary": "ok"})
    return record


def test_generated_manifest_actions_and_soft_binding():
    manifest = build_manifest(_generated(), title="00000-1.png", fmt="PNG", software_version="9.9")
    assert manifest["claim_generator_info"] == [{"name": "sdmark", "version": "9.9"}]
    assert manifest["format"] == "image/png" and manifest["title"] == "00000-1.png"
    actions = manifest["assertions"][0]["data"]["actions"]
    assert [a["action"] for a in actions] == ["c2pa.created", "c2pa.filtered", "c2pa.edited", "c2pa.resized", "c2pa.watermarked"]
    created = actions[0]
    assert created["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert created["parameters"]["model"] == "runwayml/stable-diffusion-v1-5"
    assert actions[1]["description"] == "safety: FLAGGED -> blurred"
    assert actions[3]["parameters"]["result"]["size"] == "[1024, 1024]"  # kept as text: see cbor_safe
    binding = next(a for a in manifest["assertions"] if a["label"] == "c2pa.soft-binding")["data"]
    assert binding["alg"] == "dev.sdmark.watermark.sdmark-dwtDctSvd"
    assert binding["alg_params"] == {"scheme": "sdmark-dwtDctSvd", "payload": "ab12"}
    assert binding["blocks"] == [{"scope": {}, "value": "qxI="}]
    record = next(a for a in manifest["assertions"] if a["label"] == "dev.sdmark.record")["data"]
    assert json.loads(record["json"])["generation"]["prompt"] == "a cat"


def test_processed_manifest_opens_the_parent_and_notes_transcoding():
    record = ProvenanceRecord(kind="processed", source={"name": "in.jpg", "format": "JPEG"})
    manifest = build_manifest(record, title="in.png", fmt="PNG", software_version="1", source_format="JPEG")
    actions = manifest["assertions"][0]["data"]["actions"]
    assert [a["action"] for a in actions] == ["c2pa.opened", "c2pa.transcoded"]
    assert actions[0]["parameters"] == {"ingredientIds": ["parent"]}
    assert "digitalSourceType" not in json.dumps(actions)
    assert not any(a["label"] == "c2pa.soft-binding" for a in manifest["assertions"])


def test_soft_binding_takes_the_last_embedded_mark_and_custom_watermark_stages():
    record = ProvenanceRecord(kind="processed")
    record.add("watermark", "process", {}, {"method": "dwtDct", "payload": "aa"})
    record.add("watermark", "process", {}, {"method": "dwtDctSvd", "payload": "bb"})
    record.add("watermark", "process", {}, {"method": "rivaGan", "payload": "cc", "embedded": False})
    assert (soft_binding(record).scheme, soft_binding(record).payload) == ("dwtDctSvd", "bb")
    record.add("mymark", "process", {}, {"scheme": "mine", "payload": "Hello"})
    assert soft_binding(record).payload == "bb"
    assert soft_binding(record, {"watermark", "mymark"}).payload == "Hello"


def test_payload_key_and_cbor_safe():
    assert payload_key("0xDEADbeef") == payload_key("deadbeef") == "deadbeef"
    assert payload_key(" StableDiffusionV1 ") == "StableDiffusionV1"
    assert payload_key("abc") == "abc"  # odd length: text, not hex
    assert cbor_safe({"a": [300, 2], "b": [{"c": [0.5]}], "d": [], "e": None, "f": ["x", 1]}) == {
        "a": "[300, 2]", "b": [{"c": "[0.5]"}], "d": [], "f": ["x", 1]}


