"""Upscale backends come through the upscale plugin's register hook, as a third party's would, and
declare their own options (the stage refuses one set for another backend)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from PIL import Image

from sdmark.core.chain import Chain
from sdmark.core.errors import ChainError, PluginError
from sdmark.core.io import read_image
from sdmark.core.options import StageOptions, option
from sdmark.core.runtime import hookimpl
from sdmark.plugins.upscale.backends import UpscaleBackend, backend_registry

_FILTERS = {"nearest": Image.Resampling.NEAREST, "box": Image.Resampling.BOX}


@dataclass(frozen=True)
class BlockyOptions(StageOptions):
    resample: str = option("nearest", "Pillow filter", choices=tuple(_FILTERS))


class BlockyBackend(UpscaleBackend[BlockyOptions]):
    """Pillow's nearest or box filter: pixel art stays crisp."""

    name = "acme-blocky"
    description = "crisp pixel-art enlargement"
    native_factor = 3.0

    def upscale(self, image, target, item, result):
        result["resample"] = self.options.resample
        return image.resize(target, _FILTERS[self.options.resample])


class BlockyPlugin:
    @hookimpl(optionalhook=True)
    def sdmark_register_upscale_backends(self, register):
        register(BlockyBackend)


@pytest.fixture
def blocky(register_plugin):
    return register_plugin(BlockyPlugin(), name="acme-blocky")


def _art(path):
    image = Image.new("RGB", (40, 30), (20, 40, 60))
    for x in range(0, 40, 4):
        for y in range(0, 30, 3):
            image.putpixel((x, y), (250, 200 - 5 * y, 4 * x))
    image.save(path)
    return image


def test_a_plugin_backend_runs_through_the_cli_with_its_own_options(blocky, cli_runner, tmp_path):
    runner, cli = cli_runner
    art = _art(tmp_path / "art.png")
    out = tmp_path / "out"
    result = runner.invoke(cli, ["process", str(tmp_path / "art.png"), "--no-safety", "--no-progress",
                                 "--chain", "upscale:backend=acme-blocky,resample=box", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "upscale: acme-blocky 40x30 -> 120x90" in result.stdout  # the backend's own factor, 3
    written = read_image(out / "art.png")
    assert written.image.tobytes() == art.resize((120, 90), Image.Resampling.BOX).tobytes()
    [entry] = [e for e in written.metadata["record"]["stages"] if e["stage"] == "upscale"]
    assert entry["result"]["backend"] == "acme-blocky" and entry["result"]["resample"] == "box"
    assert entry["options"]["backend"] == "acme-blocky" and entry["options"]["resample"] == "box"


def test_a_backends_options_belong_to_it_alone(blocky, runtime):
    with pytest.raises(ChainError, match=r"option upscale:resample does not apply to backend 'lanczos' \(it is for acme-blocky\)"):
        Chain.build("upscale:resample=box", runtime)
    with pytest.raises(ChainError, match="option upscale:interpolation does not apply to backend 'acme-blocky' "
                                         r"\(it is for opencv\)"):
        Chain.build("upscale:backend=acme-blocky,interpolation=area", runtime)
    with pytest.raises(ChainError, match="option upscale:resample must be one of nearest, box; got 'bicubic'"):
        Chain.build("upscale:backend=acme-blocky,resample=bicubic", runtime)
    # A size the user gives wins over the backend's factor, as for the built-in ones.
    assert Chain.build("upscale:backend=acme-blocky,width=80", runtime).stages[0].output_size(40, 30) == (80, 60)


def test_the_listing_shows_plugin_backends_and_their_options(blocky, cli_runner):
    runner, cli = cli_runner
    listing = [json.loads(line) for line in runner.invoke(cli, ["stages", "--json"]).stdout.splitlines()]
    [upscale] = [stage for stage in listing if stage["name"] == "upscale"]
    options = {entry["name"]: entry for entry in upscale["options"]}
    assert "acme-blocky" in options["backend"]["choices"]
    assert options["resample"]["applies_to"] == {"backend": ["acme-blocky"]}
    assert options["resample"]["help"] == "acme-blocky: Pillow filter"
    assert options["model"]["applies_to"] == {"backend": ["model", "sd-x4", "sd-latent-x2"]}
    text = runner.invoke(cli, ["stages"]).stdout
    assert "    resample  (nearest|box, default nearest)\n        acme-blocky: Pillow filter" in text


def test_backend_names_are_unique_and_backends_are_checked(runtime):
    class Impostor(UpscaleBackend[StageOptions]):
        name = "lanczos"

    class NotABackend:
        name = "plain"

    for thing, message in ((Impostor, "'lanczos' is registered twice"), (NotABackend, "not an UpscaleBackend subclass")):
        fresh = runtime.reload()

        class Plugin:
            @hookimpl(optionalhook=True)
            def sdmark_register_upscale_backends(self, register):
                register(thing)  # noqa: B023 -- called within this iteration

        fresh.register(Plugin(), name="bad")
        with pytest.raises(PluginError, match=message):
            backend_registry(fresh)
