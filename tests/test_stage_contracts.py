"""Declared contracts between plugins: readers find stages by kind, never by name.

A third-party watermark stage called ``acme-mark`` (kind ``watermark``) and a resizing stage called
``acme-zoom`` (kind ``resize``) get what sdmark's own ``watermark`` and ``upscale`` get: C2PA actions,
the file read-back, the soft binding, the report lines and the A1111 text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from sdmark.core.metadata import a1111_parameters
from sdmark.core.results import WatermarkResult, stage_kinds
from sdmark.core.runtime import hookimpl
from sdmark.core.stages import Stage, StageOptions, option
from sdmark.plugins.watermark.methods import builtin_method

pytest.importorskip("c2pa")


@dataclass(frozen=True)
class AcmeOptions(StageOptions):
    id: str = option("00000000000000ac", "8-byte hex id")


class AcmeMark(Stage[AcmeOptions]):
    """Marks with the built-in dwtDctSvd embedder under another name, and says so in the contract's keys."""

    name = "acme-mark"
    description = "ACME's invisible mark"
    embeds_watermark = True  # kind "watermark"

    def process_one(self, item, context):
        method = builtin_method("dwtDctSvd")
        ident = bytes.fromhex(self.options.id)
        item.image = Image.fromarray(method.embed(np.asarray(item.image.convert("RGB")), ident))
        mark = WatermarkResult(scheme=method.scheme, payload=self.options.id, strength=1.0, method="dwtDctSvd")
        return {**mark.to_result(), "summary": f"acme {self.options.id}"}


class AcmeZoom(Stage):
    name = "acme-zoom"
    kind = "resize"

    def output_size(self, width, height):
        return width * 2, height * 2

    def process_one(self, item, context):
        before = list(item.image.size)
        item.image = item.image.resize((before[0] * 2, before[1] * 2))
        return {"input_size": before, "output_size": list(item.image.size), "backend": "acme", "summary": "x2"}


class Acme:
    @hookimpl
    def sdmark_register_stages(self, register):
        register(AcmeMark)
        register(AcmeZoom)


@pytest.fixture
def acme(runtime, register_plugin):
    register_plugin(Acme(), name="acme")
    return runtime


def test_kinds_come_from_the_stage_classes(acme):
    kinds = stage_kinds(acme)
    assert kinds["acme-mark"] == kinds["watermark"] == "watermark"
    assert kinds["acme-zoom"] == kinds["upscale"] == "resize"
    assert kinds["safety"] == "safety" and "caption" not in kinds


def test_a_third_party_watermark_stage_gets_actions_readback_binding_and_report(acme, cli_runner, tmp_path, photos):
    from sdmark.plugins.c2pa.verify import inspect_credentials

    runner, cli = cli_runner
    assert runner.invoke(cli, ["keys", "init", "--name", "Acme", "--org", "acme"]).exit_code == 0
    photos["astronaut"].save(tmp_path / "astro.png")
    out = tmp_path / "out"
    args = ["process", str(tmp_path / "astro.png"), "--chain", "acme-mark", "--no-safety", "-o"]
    result = runner.invoke(cli, [*args, str(out)])
    assert result.exit_code == 0, result.output
    # The report line carries the stage's summary.
    assert "[safety: OFF; acme-mark: acme 00000000000000ac]" in result.stdout
    written = out / "astro.png"
    # The read-back ran on the written file, as for sdmark's own watermark stage, and the record in
    # the file is the one the run reported (the read-back is reported apart from it).
    again = json.loads(runner.invoke(cli, [*args, str(tmp_path / "again"), "--json"]).stdout)
    assert again["checks"]["file_readback"]["stage"] == "acme-mark"
    assert again["checks"]["file_readback"]["band"] in ("likely", "very likely")
    record = json.loads(Image.open(tmp_path / "again" / "astro.png").info["sdmark"])
    assert record["stages"] == again["record"]["stages"]
    # C2PA: a standard watermarked action, and the payload as the soft binding.
    credentials = inspect_credentials(written, [], Image.open(written).convert("RGB"))
    actions = [a["action"] for a in credentials["actions"]]
    assert "c2pa.watermarked" in actions, actions
    assert credentials["soft_binding"]["payload"] == "00000000000000ac"
    assert credentials["soft_binding"]["scheme"] == "sdmark-dwtDctSvd"
    # The two records in the file agree: the text chunk and the one inside the signed manifest.
    assert credentials["record"] == json.loads(Image.open(written).info["sdmark"])


def test_a_third_party_watermark_that_does_not_survive_encoding_fails(acme, cli_runner, tmp_path, photos):
    runner, cli = cli_runner
    photos["astronaut"].save(tmp_path / "astro.png")
    # JPEG at quality 5 erases a dwtDctSvd mark: the read-back catches it, whatever the stage is called.
    result = runner.invoke(cli, ["process", str(tmp_path / "astro.png"), "--chain", "acme-mark", "--no-safety",
                                 "-o", str(tmp_path / "out"), "--format", "jpeg", "--quality", "5"])
    assert result.exit_code == 1
    assert "does not survive encoding to .jpg" in result.stdout
    assert not (tmp_path / "out" / "astro.jpg").exists()


def test_a_third_party_resizer_reaches_the_a1111_text(acme):
    from sdmark.core.records import StageRecord

    stages = [StageRecord("acme-zoom", "process", {}, {"input_size": [8, 8], "output_size": [16, 16], "backend": "acme"})]
    text = a1111_parameters({"prompt": "p", "width": 8, "height": 8}, "sdmark", stages, stage_kinds(acme))
    assert "Postprocess upscale to: 16x16, Postprocess upscaler: acme" in text
