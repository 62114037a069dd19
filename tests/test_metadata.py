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
        assert read_metadata(image)["parameters"].startswith("a cat\nSteps: 20")
    with Image.open(out / "00000-5.webp") as image:
        meta = read_metadata(image)
    # Once generated, always generated: the input's own declaration travels with it.
    assert meta["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA
    assert meta["record"]["kind"] == "processed" and meta["record"]["source"]["record"]["kind"] == "generated"
