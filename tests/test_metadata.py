"""Every written image says where it came from: A1111 parameters, our record, IPTC XMP."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image, PngImagePlugin

from sdmark.core.metadata import TRAINED_ALGORITHMIC_MEDIA, read_metadata

# The pattern AUTOMATIC1111's infotext parser uses for "key: value" pairs.
A1111_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def a1111_fields(parameters: str) -> dict[str, str]:
    *prompt_lines, last = parameters.strip().split("\n")
    return {key.strip(): json.loads(value) if value.startswith('"') else value for key, value in A1111_PAIR.findall(last)}


@pytest.fixture(scope="module")
def generated(tiny_model_dir, tmp_path_factory):
    from click.testing import CliRunner

    from sdmark.cli.main import get_cli

    out = tmp_path_factory.mktemp("generated")
    files = {}
    for fmt in ("png", "jpeg", "webp"):
        result = CliRunner().invoke(get_cli(), [
            "generate", "a red fox, watercolour", "--negative", "blurry", "-m", str(tiny_model_dir), "--steps", "2",
            "--seed", "5", "--chain", "", "--no-safety", "--format", fmt, "-o", str(out / fmt), "--json",
        ])
        assert result.exit_code == 0, result.output
        files[fmt] = json.loads(result.stdout)["path"]
    return files


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_generated_images_carry_parameters_record_and_xmp(generated, fmt, tiny_model_dir):
    with Image.open(generated[fmt]) as image:
        meta = read_metadata(image)
    lines = meta["parameters"].split("\n")
    assert lines[0] == "a red fox, watercolour"
    assert lines[1] == "Negative prompt: blurry"
    fields = a1111_fields(meta["parameters"])
    assert fields["Steps"] == "2" and fields["Seed"] == "5" and fields["Size"] == "256x256"
    assert fields["Sampler"] == "PLMS" and fields["CFG scale"] == "7.5" and fields["Model"] == str(tiny_model_dir)
    assert meta["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA
    assert meta["creator_tool"].startswith("sdmark ")
    record = meta["record"]
    assert record["kind"] == "generated" and record["safety"] == "disabled"
    assert record["generation"]["seed"] == 5 and record["generation"]["negative_prompt"] == "blurry"


def test_processed_images_do_not_claim_to_be_generated(photo_dir, cli_runner, tmp_path):
    runner, cli = cli_runner
    out = tmp_path / "out"
    result = runner.invoke(cli, ["process", str(photo_dir / "coffee.jpg"), "--chain", "", "--no-safety", "-o", str(out), "--format", "jpeg"])
    assert result.exit_code == 0, result.output
    with Image.open(out / "coffee.jpg") as image:
        meta = read_metadata(image)
    assert meta["digital_source_type"] is None and meta["parameters"] is None
    assert meta["record"]["kind"] == "processed" and meta["record"]["generation"] is None
    assert meta["record"]["source"]["name"] == "coffee.jpg" and len(meta["record"]["source"]["sha256"]) == 64
    assert meta["record"]["safety"] == "disabled"


def test_processing_keeps_what_the_input_said_about_itself(generated, cli_runner, tmp_path, photos):
    runner, cli = cli_runner
    a1111 = tmp_path / "a1111.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512")
    photos["chelsea"].save(a1111, pnginfo=info)
    out = tmp_path / "out"
    result = runner.invoke(cli, ["process", str(a1111), generated["png"], "--chain", "", "--no-safety", "-o", str(out), "--format", "webp"])
    assert result.exit_code == 0, result.output
    with Image.open(out / "a1111.webp") as image:
        meta = read_metadata(image)
    # An input's A1111 text is the input's claim: not carried as if sdmark had written it, but recorded.
    assert meta["parameters"] is None
    assert meta["record"]["source"]["metadata"]["found"] == ["parameters"]
    assert meta["record"]["source"]["metadata"]["kept"] == {}
    with Image.open(out / "00000-5.webp") as image:
        meta = read_metadata(image)
    # The input declares it was generated (its XMP, its sdmark record), but without credentials that
    # prove it, so it is quoted as the input's unverified declaration, never re-declared as ours (F4;
    # test_c2pa has the signed input, whose source type travels).
    assert meta["digital_source_type"] is None
    declared = meta["record"]["source"]["declared"]
    assert declared["verified"] is False and declared["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA
    assert meta["record"]["kind"] == "processed" and declared["record"]["kind"] == "generated"
    assert "record" not in meta["record"]["source"]


def _png_with_text(path, photo, **chunks):
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    photo.save(path, pnginfo=info)


def test_an_inputs_declared_origin_is_not_redeclared_as_ours(cli_runner, tmp_path, photos):
    """F4 of the attack review: process copied the input's unverified IPTC DigitalSourceType (say,
    a camera capture) into its own XMP, which the C2PA signature then covers."""
    from sdmark.core.metadata import build_xmp
    from sdmark.core.records import ProvenanceRecord

    capture = "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", build_xmp(ProvenanceRecord(kind="processed"), capture))
    source = tmp_path / "claims-capture.png"
    photos["chelsea"].save(source, pnginfo=info)
    assert read_metadata(Image.open(source))["digital_source_type"] == capture
    runner, cli = cli_runner
    result = runner.invoke(cli, ["process", str(source), "--chain", "", "--no-safety", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "out" / "claims-capture.png") as image:
        meta = read_metadata(image)
    assert meta["digital_source_type"] is None
    declared = meta["record"]["source"]["declared"]
    assert declared["digital_source_type"] == capture and declared["verified"] is False


def test_foreign_text_is_dropped_by_default_and_listed(cli_runner, tmp_path, photos):
    runner, cli = cli_runner
    source = tmp_path / "in.png"
    fake = "a fake prompt\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model: sd15"
    _png_with_text(source, photos["chelsea"], parameters=fake, Comment="x" * 2_000_000)  # 2 MB chunk
    out = tmp_path / "out"
    result = runner.invoke(cli, ["process", str(source), "--chain", "", "--no-safety", "-o", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(out / "in.png") as image:
        meta = read_metadata(image)
        chunks = dict(image.text)
    assert meta["parameters"] is None and "Comment" not in chunks and not any(k.startswith("source:") for k in chunks)
    assert (out / "in.png").stat().st_size < source.stat().st_size / 4  # the 2 MB did not travel
    carried = meta["record"]["source"]["metadata"]
    assert carried["found"] == ["parameters", "Comment"] and carried["kept"] == {}
    assert set(carried["omitted"]) == {"parameters", "Comment"} and "--keep-metadata" in carried["omitted"]["parameters"]


def test_kept_foreign_text_is_renamed_and_bounded(cli_runner, tmp_path, photos):
    runner, cli = cli_runner
    source = tmp_path / "in.png"
    _png_with_text(source, photos["chelsea"], parameters="a fake prompt\nSteps: 20, Seed: 1", Author="Ann",
                   Comment="y" * 2_000_000)
    out = tmp_path / "out"
    result = runner.invoke(cli, ["process", str(source), "--chain", "", "--no-safety", "--keep-metadata",
                                 "-o", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(out / "in.png") as image:
        meta = read_metadata(image)
        chunks = dict(image.text)
    # Kept, but as the input's: no A1111 reader takes it for the output's own parameters.
    assert meta["parameters"] is None and "parameters" not in chunks
    assert chunks["source:parameters"].startswith("a fake prompt") and chunks["source:Author"] == "Ann"
    assert "source:Comment" not in chunks
    carried = meta["record"]["source"]["metadata"]
    assert carried["kept"] == {"parameters": "source:parameters", "Author": "source:Author"}
    assert "over the 16384 limit" in carried["omitted"]["Comment"]


def test_an_inputs_huge_record_is_not_quoted(tmp_path):
    from sdmark.core.metadata import SOURCE_RECORD_LIMIT, source_record

    small = {"schema": "sdmark/record@1", "kind": "generated"}
    assert source_record({"record": small}) == small
    huge = {"schema": "sdmark/record@1", "kind": "generated", "junk": "z" * (SOURCE_RECORD_LIMIT + 1)}
    assert "over the 65536-byte limit" in source_record({"record": huge})["omitted"]
    assert source_record({"record": None}) is None
