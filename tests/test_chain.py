"""Chain specs, TOML chain files, validation before any work, and the order warning."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from sdmark.core.chain import Chain, parse_spec, read_chain_file
from sdmark.core.errors import ChainError
from sdmark.core.runtime import hookimpl
from sdmark.core.stages import Stage, StageOptions, option


@dataclass(frozen=True)
class InvertOptions(StageOptions):
    amount: float = option(1.0, "how much", minimum=0.0, maximum=1.0)
    mode: str = option("rgb", "which channels", choices=("rgb", "luma"))
    count: int = option(1, "how often")
    enabled: bool = option(True, "on/off")
    path: Path | None = option(None, "a path")


class Invert(Stage[InvertOptions]):
    name = "t-invert"
    description = "test: invert colours"

    def process_one(self, item, context):
        if self.options.enabled:
            item.image = ImageOps.invert(item.image.convert("RGB"))
        return {"summary": "inverted"}


class Mark(Stage):
    name = "t-mark"
    embeds_watermark = True
    changes_pixels = True

    def process_one(self, item, context):
        return {"summary": "marked"}


class LatentOnly(Stage):
    name = "t-latent"
    phases = ("after_denoise",)

    def after_denoise(self, batch, context):
        return {}


class Check(Stage):
    name = "t-check"
    checks_safety = True
    changes_pixels = False

    def process_one(self, item, context):
        return {"summary": "ok"}


class Stages:
    @hookimpl
    def sdmark_register_stages(self, register):
        for stage in (Invert, Mark, LatentOnly, Check):
            register(stage)


@pytest.fixture
def stages(runtime, register_plugin):
    """This test's runtime with the test stages registered."""
    register_plugin(Stages(), name="test-stages")
    return runtime


def test_spec_parses_names_options_and_quotes():
    specs = parse_spec("""safety  caption:text="Made, with: AI",position=top watermark:method=dwtDct""")
    assert [s.name for s in specs] == ["safety", "caption", "watermark"]
    assert specs[1].options == {"text": "Made, with: AI", "position": "top"}
    assert specs[2].options == {"method": "dwtDct"}
    assert parse_spec("   ") == []


@pytest.mark.parametrize(
    "spec, message",
    [
        ("caption:text", "expected key=value"),
        ("caption:text='open", "unterminated quote"),
        ("caption:a=1,a=2", "given twice"),
        ("9lives", "expected a stage name"),
        ("a;b", "unexpected ';'"),
    ],
)
def test_spec_syntax_errors_are_clear(spec, message):
    with pytest.raises(ChainError, match=message):
        parse_spec(spec)


def test_build_types_options_and_lists_valid_choices(stages):
    chain = Chain.build("t-invert:amount=0.5,count=3,enabled=no,path=~/x.png t-mark", stages)
    stage = chain.stages[0]
    assert stage.options == InvertOptions(amount=0.5, mode="rgb", count=3, enabled=False, path=Path("~/x.png").expanduser())
    with pytest.raises(ChainError, match=r"unknown stage 'nope'; installed stages: .*t-invert.*t-mark"):
        Chain.build("nope", stages)
    with pytest.raises(ChainError, match=r"has no option colour; valid options: amount, count, enabled, mode, path"):
        Chain.build("t-invert:colour=red", stages)
    with pytest.raises(ChainError, match=r"t-invert:count expects int, got 'many'"):
        Chain.build("t-invert:count=many", stages)
    with pytest.raises(ChainError, match=r"must be one of rgb, luma"):
        Chain.build("t-invert:mode=cmyk", stages)
    with pytest.raises(ChainError, match=r"must be <= 1.0"):
        Chain.build("t-invert:amount=2", stages)


def test_toml_chain_file_keeps_types_and_rejects_wrong_ones(stages, tmp_path):
    good = tmp_path / "chain.toml"
    good.write_text('[[stage]]\nname = "t-invert"\namount = 0.25\ncount = 2\n\n[[stage]]\nname = "t-mark"\n')
    chain = Chain.build(good, stages)
    assert chain.names == ["t-invert", "t-mark"]
    assert chain.stages[0].options.count == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('[[stage]]\nname = "t-invert"\ncount = "2"\n')
    with pytest.raises(ChainError, match="count expects int"):
        Chain.build(bad, stages)
    broken = tmp_path / "broken.toml"
    broken.write_text("[[stage]\n")
    with pytest.raises(ChainError, match="not valid TOML"):
        read_chain_file(broken)
    with pytest.raises(ChainError, match="has no name"):
        broken.write_text("[[stage]]\namount = 1\n")
        read_chain_file(broken)


def test_pixel_stage_after_watermark_warns_and_latent_stage_refuses_process(stages):
    assert Chain.build("t-invert t-mark", stages).validate("process") == []
    warnings = Chain.build("t-mark t-invert", stages).validate("process")
    assert len(warnings) == 1 and "watermark may be lost" in warnings[0] and "'t-invert'" in warnings[0]
    with pytest.raises(ChainError, match="only runs during generation"):
        Chain.build("t-latent", stages).validate("process")
    assert Chain.build("t-latent", stages).validate("generate") == []


def test_cli_reports_chain_errors_in_one_line(stages, cli_runner, photo_dir, tmp_path):
    runner, cli = cli_runner
    result = runner.invoke(cli, ["process", str(photo_dir), "--chain", "t-invert:count=x", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == ["Error: option t-invert:count expects int, got 'x'"]
    assert not (tmp_path / "out").exists()


def test_cli_process_warns_about_order_and_runs_in_order(stages, cli_runner, photo_dir, tmp_path):
    runner, cli = cli_runner
    out = tmp_path / "out"
    result = runner.invoke(cli, ["process", str(photo_dir / "astronaut.png"), "--chain", "t-mark t-invert", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "watermark may be lost" in result.stderr
    written = Image.open(out / "astronaut.png").convert("RGB")
    original = Image.open(photo_dir / "astronaut.png").convert("RGB")
    assert written.tobytes() == ImageOps.invert(original).tobytes()


def test_pixel_stage_before_the_safety_check_warns(stages):
    assert Chain.build("t-check t-invert t-mark", stages).validate("generate") == []
    [warning] = Chain.build("t-invert t-check", stages).validate("generate")
    assert "the safety check sees their output" in warning and "'t-invert'" in warning
