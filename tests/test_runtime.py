"""The Runtime: loading, the deny list, registries per runtime, plugin-declared hooks, error policies,
the documented "may change" contracts and the docs' example plugin."""

from __future__ import annotations

import pickle
import re
import types
from pathlib import Path

import numpy as np
import pluggy
import pytest
from PIL import Image

from sdmark.core.chain import Chain
from sdmark.core.errors import PluginError, SdmarkError
from sdmark.core.generate import GenerationSettings, generate
from sdmark.core.output import OutputOptions
from sdmark.core.process import process_images
from sdmark.core.runtime import Runtime, hookimpl

ROOT = Path(__file__).resolve().parents[1]


def test_the_deny_list_blocks_a_plugin_and_the_others_still_load():
    runtime = Runtime.load({"SDMARK_DISABLE_PLUGINS": "watermark"})
    assert runtime.pm.is_blocked("watermark") and not runtime.is_loaded("watermark")
    assert "watermark" not in runtime.stages
    # c2pa implements hooks the watermark plugin declares; marked optional, it loads without it.
    assert runtime.is_loaded("c2pa")
    assert not runtime.has_hook("sdmark_register_watermark_schemes")
    with pytest.raises(PluginError, match="no plugin declares the hook 'sdmark_register_watermark_schemes'"):
        runtime.collect("sdmark_register_watermark_schemes", list, list.append)
    assert {p["name"] for p in runtime.summary()} >= {"c2pa", "safety", "sdmark.core.pipeline"}


def test_the_allowlist_loads_only_what_it_names():
    runtime = Runtime.load({"SDMARK_LOAD_PLUGINS": "caption"})
    assert runtime.stages.names() == ["caption"]
    assert Runtime.load({"SDMARK_LOAD_PLUGINS": ""}).stages.names() == []


class _Stages:
    def __init__(self, stage):
        self.stage = stage

    @hookimpl
    def sdmark_register_stages(self, register):
        register(self.stage)


def test_registries_belong_to_one_runtime_and_follow_its_plugins(runtime):
    from sdmark.core.stages import Stage

    class Extra(Stage):
        name = "t-extra"

    other = Runtime.load()
    plugin = runtime.register(_Stages(Extra), name="extra")
    assert "t-extra" in runtime.stages and "t-extra" not in other.stages
    runtime.unregister(plugin)
    assert "t-extra" not in runtime.stages
    assert runtime.reload().stages.names() == other.stages.names()


def test_a_chain_pickles_to_a_worker_with_the_same_plugin_settings():
    runtime = Runtime.load({"SDMARK_DISABLE_PLUGINS": "upscale"})
    chain = Chain.build("watermark:method=dwtDct", runtime)
    copy = pickle.loads(pickle.dumps(chain))
    assert repr(copy) == repr(chain) and copy.runtime is not runtime
    assert copy.stages[0].runtime is copy.runtime
    assert "upscale" not in copy.runtime.stages and "watermark" in copy.runtime.stages


# -- a plugin declares its own hook (pytest_addhooks) -------------------------------------------


_specs = types.ModuleType("acme_hookspecs")
_hookspec = pluggy.HookspecMarker("sdmark")


@_hookspec
def acme_register_flavours(register):
    """Flavours for ACME's stage."""


_specs.acme_register_flavours = acme_register_flavours


class _Declarer:
    @hookimpl
    def sdmark_add_hookspecs(self, pluginmanager):
        pluginmanager.add_hookspecs(_specs)


class _Flavours:
    @hookimpl(optionalhook=True)
    def acme_register_flavours(self, register):
        register("vanilla")


def test_a_plugin_declares_a_hook_that_another_implements(runtime):
    # Registered before its declarer and optional: pending, then checked when the spec arrives.
    runtime.register(_Flavours(), name="flavours")
    assert not runtime.has_hook("acme_register_flavours")
    runtime.register(_Declarer(), name="declarer")
    assert runtime.collect("acme_register_flavours", list, list.append) == ["vanilla"]


def test_an_unknown_hook_names_the_plugin(runtime):
    class Typo:
        @hookimpl
        def sdmark_after_sav(self, path):
            pass

    with pytest.raises(PluginError, match="implements an unknown hook"):
        runtime.register(Typo(), name="typo")
    assert not runtime.is_loaded("typo")


class _Acme:
    seen: list = []

    @hookimpl
    def sdmark_extend_verify(self, command):
        import click

        def remember(ctx, param, value):
            self.seen.append(value)

        command.params.append(click.Option(["--acme-level"], default="low", callback=remember, expose_value=False))


def test_a_plugin_adds_an_option_to_verify(runtime, register_plugin, photos, tmp_path):
    from click.testing import CliRunner

    from sdmark.cli.main import get_cli

    register_plugin(_Acme(), name="acme")
    photos["coffee"].save(tmp_path / "coffee.png")
    cli = get_cli(runtime)
    result = CliRunner().invoke(cli, ["verify", str(tmp_path / "coffee.png"), "--acme-level", "high", "--no-progress"])
    assert result.exit_code == 1, result.output  # unmarked, and the option was taken
    assert _Acme.seen[-1] == "high"
    assert "--trust" in CliRunner().invoke(cli, ["verify", "--help"]).stdout
    # Each command line gets its own verify command: extending one never changes another.
    assert "--acme-level" not in CliRunner().invoke(get_cli(), ["verify", "--help"]).stdout


# -- error policies -------------------------------------------------------------------------------


class _FailingBookkeeper:
    @hookimpl
    def sdmark_after_save(self, path, item, context):
        raise SdmarkError("the index is down")


def test_an_after_save_error_is_a_warning_and_the_file_stays_written(runtime, register_plugin, photos, tmp_path):
    register_plugin(_FailingBookkeeper(), name="bookkeeper")
    photos["coffee"].save(tmp_path / "coffee.png")
    warnings: list[str] = []
    [result] = process_images([tmp_path / "coffee.png"], Chain([], runtime), OutputOptions(tmp_path / "out"), safety="off",
                              progress=False, warn=warnings.append)
    assert result.status == "written" and result.path.exists()
    assert any("was written, but after saving it: the index is down" in w for w in warnings), warnings


# -- documented "may change" contracts ----------------------------------------------------------------


class _ZeroAfterStep:
    """``on_step_end`` may change ``batch.latents``: the next step continues from them."""

    def __init__(self, at):
        self.at, self.seen = at, []

    @hookimpl
    def sdmark_on_step_end(self, batch, step, timestep, context):
        self.seen.append(float(batch.latents.abs().mean()))
        if step == self.at:
            batch.latents = batch.latents * 0


def _one(tiny_pipe, runtime, tmp_path=None):
    settings = GenerationSettings(prompts=["x"], seed=7, steps=3, width=64, height=64)
    output = OutputOptions(tmp_path) if tmp_path is not None else None
    [result] = generate(settings, None, output, safety="off", pipeline=tiny_pipe, progress=False, warn=lambda m: None,
                        runtime=runtime)
    return result


def test_on_step_end_latents_carry_into_the_next_step(tiny_pipe, runtime, register_plugin):
    import torch

    baseline = np.asarray(_one(tiny_pipe, runtime).item.image)
    register_plugin(_ZeroAfterStep(at=0), name="zero")
    changed = np.asarray(_one(tiny_pipe, runtime).item.image)
    assert np.abs(changed.astype(int) - baseline).mean() > 1

    # The same change made through diffusers' own callback gives the same pixels: the next step
    # continued from the latents the hook left.
    def zero(pipe, step, timestep, tensors):
        return {"latents": tensors["latents"] * 0} if step == 0 else {}

    theirs = tiny_pipe(prompt=["x"], generator=[torch.Generator("cpu").manual_seed(7)], num_inference_steps=3,
                       guidance_scale=7.5, height=64, width=64, callback_on_step_end=zero,
                       callback_on_step_end_tensor_inputs=["latents"]).images[0]
    assert np.array_equal(changed, np.asarray(theirs))


class _Invert:
    """``after_decode`` may replace ``item.image``: what is written is the new image."""

    @hookimpl
    def sdmark_after_decode(self, items, context):
        from PIL import ImageOps

        for item in items:
            item.image = ImageOps.invert(item.image)


def test_after_decode_image_is_what_gets_written(tiny_pipe, runtime, register_plugin, tmp_path):
    from PIL import ImageOps

    plain = _one(tiny_pipe, runtime).item.image
    register_plugin(_Invert(), name="invert")
    result = _one(tiny_pipe, runtime, tmp_path)
    written = Image.open(result.path).convert("RGB")
    assert written.tobytes() == ImageOps.invert(plain).tobytes()


# -- the example plugin in docs/plugins.md runs as written ------------------------------------------


def test_the_plugin_docs_example_runs(runtime, photos, tmp_path):
    docs = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    [example] = [block for block in re.findall(r"```python\n(.*?)```", docs, re.S) if "sdmark_mirror.py" in block]
    module = types.ModuleType("sdmark_mirror")
    exec(compile(example, "docs/plugins.md", "exec", dont_inherit=True), module.__dict__)  # as written: no __future__ of ours
    runtime.register(module, name="mirror")
    photos["coffee"].save(tmp_path / "coffee.png")
    [result] = process_images([tmp_path / "coffee.png"], Chain.build("mirror:times=1", runtime), None, safety="off",
                              progress=False)
    from PIL import ImageOps

    assert result.item.image.tobytes() == ImageOps.mirror(photos["coffee"]).tobytes()
    assert result.record.stages[-1].result["summary"] == "mirrored x1"


def test_process_images_returns_results_in_input_order(runtime, photos, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    photos["coffee"].save(folder / "a.png")
    (folder / "b.png").write_bytes(b"not a png")  # fails at once, before the batch of a and c is done
    photos["camera"].save(folder / "c.png")
    seen: list[str] = []
    results = process_images([folder], Chain([], runtime), None, safety="off", progress=False,
                             on_result=lambda result: seen.append(result.name))
    assert [r.status for r in results] == ["kept", "failed", "kept"]
    assert [Path(str(r.source)).name for r in results] == ["a.png", "b.png", "c.png"]
    assert sorted(seen) == sorted(r.name for r in results)  # streamed as finished, all of them


def test_a_run_ending_leaves_open_what_another_run_of_the_runtime_still_uses(runtime, register_plugin, photos, tmp_path):
    """Two ``process_images`` calls at once on one runtime (threads of a library user): the one that
    ends first must not close the resources (registry writer, SDK contexts, safety model) that the
    other is still using; the last run to end closes them."""
    import threading

    from sdmark.core.stages import Stage

    class Kept:
        closed = False

        def close(self) -> None:
            self.closed = True

    inside, release, seen = threading.Event(), threading.Event(), []

    class Hold(Stage):
        name = "t-hold"
        changes_pixels = False

        def process_one(self, item, context):
            kept = context.require_runtime().resource("test.kept", Kept)
            inside.set()
            release.wait(10)
            seen.append(kept.closed)  # what the stage would use now
            return {"summary": "held"}

    class HoldPlugin:
        @hookimpl
        def sdmark_register_stages(self, register):
            register(Hold)

    register_plugin(HoldPlugin(), name="t-hold")
    photos["coffee"].save(tmp_path / "coffee.png")
    photos["chelsea"].save(tmp_path / "chelsea.png")
    held = threading.Thread(target=lambda: process_images([tmp_path / "coffee.png"], Chain.build("t-hold", runtime), None,
                                                          safety="off", progress=False))
    held.start()
    assert inside.wait(30)
    [quick] = process_images([tmp_path / "chelsea.png"], Chain([], runtime), None, safety="off", progress=False)
    assert quick.status == "kept"
    release.set()
    held.join(30)
    assert seen == [False]
    assert runtime.resource("test.kept", Kept).closed is False  # closed by the last run: this one is new
