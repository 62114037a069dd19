"""Content Credentials end to end: sign real images with a local identity, verify, tamper, strip,
recover through the watermark registry; PNG, JPEG and WebP."""

from __future__ import annotations

import io
import itertools
import json
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("c2pa")

from sdmark.core.io import read_image  # noqa: E402
from sdmark.core.metadata import TRAINED_ALGORITHMIC_MEDIA  # noqa: E402
from sdmark.core.runtime import Runtime, hookimpl  # noqa: E402
from sdmark.core.stages import Stage, StageOptions, option  # noqa: E402
from sdmark.plugins.c2pa import set_signing_config, set_trust_anchors  # noqa: E402

FORMATS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


@pytest.fixture(autouse=True)
def c2pa_env(tmp_path, monkeypatch, isolate_c2pa):
    """Keys, registry and anchors in tmp paths; nothing from the developer's environment."""
    isolate_c2pa(monkeypatch, tmp_path)
    yield
    set_trust_anchors(None)
    set_signing_config(None)


@pytest.fixture
def identity(cli_runner, tmp_path) -> Path:
    """A local identity made by `sdmark keys init`; returns its folder (ca.pem is the anchor)."""
    runner, cli = cli_runner
    result = runner.invoke(cli, ["keys", "init", "--name", "Test Signer", "--org", "sdmark tests"])
    assert result.exit_code == 0, result.output
    return tmp_path / "keys"


def run_process(cli_runner, inputs, out: Path, *extra: str, chain: str = ""):
    runner, cli = cli_runner
    args = ["process", *map(str, inputs), "--chain", chain, "--no-safety", "-o", str(out), "--json", *extra]
    result = runner.invoke(cli, args)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result, lines


def inspect(path: Path, detections: list | None = None) -> dict:
    """What `sdmark verify` reports for ``path`` (through the verify hook, with given detections)."""
    loaded = read_image(path)
    report = {"path": str(path), "watermarked": bool(detections), "detections": detections or [], "error": None}
    runtime = Runtime.load()
    try:
        runtime.pm.hook.sdmark_inspect_image(path=loaded.path, image=loaded.image, metadata=loaded.metadata, report=report,
                                             runtime=runtime)
    finally:
        runtime.close_resources()
    return report


def action_names(credentials: dict) -> list[str]:
    return [a["action"] for a in credentials["actions"]]


# -- tampering helpers: change pixels but keep every other byte, the manifest included --------


def _reencoded(path: Path, fmt: str) -> bytes:
    image = Image.open(path).convert("RGB")
    pixels = image.load()
    for x in range(40):
        pixels[x, 10] = (255, 0, 0)
    buffer = io.BytesIO()
    kwargs = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {"quality": 95} if fmt == "WEBP" else {}
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_chunks(data: bytes):
    pos = 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        yield kind, data[pos:pos + 12 + length]
        pos += 12 + length


def _riff_chunks(data: bytes):
    pos = 12
    while pos < len(data):
        kind, length = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        size = 8 + length + (length & 1)
        yield kind, data[pos:pos + size]
        pos += size


def _jpeg_image_start(data: bytes) -> int:
    """Offset of the first segment that is not APPn/COM (tables, frame and scan follow)."""
    pos = 2
    while data[pos] == 0xFF and (0xE0 <= data[pos + 1] <= 0xEF or data[pos + 1] == 0xFE):
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    return pos


def tamper_pixels(path: Path) -> None:
    """Replace the image data of ``path`` with that of an edited copy; metadata bytes stay as they are."""
    data = path.read_bytes()
    if data.startswith(b"\x89PNG"):
        new = _reencoded(path, "PNG")
        idat = b"".join(chunk for kind, chunk in _png_chunks(new) if kind == b"IDAT")
        out, done = [data[:8]], False
        for kind, chunk in _png_chunks(data):
            if kind == b"IDAT":
                if not done:
                    out.append(idat)
                    done = True
            else:
                out.append(chunk)
        path.write_bytes(b"".join(out))
    elif data.startswith(b"\xff\xd8"):
        new = _reencoded(path, "JPEG")
        path.write_bytes(data[:_jpeg_image_start(data)] + new[_jpeg_image_start(new):])
    else:
        new = _reencoded(path, "WEBP")
        bitstream = next(chunk for kind, chunk in _riff_chunks(new) if kind in (b"VP8 ", b"VP8L"))
        body = b"".join(bitstream if kind in (b"VP8 ", b"VP8L") else chunk for kind, chunk in _riff_chunks(data))
        path.write_bytes(b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body)
    Image.open(path).load()  # still a valid image


def strip_metadata(path: Path, out: Path) -> Path:
    """What a platform does on upload: decode and re-encode, keeping the pixels only."""
    Image.open(path).convert("RGB").save(out, quality=90) if out.suffix == ".jpg" else Image.open(path).convert("RGB").save(out)
    return out


# -- a stand-in watermark stage, so registry recovery is tested without the real watermark ------


@dataclass(frozen=True)
class _TestMarkOptions(StageOptions):
    payload: str = option("", "fixed payload instead of the next in the sequence")


class _TestMark(Stage[_TestMarkOptions]):
    name = "testmark"
    description = "records a watermark payload, C0FFEE00, C0FFEE01, ... (test only; changes no pixels)"
    changes_pixels = False
    embeds_watermark = True
    issued = itertools.count()

    def process_one(self, item, context):
        payload = self.options.payload or f"C0FFEE{next(self.issued):02X}"
        return {"scheme": "testmark", "payload": payload, "bits": [1, 0, 1, 1], "summary": "marked"}


class _TestMarkPlugin:
    @hookimpl
    def sdmark_register_stages(self, register):
        register(_TestMark)


# -- tests -------------------------------------------------------------------------------------


def test_the_plugin_adds_the_keys_command_through_the_hook():
    from sdmark.cli.main import SdmarkGroup

    group = SdmarkGroup("sdmark-test")
    group.runtime = runtime = Runtime.load()
    runtime.register_commands(cli=group)
    assert {"init", "show"} <= set(group.commands["keys"].commands)


def test_keys_init_creates_a_c2pa_ready_identity(cli_runner, identity):
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    assert (identity / "signer.key").stat().st_mode & 0o777 == 0o600
    leaf, ca = x509.load_pem_x509_certificates((identity / "signer-chain.pem").read_bytes())
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert ExtendedKeyUsageOID.EMAIL_PROTECTION in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.key_identifier
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days > 20 * 365
    assert (identity / "ca.pem").read_bytes().strip() in (identity / "signer-chain.pem").read_bytes()
    runner, cli = cli_runner
    again = runner.invoke(cli, ["keys", "init"])
    assert again.exit_code == 2 and "--force" in again.stderr
    shown = json.loads(runner.invoke(cli, ["keys", "show", "--json"]).stdout)
    assert "Test Signer" in shown["signing"]["certificate"]["subject"]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_process_signs_and_verify_judges_trust(cli_runner, identity, photo_dir, tmp_path, fmt):
    result, lines = run_process(cli_runner, [photo_dir / "astronaut.png"], tmp_path / "out", "--format", fmt)
    assert result.exit_code == 0, result.output
    written = Path(lines[0]["path"])
    assert written.suffix == FORMATS[fmt]

    untrusted = inspect(written)["content_credentials"]
    assert untrusted["present"] and untrusted["status"] == "untrusted" and not untrusted["trusted"]
    assert untrusted["signer"]["common_name"] == "Test Signer"
    assert untrusted["claim_generator"].startswith("sdmark ")
    assert action_names(untrusted)[0] == "c2pa.opened"
    assert untrusted["ingredients"][0]["title"] == "astronaut.png"
    assert untrusted["ingredients"][0]["relationship"] == "parentOf"
    assert untrusted["digital_source_type"] is None  # a photo: we never claim it was generated

    set_trust_anchors([identity / "ca.pem"])
    trusted = inspect(written)["content_credentials"]
    assert trusted["status"] == "valid" and trusted["trusted"]
    assert trusted["trust_anchors"] == [{"path": str((identity / "ca.pem").resolve()), "subject": "O=sdmark tests,CN=Test Signer CA"}]


def test_other_anchor_is_untrusted(cli_runner, identity, photo_dir, tmp_path):
    runner, cli = cli_runner
    assert runner.invoke(cli, ["keys", "init", "--dir", str(tmp_path / "other")]).exit_code == 0
    _, lines = run_process(cli_runner, [photo_dir / "chelsea.png"], tmp_path / "out")
    set_trust_anchors([tmp_path / "other" / "ca.pem"])
    credentials = inspect(Path(lines[0]["path"]))["content_credentials"]
    assert credentials["status"] == "untrusted"
    assert "signingCredential.untrusted" in credentials["failures"]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_tampered_pixels_are_detected(cli_runner, identity, photo_dir, tmp_path, fmt):
    set_trust_anchors([identity / "ca.pem"])
    _, lines = run_process(cli_runner, [photo_dir / "coffee.jpg"], tmp_path / "out", "--format", fmt)
    path = Path(lines[0]["path"])
    assert inspect(path)["content_credentials"]["status"] == "valid"
    tamper_pixels(path)
    credentials = inspect(path)["content_credentials"]
    assert credentials["present"]
    assert credentials["status"] == "tampered", credentials
    assert any(code.endswith(".mismatch") for code in credentials["failures"])


def test_generate_manifest_says_trained_algorithmic_media(cli_runner, identity, tiny_model_dir, tmp_path):
    runner, cli = cli_runner
    result = runner.invoke(cli, ["generate", "a lighthouse at dusk", "--seed", "7", "--steps", "1", "-m", str(tiny_model_dir),
                                 "--chain", "", "--no-safety", "--size", "128x128", "-o", str(tmp_path / "gen"),
                                 "--format", "jpeg", "--json"])
    assert result.exit_code == 0, result.output
    path = Path(json.loads(result.stdout.splitlines()[0])["path"])
    set_trust_anchors([identity / "ca.pem"])
    report = inspect(path)
    credentials = report["content_credentials"]
    assert credentials["status"] == "valid"
    created = credentials["actions"][0]
    assert created["action"] == "c2pa.created"
    assert created["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA == credentials["digital_source_type"]
    assert created["software_agent"].startswith("sdmark ")
    assert str(tiny_model_dir) in created["description"]
    assert report["xmp_digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA
    assert report["parameters"].startswith("a lighthouse at dusk\n")

    # Processing a generated image keeps its credentials as the parent ingredient's manifest.
    _, lines = run_process(cli_runner, [path], tmp_path / "again", "--format", "png")
    again = inspect(Path(lines[0]["path"]))["content_credentials"]
    assert again["status"] == "valid"
    assert again["ingredients"][0]["manifest"] == credentials["manifest"]
    assert again["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA and again["digital_source_type_inherited"]
    assert action_names(again) == ["c2pa.opened", "c2pa.transcoded"]
    # Its valid, trusted credentials prove what it declares: the source type travels, the record is quoted as proven.
    proven = again["record"]["source"]["credentials"]
    assert proven["status"] == "valid" and proven["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA
    assert proven["record"]["generation"]["prompt"] == "a lighthouse at dusk" and proven["manifest"] == credentials["manifest"]
    assert "declared" not in again["record"]["source"] or "record" not in again["record"]["source"]["declared"]
    assert read_image(Path(lines[0]["path"])).metadata["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA


def test_a_forged_record_and_source_type_in_the_input_are_quoted_unverified_never_as_ours(
        cli_runner, identity, photos, tmp_path):
    """F4 of the attack review: a forged sdmark record in the input was quoted verbatim as
    ``source.record`` inside our signed manifest, and its unverified XMP source type re-declared."""
    from PIL import PngImagePlugin

    from sdmark.core.metadata import PNG_RECORD_KEY, build_xmp
    from sdmark.core.records import ProvenanceRecord

    capture = "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"

    def forge(path: Path, photo, prompt: str, source_type: str) -> None:
        forged = ProvenanceRecord(kind="generated", generation={"prompt": prompt, "seed": 1, "model": "the Ministry of Truth"})
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", build_xmp(forged, source_type))
        info.add_itxt(PNG_RECORD_KEY, forged.to_json())
        photo.save(path, pnginfo=info)

    source, small = tmp_path / "forged.png", tmp_path / "forged-small.png"
    forge(source, photos["chelsea"], "x" * 200_000, capture + "?" + "y" * 5000)
    forge(small, photos["coffee"], "a forged prompt", TRAINED_ALGORITHMIC_MEDIA)
    set_trust_anchors([identity / "ca.pem"])
    result, lines = run_process(cli_runner, [source, small], tmp_path / "out", "--format", "png")
    assert result.exit_code == 0, result.output
    for line in lines:
        written = Path(line["path"])
        credentials = inspect(written)["content_credentials"]
        assert credentials["status"] == "valid"  # our signature, over what we say the input declared
        signed_source = credentials["record"]["source"]
        assert "record" not in signed_source and "credentials" not in signed_source
        declared = signed_source["declared"]
        assert declared["verified"] is False and "not checked" in declared["note"]
        assert read_image(written).metadata["digital_source_type"] is None  # not re-declared, not even "AI"
        if written.stem == "forged":
            assert "omitted" in declared["record"]  # bounded: the 200 KB record is not quoted
            assert declared["digital_source_type"].startswith(capture) and len(declared["digital_source_type"]) < 300
        else:
            assert declared["record"]["generation"]["prompt"] == "a forged prompt"
            assert declared["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA


def test_without_identity_images_are_written_unsigned_with_one_warning(cli_runner, photo_dir, tmp_path):
    result, lines = run_process(cli_runner, [photo_dir], tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert [line["status"] for line in lines] == ["written"] * 3
    assert result.stderr.count("no C2PA signing identity") == 1
    assert "sdmark keys init" in result.stderr
    for line in lines:
        credentials = inspect(Path(line["path"]))["content_credentials"]
        assert credentials["present"] is False and credentials["status"] == credentials["embedded"] == "absent"


def test_broken_signing_config_fails_the_image_clearly(cli_runner, photo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SDMARK_SIGN_CERT", str(tmp_path / "missing.pem"))
    monkeypatch.setenv("SDMARK_SIGN_KEY", str(tmp_path / "missing.key"))
    result, lines = run_process(cli_runner, [photo_dir / "astronaut.png"], tmp_path / "out")
    assert result.exit_code == 1
    assert lines[0]["status"] == "failed" and "missing.pem" in lines[0]["error"]
    assert not list((tmp_path / "out").glob("*.png"))  # nothing half-signed left behind


def test_soft_binding_registry_and_recovery_after_stripping(cli_runner, identity, photo_dir, tmp_path, register_plugin):
    register_plugin(_TestMarkPlugin(), name="testmark-plugin")
    _TestMark.issued = itertools.count()
    set_trust_anchors([identity / "ca.pem"])
    _, lines = run_process(cli_runner, [photo_dir / "astronaut.png", photo_dir / "chelsea.png"], tmp_path / "out",
                           "--format", "webp", chain="testmark")
    signed = Path(lines[1]["path"])
    credentials = inspect(signed)["content_credentials"]
    assert credentials["status"] == "valid"
    assert "c2pa.watermarked" in action_names(credentials)
    assert credentials["soft_binding"] == {"alg": "dev.sdmark.watermark.testmark", "scheme": "testmark", "payload": "c0ffee01"}

    stripped = strip_metadata(signed, tmp_path / "uploaded.jpg")
    assert inspect(stripped)["content_credentials"]["present"] is False
    detection = {"scheme": "testmark", "p_value": 1e-12, "payload": "c0ffee01", "band": "very likely"}
    recovered = inspect(stripped, [detection])["content_credentials"]
    assert recovered["present"] is False and recovered["recovered_from_registry"] is True
    # Never "valid" for the file under test: the recovered manifest describes the registered image.
    assert recovered["status"] == "absent" and recovered["binding"] == "watermark"
    recovery = recovered["recovery"]
    assert recovery["verdict"] == "matched" and recovery["registry_matches"] == 1
    matched = recovery["matched"]
    assert (matched["signature"], matched["trusted"], matched["manifest"]) == ("valid", True, credentials["manifest"])
    assert matched["content"]["distance"] < 0.1 and matched["content"]["correlation"] > 0.95
    assert recovered["registry_entry"]["title"] == signed.name
    assert recovered["registry_entry"]["manifest"] == credentials["manifest"]
    assert recovered["record"]["source"]["name"] == "chelsea.png"
    # Values the SDK would mangle (arrays of numbers) come back exactly through the record.
    assert recovered["record"]["stages"][0]["result"]["bits"] == [1, 0, 1, 1]
    assert "recovery: matched" in recovered["summary"] and "not this file" in recovered["summary"]

    unknown = inspect(stripped, [{**detection, "payload": "0badc0de"}])["content_credentials"]
    assert unknown["recovered_from_registry"] is False and unknown["status"] == "absent"
    assert unknown["recovery"]["verdict"] == "not-registered" and "not-registered" in unknown["summary"]

    # A file that still has its manifest says whether the watermark matches the soft binding.
    assert inspect(signed, [detection])["content_credentials"]["soft_binding_matches_watermark"] is True
    assert inspect(signed, [{**detection, "payload": "c0ffee00"}])["content_credentials"]["soft_binding_matches_watermark"] is False

    # Re-marking a signed image: the registry keys the new (active) manifest, not the parent's.
    _, again = run_process(cli_runner, [signed], tmp_path / "again", chain="testmark")
    remarked = inspect(Path(again[0]["path"]))["content_credentials"]
    assert remarked["ingredients"][0]["manifest"] == credentials["manifest"]
    from_registry = inspect(strip_metadata(Path(again[0]["path"]), tmp_path / "again.png"),
                            [{**detection, "payload": "c0ffee02"}])["content_credentials"]
    assert from_registry["recovery"]["matched"]["manifest"] == remarked["manifest"] != credentials["manifest"]

    # A weak detection is not evidence enough to look anything up.
    weak = inspect(stripped, [{**detection, "p_value": 0.01, "band": "partial"}])["content_credentials"]
    assert weak["recovered_from_registry"] is False and "recovery" not in weak


def test_a_payload_shared_by_several_images_is_told_apart_by_content_or_ambiguous(
        cli_runner, identity, photo_dir, tmp_path, register_plugin):
    register_plugin(_TestMarkPlugin(), name="testmark-plugin")
    _, lines = run_process(cli_runner, [photo_dir], tmp_path / "out", chain="testmark:payload=StableDiffusionV1")
    stripped = strip_metadata(Path(lines[1]["path"]), tmp_path / "stripped.png")
    detection = {"scheme": "testmark", "p_value": 1e-12, "payload": "StableDiffusionV1", "band": "very likely"}
    credentials = inspect(stripped, [detection])["content_credentials"]
    assert credentials["registry_matches"] == 3 and credentials["recovered_from_registry"] is True
    recovery = credentials["recovery"]
    assert recovery["verdict"] == "matched" and len(recovery["candidates"]) == 3
    assert recovery["matched"]["registry_entry"]["title"] == Path(lines[1]["path"]).name
    assert sorted(c["verdict"] for c in recovery["candidates"]) == ["different-content", "different-content", "matched"]

    other = tmp_path / "other.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(other)
    unrelated = inspect(other, [detection])["content_credentials"]
    assert unrelated["recovery"]["verdict"] == "ambiguous" and unrelated["recovered_from_registry"] is False
    assert "none matches" in unrelated["recovery"]["reason"] and "ambiguous" in unrelated["summary"]


def _write_signing_helpers(folder: Path) -> None:
    (folder / "kms_stub.py").write_text(
        "import os\n"
        "from cryptography.hazmat.primitives import hashes, serialization\n"
        "from cryptography.hazmat.primitives.asymmetric import ec\n"
        "def sign(data: bytes) -> bytes:\n"
        "    key = serialization.load_pem_private_key(open(os.environ['KMS_STUB_KEY'], 'rb').read(), None)\n"
        "    return key.sign(data, ec.ECDSA(hashes.SHA256()))\n"
        "if __name__ == '__main__':\n"
        "    import sys\n"
        "    sys.stdout.buffer.write(sign(sys.stdin.buffer.read()))\n"
    )


@pytest.mark.parametrize("way", ["callback", "command"])
def test_external_signer_callback_or_command(cli_runner, identity, photo_dir, tmp_path, monkeypatch, way):
    """A deployment keeps its key elsewhere (KMS, HSM): sdmark only hands it the bytes to sign."""
    _write_signing_helpers(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("KMS_STUB_KEY", str(identity / "signer.key"))
    monkeypatch.setenv("SDMARK_KEYS_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("SDMARK_SIGN_CERT", str(identity / "signer-chain.pem"))
    if way == "callback":
        monkeypatch.setenv("SDMARK_SIGN_CALLBACK", "kms_stub:sign")
    else:
        monkeypatch.setenv("SDMARK_SIGN_COMMAND", f"{sys.executable} {tmp_path / 'kms_stub.py'}")
    result, lines = run_process(cli_runner, [photo_dir / "coffee.jpg"], tmp_path / "out", "--format", "jpeg")
    assert result.exit_code == 0, result.output
    set_trust_anchors([identity / "ca.pem"])
    assert inspect(Path(lines[0]["path"]))["content_credentials"]["status"] == "valid"


def test_failing_signing_command_reports_why(cli_runner, identity, photo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SDMARK_SIGN_CERT", str(identity / "signer-chain.pem"))
    monkeypatch.setenv("SDMARK_SIGN_COMMAND", f"{sys.executable} -c \"import sys; sys.exit('HSM offline')\"")
    result, lines = run_process(cli_runner, [photo_dir / "coffee.jpg"], tmp_path / "out")
    assert result.exit_code == 1
    assert "HSM offline" in lines[0]["error"]


def test_untrusted_anchor_file_is_a_clear_error(tmp_path):
    from sdmark.core.errors import SdmarkError

    bad = tmp_path / "not-a-cert.pem"
    bad.write_text("hello")
    with pytest.raises(SdmarkError, match="no PEM certificate"):
        set_trust_anchors([bad])
    with pytest.raises(SdmarkError, match="cannot read"):
        set_trust_anchors([tmp_path / "absent.pem"])


# -- with the real watermark stage and verify ----------------------------------------------------


def _has_watermark_stage() -> bool:
    return "watermark" in Runtime.load().stages


needs_watermark = pytest.mark.skipif(not _has_watermark_stage(), reason="needs the watermark stage (sdmark stages)")


def _verify(cli_runner, path: Path) -> dict:
    """`sdmark verify --json` when the command exists, else its Python API."""
    runner, cli = cli_runner
    if "verify" in cli.commands:
        result = runner.invoke(cli, ["verify", "--json", str(path)])
        return json.loads(result.stdout.splitlines()[0])
    from sdmark.plugins.watermark.verify import verify_file

    return verify_file(path)


@needs_watermark
@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_watermark_recovers_stripped_credentials_end_to_end(cli_runner, identity, photo_dir, tmp_path, fmt):
    set_trust_anchors([identity / "ca.pem"])
    result, lines = run_process(cli_runner, [photo_dir / "astronaut.png"], tmp_path / "out", "--format", fmt, chain="watermark")
    assert result.exit_code == 0, result.output
    signed = Path(lines[0]["path"])
    payload = lines[0]["record"]["stages"][0]["result"]["payload"]

    report = _verify(cli_runner, signed)
    credentials = report["content_credentials"]
    assert report["watermarked"] and credentials["status"] == "valid" and credentials["present"]
    assert credentials["soft_binding"]["payload"] == payload and credentials["soft_binding_matches_watermark"]
    assert "c2pa.watermarked" in action_names(credentials)

    stripped = strip_metadata(signed, tmp_path / "platform-copy.jpg")  # re-encoded at JPEG 90, no metadata
    report = _verify(cli_runner, stripped)
    credentials = report["content_credentials"]
    assert report["watermarked"] and report["detections"][0]["payload"] == payload
    assert credentials["present"] is False and credentials["recovered_from_registry"] is True
    assert credentials["status"] == "absent" and credentials["binding"] == "watermark"
    matched = credentials["recovery"]["matched"]
    assert credentials["recovery"]["verdict"] == "matched" and matched["signature"] == "valid" and matched["trusted"]
    assert credentials["record"]["source"]["name"] == "astronaut.png"


@needs_watermark
def test_generated_watermarked_image_recovers_after_stripping(cli_runner, identity, tiny_model_dir, tmp_path):
    runner, cli = cli_runner
    result = runner.invoke(cli, ["generate", "a red kite", "--seed", "11", "--steps", "1", "-m", str(tiny_model_dir),
                                 "--chain", "watermark:id=71e", "--no-safety", "-o", str(tmp_path / "gen"), "--json"])
    assert result.exit_code == 0, result.output
    signed = Path(json.loads(result.stdout.splitlines()[0])["path"])
    set_trust_anchors([identity / "ca.pem"])
    stripped = strip_metadata(signed, tmp_path / "screenshot.png")
    report = _verify(cli_runner, stripped)
    credentials = report["content_credentials"]
    assert report["parameters"] is None and report["xmp_digital_source_type"] is None  # metadata gone
    assert credentials["recovered_from_registry"] is True and credentials["status"] == "absent"
    matched = credentials["recovery"]["matched"]
    assert matched["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA and matched["trusted"] is True
    assert [a["action"] for a in matched["actions"]] == ["c2pa.created", "c2pa.watermarked"]
    assert credentials["record"]["generation"]["prompt"] == "a red kite"


def test_verify_trust_option(cli_runner, identity, photo_dir, tmp_path):
    runner, cli = cli_runner
    if "verify" not in cli.commands:
        pytest.skip("needs `sdmark verify`")
    _, lines = run_process(cli_runner, [photo_dir / "coffee.jpg"], tmp_path / "out", "--format", "webp")
    path = lines[0]["path"]
    plain = json.loads(runner.invoke(cli, ["verify", "--json", path]).stdout)
    assert plain["content_credentials"]["status"] == "untrusted" and plain["content_credentials"]["trust_anchors"] == []
    trusted = json.loads(runner.invoke(cli, ["verify", "--json", "--trust", str(identity / "ca.pem"), path]).stdout)
    assert trusted["content_credentials"]["status"] == "valid"
    assert trusted["content_credentials"]["trust_anchors"][0]["path"] == str((identity / "ca.pem").resolve())
    bad = runner.invoke(cli, ["verify", "--trust", str(tmp_path / "absent.pem"), path])
    assert bad.exit_code == 2 and "absent.pem" in bad.stderr


def test_a_registry_that_cannot_take_the_row_leaves_the_file_written_with_a_warning(
        cli_runner, identity, photo_dir, tmp_path, monkeypatch, register_plugin):
    register_plugin(_TestMarkPlugin())
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the registry's folder should be")
    monkeypatch.setenv("SDMARK_REGISTRY", str(blocker / "registry.sqlite"))
    for out in ("out", "again"):  # a rerun does not trip over the first run's half-done state
        result, lines = run_process(cli_runner, [photo_dir / "astronaut.png"], tmp_path / out, chain="testmark")
        assert result.exit_code == 0, result.output
        [line] = lines
        assert line["status"] == "written" and Path(line["path"]).exists()
        assert any(note.startswith("not registered: manifest registry") for note in line["notes"]), line["notes"]
        assert "not registered: manifest registry" in result.stderr and str(blocker) in result.stderr
        assert inspect(Path(line["path"]))["content_credentials"]["status"] == "untrusted"  # signed all the same


# -- the attacks of issue 13: transplant, edit then strip, poison -------------------------------


def _sign_marked(cli_runner, identity, photo_dir, tmp_path, name="astronaut.png", fmt="png") -> tuple[Path, str]:
    set_trust_anchors([identity / "ca.pem"])
    result, lines = run_process(cli_runner, [photo_dir / name], tmp_path / "signed", "--format", fmt, chain="watermark")
    assert result.exit_code == 0, result.output
    return Path(lines[0]["path"]), lines[0]["record"]["stages"][-1]["result"]["payload"]


def _verify_cli(cli_runner, path: Path, *extra: str) -> tuple[int, dict, str]:
    """Exit code, JSON report and human output of `sdmark verify` for one file."""
    runner, cli = cli_runner
    as_json = runner.invoke(cli, ["verify", "--json", "--no-progress", str(path), *extra])
    human = runner.invoke(cli, ["verify", "--no-progress", str(path), *extra])
    assert as_json.exit_code == human.exit_code
    return as_json.exit_code, json.loads(as_json.stdout.splitlines()[0]), human.stdout


@needs_watermark
@pytest.mark.parametrize("key", ["public", pytest.param("private", marks=pytest.mark.slow)])
def test_a_transplanted_mark_is_different_content_never_the_victims_credentials(
        cli_runner, identity, photo_dir, photos, tmp_path, monkeypatch, key):
    from sdmark.benchmarks.attribution import estimate_mark, transplant

    from sdmark.plugins.watermark import spectral

    if key == "private":
        monkeypatch.setenv("SDMARK_WATERMARK_KEY", "a deployment secret")
    # Format 1, whose 128 px tile one image's fold transplants (format 2's rarely is: this test is
    # about what the credentials do when the copy attack works).
    monkeypatch.setattr(spectral, "V2_MIN_SIDE", 1 << 20)
    signed, payload = _sign_marked(cli_runner, identity, photo_dir, tmp_path)
    victim = np.asarray(Image.open(signed).convert("RGB"))
    forged = transplant(estimate_mark(victim), np.asarray(photos["coffee"].convert("RGB")))
    forgery = tmp_path / "forgery.png"
    Image.fromarray(forged).save(forgery)  # pixels only

    code, report, human = _verify_cli(cli_runner, forgery, "--require-credentials")
    # The attack works on the mark: the victim's payload reads from the forgery ...
    assert report["watermarked"] and report["detections"][0]["payload"] == payload
    assert report["detections"][0]["key"] == key
    # ... but the credentials never go with it.
    credentials = report["content_credentials"]
    assert credentials["status"] == "absent" and credentials["recovered_from_registry"] is False
    assert credentials["recovery"]["verdict"] == "different-content"
    assert "matched" not in credentials["recovery"] and "valid" not in json.dumps(credentials["recovery"]["candidates"][0].get("verdict"))
    assert "DIFFERENT-CONTENT" in human and "copied or forged" in human
    assert all("thumbnail" not in candidate for candidate in credentials["recovery"]["candidates"])  # no peeking
    assert code == 1  # --require-credentials

    # The genuine image, stripped and re-encoded, still passes.
    code, report, human = _verify_cli(cli_runner, strip_metadata(signed, tmp_path / "copy.jpg"), "--require-credentials")
    assert report["content_credentials"]["recovery"]["verdict"] == "matched" and code == 0
    assert "recovery: matched" in human and "not this file" in human


@needs_watermark
def test_edit_then_strip_never_reads_valid(cli_runner, identity, photo_dir, tmp_path):
    from sdmark.benchmarks.attribution import draw_edit

    signed, _ = _sign_marked(cli_runner, identity, photo_dir, tmp_path)
    tampered = tmp_path / "tampered.png"
    tampered.write_bytes(signed.read_bytes())
    tamper_pixels(tampered)
    code, report, human = _verify_cli(cli_runner, tampered, "--require-credentials")
    assert report["content_credentials"]["status"] == "tampered" and code == 1
    assert "embedded tampered" in human
    # The signer is under the anchor given: the wording must not say it is not (attack review).
    assert report["content_credentials"]["signer_trusted"] is True and report["content_credentials"]["trusted"] is False
    assert "UNTRUSTED: the signer is under no trust anchor" not in human and "under a trust anchor given" in human

    # The same file with its metadata stripped: the registry's manifest is recovered, never "valid".
    code, report, _ = _verify_cli(cli_runner, strip_metadata(tampered, tmp_path / "stripped.png"))
    credentials = report["content_credentials"]
    assert credentials["status"] == "absent" and credentials["recovery"]["verdict"] == "matched"

    # "FAKE EDIT" drawn over 10% of it, saved as JPEG 60: the change is named, and not accepted.
    edited = tmp_path / "edited.jpg"
    Image.fromarray(draw_edit(np.asarray(Image.open(signed).convert("RGB")), np.random.default_rng(1))).save(edited, quality=60)
    code, report, human = _verify_cli(cli_runner, edited, "--require-credentials")
    recovery = report["content_credentials"]["recovery"]
    assert report["content_credentials"]["status"] == "absent"
    assert recovery["verdict"] == "matched" and "locally edited" in recovery["matched"]["content"]["changes"]
    assert "PART OF THIS COPY WAS CHANGED" in human and code == 1


@needs_watermark
def test_a_transplanted_manifest_is_tampered_and_its_signer_named_under_the_anchor_given(
        cli_runner, identity, photo_dir, tmp_path):
    """The attack review's wording item: a manifest (PNG caBX chunk) copied into another PNG is
    tampered, and its signer is under the anchor given with --trust: the line must not say it is not."""
    signed, _ = _sign_marked(cli_runner, identity, photo_dir, tmp_path)
    set_trust_anchors(None)  # the anchor comes from --trust alone
    manifest = next(chunk for kind, chunk in _png_chunks(signed.read_bytes()) if kind == b"caBX")
    other = tmp_path / "other.png"
    Image.open(photo_dir / "chelsea.png").convert("RGB").save(other)
    chunks = list(_png_chunks(other.read_bytes()))
    host = tmp_path / "transplanted.png"
    host.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks[0][1] + manifest + b"".join(chunk for _, chunk in chunks[1:]))
    code, report, human = _verify_cli(cli_runner, host, "--trust", str(identity / "ca.pem"))
    credentials = report["content_credentials"]
    assert credentials["status"] == "tampered" and credentials["trusted"] is False, credentials
    assert credentials["signer_trusted"] is True
    assert "UNTRUSTED: the signer is under no trust anchor" not in human and "under a trust anchor given" in human


def _local_edit(rgb: np.ndarray, kind: str) -> np.ndarray:
    """The attack review's local edits of astronaut.png (the face sits at x 150-230, y 70-150)."""
    import cv2

    out = rgb.copy()
    face = (slice(70, 150), slice(150, 230))
    if kind == "face blurred":
        out[face] = cv2.GaussianBlur(out[face], (0, 0), 8)
    elif kind == "face mirrored":
        out[face] = out[face][:, ::-1]
    elif kind == "text drawn":
        image = Image.fromarray(out)
        draw = ImageDraw.Draw(image)
        draw.text((40, 300), "PAID $0 FAKE", fill=(255, 255, 255), font_size=22)
        draw.text((40, 330), "ACCOUNT 1234-5678", fill=(255, 255, 255), font_size=22)
        out = np.asarray(image)
    return out


@needs_watermark
def test_a_stripped_copy_edited_locally_never_passes_require_credentials(cli_runner, identity, photo_dir, tmp_path):
    """F1 of the attack review: a blurred face, a mirrored face, drawn text or swapped detail read
    "matched ... no visible change ... trusted" through the 64 px thumbnail and passed."""
    signed, payload = _sign_marked(cli_runner, identity, photo_dir, tmp_path)
    rgb = np.asarray(Image.open(signed).convert("RGB"))
    # (Swapped detail, the review's forgery, also washes the mark out: the API test covers it.)
    for kind in ("face blurred", "face mirrored", "text drawn"):
        path = tmp_path / f"{kind.replace(' ', '-')}.png"
        Image.fromarray(_local_edit(rgb, kind)).save(path)  # pixels only
        code, report, human = _verify_cli(cli_runner, path, "--require-credentials")
        assert report["detections"][0]["payload"] == payload, kind
        recovery = report["content_credentials"]["recovery"]
        changes = (recovery.get("matched") or {}).get("content", {}).get("changes", [])
        assert recovery["verdict"] == "different-content" or "locally edited" in changes, (kind, recovery)
        assert code == 1, kind
        assert "no visible change" not in human and ("PART OF THIS COPY WAS CHANGED" in human or "DIFFERENT-CONTENT" in human)
    # The same file, only stripped: matched, checked for local edits, said with its resolution.
    code, report, human = _verify_cli(cli_runner, strip_metadata(signed, tmp_path / "copy.png"), "--require-credentials")
    content = report["content_credentials"]["recovery"]["matched"]["content"]
    assert code == 0 and content["local_edits_checked"] is True and content["resolution_px"] == 16
    assert "no change the fingerprint resolves" in human and "16 px" in human


def test_a_poisoned_registry_row_is_inconsistent_and_ignored(cli_runner, identity, photo_dir, tmp_path, register_plugin):
    import sqlite3

    register_plugin(_TestMarkPlugin(), name="testmark-plugin")
    set_trust_anchors([identity / "ca.pem"])
    _, lines = run_process(cli_runner, [photo_dir / "astronaut.png", photo_dir / "chelsea.png"], tmp_path / "out",
                           chain="testmark:payload=aaaa0001")
    _, other = run_process(cli_runner, [photo_dir / "coffee.jpg"], tmp_path / "other", chain="testmark:payload=bbbb0002")
    registry = tmp_path / "registry.sqlite"
    # The attacker copies the coffee row under the astronaut's payload (and under a payload nobody signed).
    with sqlite3.connect(registry) as db:
        for payload in ("aaaa0001", "cccc0003"):
            db.execute("INSERT INTO manifests (payload, scheme, manifest_label, manifest, format, title, created) "
                       "SELECT ?, scheme, manifest_label, manifest, format, 'astronaut.png', created FROM manifests "
                       "WHERE payload = 'bbbb0002'", (payload,))
    stripped = strip_metadata(Path(lines[0]["path"]), tmp_path / "astronaut-copy.png")
    detection = {"scheme": "testmark", "p_value": 1e-12, "payload": "aaaa0001", "band": "very likely"}
    recovery = inspect(stripped, [detection])["content_credentials"]["recovery"]
    verdicts = sorted(c["verdict"] for c in recovery["candidates"])
    assert verdicts == ["different-content", "inconsistent", "matched"]
    poisoned = next(c for c in recovery["candidates"] if c["verdict"] == "inconsistent")
    assert "signed soft binding names payload bbbb0002" in poisoned["reason"]
    assert recovery["verdict"] == "matched"
    assert recovery["matched"]["registry_entry"]["title"] == Path(lines[0]["path"]).name

    only_poison = inspect(stripped, [{**detection, "payload": "cccc0003"}])["content_credentials"]
    assert only_poison["recovery"]["verdict"] == "inconsistent" and only_poison["recovered_from_registry"] is False
    assert "INCONSISTENT" in only_poison["summary"]


def test_junk_rows_do_not_push_the_genuine_row_out_of_the_check(cli_runner, identity, photo_dir, tmp_path, register_plugin):
    """F6 of the attack review: 16 junk rows under the victim's payload (newest first) filled the
    cap of rows checked, so a genuine copy read INCONSISTENT, without saying rows were skipped."""
    import sqlite3

    register_plugin(_TestMarkPlugin(), name="testmark-plugin")
    set_trust_anchors([identity / "ca.pem"])
    _, lines = run_process(cli_runner, [photo_dir / "astronaut.png"], tmp_path / "out", chain="testmark:payload=aaaa0001")
    with sqlite3.connect(tmp_path / "registry.sqlite") as db:
        for n in range(40):
            db.execute("INSERT INTO manifests (payload, scheme, manifest_label, manifest, format, title, created) "
                       "VALUES ('aaaa0001', 'testmark', ?, x'00', 'image/png', 'junk.png', '2030-01-01')", (f"urn:junk:{n}",))
    stripped = strip_metadata(Path(lines[0]["path"]), tmp_path / "astronaut-copy.png")
    detection = {"scheme": "testmark", "p_value": 1e-12, "payload": "aaaa0001", "band": "very likely"}
    recovery = inspect(stripped, [detection])["content_credentials"]["recovery"]
    assert recovery["verdict"] == "matched", recovery.get("reason")
    assert recovery["registry_matches"] == 41 and "unchecked" not in recovery

    # Past the bound on rows checked per payload, the genuine row is not reached: the verdict says
    # rows were left unchecked, in the JSON and in the line a person reads.
    from sdmark.plugins.c2pa.verify import MAX_ROWS

    with sqlite3.connect(tmp_path / "registry.sqlite") as db:
        for n in range(40, MAX_ROWS + 10):
            db.execute("INSERT INTO manifests (payload, scheme, manifest_label, manifest, format, title, created) "
                       "VALUES ('aaaa0001', 'testmark', ?, x'00', 'image/png', 'junk.png', '2030-01-01')", (f"urn:junk:{n}",))
    credentials = inspect(stripped, [detection])["content_credentials"]
    recovery = credentials["recovery"]
    assert recovery["verdict"] == "inconsistent" and credentials["recovered_from_registry"] is False
    assert recovery["unchecked"] == 11 and "11 of 267 rows were left unchecked" in recovery["note"]
    assert "11 more rows were not checked" in credentials["summary"]


def test_a_self_signed_manifest_does_not_hide_a_copied_mark(cli_runner, identity, photo_dir, tmp_path, monkeypatch,
                                                            register_plugin):
    """F3 of the attack review: any embedded manifest, even one the attacker signed with their own
    certificate, suppressed recovery, and with it the DIFFERENT-CONTENT warning."""
    register_plugin(_TestMarkPlugin(), name="testmark-plugin")
    set_trust_anchors([identity / "ca.pem"])
    run_process(cli_runner, [photo_dir / "astronaut.png"], tmp_path / "victim", chain="testmark:payload=aaaa0001")
    # The attacker: their own identity and registry, the victim's payload on another photo.
    monkeypatch.setenv("SDMARK_KEYS_DIR", str(tmp_path / "attacker-keys"))
    monkeypatch.setenv("SDMARK_REGISTRY", str(tmp_path / "attacker.sqlite"))
    runner, cli = cli_runner
    assert runner.invoke(cli, ["keys", "init", "--name", "Test Signer", "--org", "sdmark tests"]).exit_code == 0
    _, lines = run_process(cli_runner, [photo_dir / "coffee.jpg"], tmp_path / "forged", chain="testmark:payload=aaaa0001")
    monkeypatch.setenv("SDMARK_REGISTRY", str(tmp_path / "registry.sqlite"))
    detection = {"scheme": "testmark", "p_value": 1e-12, "payload": "aaaa0001", "band": "very likely"}
    credentials = inspect(Path(lines[0]["path"]), [detection])["content_credentials"]
    assert credentials["present"] and credentials["status"] == "untrusted"
    assert credentials["recovery"]["verdict"] == "different-content"
    assert credentials["recovered_from_registry"] is False and credentials["binding"] == "embedded"
    assert "embedded untrusted" in credentials["summary"] and "DIFFERENT-CONTENT" in credentials["summary"]


def test_two_signers_of_one_payload_and_content_are_ambiguous(cli_runner, identity, photo_dir, tmp_path, register_plugin):
    runner, cli = cli_runner
    register_plugin(_TestMarkPlugin(), name="testmark-plugin")
    _, first = run_process(cli_runner, [photo_dir / "chelsea.png"], tmp_path / "one", chain="testmark:payload=dddd0004")
    assert runner.invoke(cli, ["keys", "init", "--force", "--name", "Test Signer", "--org", "sdmark tests"]).exit_code == 0
    _, second = run_process(cli_runner, [Path(first[0]["path"])], tmp_path / "two", chain="testmark:payload=dddd0004")
    stripped = strip_metadata(Path(second[0]["path"]), tmp_path / "copy.png")
    credentials = inspect(stripped, [{"scheme": "testmark", "p_value": 1e-12, "payload": "dddd0004", "band": "very likely"}])["content_credentials"]
    recovery = credentials["recovery"]
    assert recovery["verdict"] == "ambiguous" and "match this content about equally" in recovery["reason"]
    signers = {c["signer"]["serial"] for c in recovery["candidates"]}
    assert len(signers) == 2  # same name, two certificates: told apart
    assert "ambiguous" in credentials["summary"]


def test_a_look_alike_identity_is_told_apart_by_its_certificate(cli_runner, identity, photo_dir, tmp_path, monkeypatch):
    """Issue 16: a second identity with the same CN and O shows a different certificate, and says untrusted."""
    runner, cli = cli_runner
    _, real = run_process(cli_runner, [photo_dir / "astronaut.png"], tmp_path / "real")
    monkeypatch.setenv("SDMARK_KEYS_DIR", str(tmp_path / "forger-keys"))
    assert runner.invoke(cli, ["keys", "init", "--name", "Test Signer", "--org", "sdmark tests"]).exit_code == 0
    _, fake = run_process(cli_runner, [photo_dir / "astronaut.png"], tmp_path / "fake")
    lines = {}
    for name, line in (("real", real[0]), ("fake", fake[0])):
        result = runner.invoke(cli, ["verify", "--no-progress", line["path"]])
        report = json.loads(runner.invoke(cli, ["verify", "--json", "--no-progress", line["path"]]).stdout)
        signer = report["content_credentials"]["signer"]
        assert signer["common_name"] == "Test Signer" and report["content_credentials"]["status"] == "untrusted"
        lines[name] = (signer["certificate_sha256"], result.stdout)
    (real_sha, real_text), (fake_sha, fake_text) = lines["real"], lines["fake"]
    assert real_sha != fake_sha and len(real_sha) == 64
    assert real_sha[:16] in real_text and fake_sha[:16] in fake_text and real_sha[:16] not in fake_text
    assert "UNTRUSTED" in fake_text and "anyone can make a certificate with this name" in fake_text
    from sdmark.plugins.c2pa.identity import certificate_identity

    assert certificate_identity(identity / "signer-chain.pem")[1] == real_sha


def test_an_unreadable_registry_is_named_in_the_text_output(cli_runner, photos, tmp_path, monkeypatch):
    from sdmark.plugins.watermark.methods import builtin_method

    runner, cli = cli_runner
    garbage = tmp_path / "broken-registry.sqlite"
    garbage.write_bytes(b"not a database" * 200)
    monkeypatch.setenv("SDMARK_REGISTRY", str(garbage))
    path = tmp_path / "marked.png"
    Image.fromarray(builtin_method("dwtDctSvd").embed(np.asarray(photos["astronaut"]), bytes.fromhex("00000000000000ee"))).save(path)
    result = runner.invoke(cli, ["verify", "--no-progress", str(path)])
    assert result.exit_code == 0
    assert "registry unreadable" in result.stdout and "broken-registry.sqlite" in result.stdout
    report = json.loads(runner.invoke(cli, ["verify", "--json", "--no-progress", str(path)]).stdout)
    assert "broken-registry.sqlite" in report["content_credentials"]["registry_error"]
    assert garbage.read_bytes() == b"not a database" * 200


@needs_watermark
def test_one_verify_run_opens_the_registry_once_and_a_locked_one_costs_one_busy_wait(
        cli_runner, identity, photo_dir, tmp_path, monkeypatch):
    """Recovery opened the registry for every image: a connection each, and with a writer holding
    the lock, one busy wait (2 s) each. One run now keeps one session: one open, and a locked
    registry is asked once, reported as ``registry_error`` for every image, never read unlocked."""
    import sqlite3
    import time

    from sdmark.plugins.c2pa import verify as c2pa_verify
    from sdmark.plugins.c2pa.registry import READ_TIMEOUT

    signed, payload = _sign_marked(cli_runner, identity, photo_dir, tmp_path)
    copies = [strip_metadata(signed, tmp_path / f"copy{i}.png") for i in range(4)]
    opened = []
    real_open = c2pa_verify.open_registry
    monkeypatch.setattr(c2pa_verify, "open_registry", lambda location: opened.append(location) or real_open(location))
    runner, cli = cli_runner
    result = runner.invoke(cli, ["verify", "--json", "--no-progress", *map(str, copies)])
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["content_credentials"]["recovery"]["verdict"] for r in reports] == ["matched"] * 4, result.output
    assert len(opened) == 1
    registry = tmp_path / "registry.sqlite"
    # The signing run closed its registry writer when it ended, so the file can leave WAL mode.
    writer = sqlite3.connect(registry, isolation_level=None)
    writer.execute("PRAGMA journal_mode=DELETE")
    writer.execute("BEGIN EXCLUSIVE")
    writer.execute("UPDATE manifests SET title = 'half-written'")
    try:
        started = time.monotonic()
        result = runner.invoke(cli, ["verify", "--json", "--no-progress", *map(str, copies)])
        took = time.monotonic() - started
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(reports) == 4 and len(opened) == 2
    for report in reports:
        credentials = report["content_credentials"]
        assert "locked by a writer" in credentials["registry_error"] and "recovered_from_registry" in credentials
        assert not credentials["recovered_from_registry"] and "half-written" not in json.dumps(report)
    assert took < 2 * READ_TIMEOUT + 3, took  # one busy wait for the run, not one per image (4 x 2 s)


@needs_watermark
def test_a_verify_file_call_without_a_runtime_closes_what_it_opened(cli_runner, identity, photo_dir, tmp_path):
    """``verify_file(path)`` alone is a run of one image: the registry it opened is closed when it returns."""
    import gc

    from sdmark.plugins.watermark.verify import verify_file

    gc.disable()  # nothing is closed by the collector behind the test's back
    try:
        signed, _ = _sign_marked(cli_runner, identity, photo_dir, tmp_path)
        copy = strip_metadata(signed, tmp_path / "copy.png")
        assert _open_on(tmp_path / "registry.sqlite") == []  # the signing run closed its writer
        for _ in range(2):
            report = verify_file(copy)
            assert report["content_credentials"]["recovery"]["verdict"] == "matched"
            assert _open_on(tmp_path / "registry.sqlite") == []
    finally:
        gc.enable()


def _open_on(path: Path) -> list[str]:
    """This process's open files that are ``path`` or its SQLite companions (-wal, -shm)."""
    target = str(path.resolve())
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # closed since it was listed
            continue
    return [link for link in links if link.startswith(target)]


@needs_watermark
def test_process_closes_its_registry_writer_when_the_run_ends(cli_runner, identity, photo_dir, tmp_path):
    """``process`` left its registry writer to the garbage collector (the lock test had to call
    ``gc.collect()``): every driver now closes it when the run ends, through the run's runtime."""
    import gc
    import sqlite3

    registry = tmp_path / "registry.sqlite"
    gc.disable()
    try:
        # The local driver, then the executor's (-j 2 with one input runs its worker in this process).
        for n, extra in enumerate(([], ["-j", "2"])):
            result, lines = run_process(cli_runner, [photo_dir / "chelsea.png"], tmp_path / f"out{n}", *extra,
                                        chain="watermark")
            assert result.exit_code == 0 and lines[0]["status"] == "written", result.output
            assert _open_on(registry) == [], extra
    finally:
        gc.enable()
    with sqlite3.connect(registry) as db:
        assert db.execute("SELECT COUNT(*) FROM manifests").fetchone()[0] == 2
