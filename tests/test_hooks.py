"""Every hook: documented, tested, called in the documented order, traceable."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sdmark.core.generate import GenerationSettings, generate
from sdmark.core.output import OutputOptions
from sdmark.core.runtime import Runtime, hookimpl

ROOT = Path(__file__).resolve().parents[1]


def _specs() -> dict:
    """Every hook specification of the installed plugins, the core's and those plugins declare."""
    relay = Runtime.load().pm.hook
    return {name: caller.spec.function for name, caller in vars(relay).items()
            if name.startswith("sdmark_") and getattr(caller, "spec", None) is not None}


SPECS = _specs()
HOOKS = sorted(SPECS)


def signature(name: str) -> str:
    """The hook's exact signature as docs/plugins.md must show it, built from its hookspec."""
    spec = inspect.signature(SPECS[name])
    params = ", ".join(f"{p.name}: {p.annotation}" for p in spec.parameters.values())
    return f"{name}({params}) -> {spec.return_annotation}"


def test_every_hook_is_prefixed_documented_and_in_the_plugin_docs():
    # Line breaks in the Markdown source do not count: a signature may wrap.
    docs = " ".join((ROOT / "docs" / "plugins.md").read_text(encoding="utf-8").split())
    assert len(HOOKS) >= 15
    for name in HOOKS:
        function = SPECS[name]
        doc = inspect.getdoc(function) or ""
        params = [p for p in inspect.signature(function).parameters]
        assert doc, f"{name} has no docstring"
        for param in params:
            assert f":param {param}:" in doc, f"{name} does not document {param}"
        assert f"`{signature(name)}`" in docs, f"docs/plugins.md lacks `{signature(name)}`"


def test_every_hook_is_exercised_by_some_test():
    tests = "\n".join(path.read_text(encoding="utf-8") for path in (ROOT / "tests").glob("test_*.py"))
    tests = tests.replace("HOOKS = sorted", "")
    for name in HOOKS:
        facade = f"runtime.{name.removeprefix('sdmark_')}(" in tests  # the Runtime's typed method for it
        assert f"def {name}(" in tests or f"hook.{name}(" in tests or facade, f"no test implements or calls {name}"


class Recorder:
    """Implements every generation hook and writes down the order of the calls."""

    def __init__(self):
        self.calls: list[str] = []

    @hookimpl
    def sdmark_before_denoise(self, batch, context):
        assert batch.latents.shape == (1, 4, 32, 32) and context.mode == "generate"
        self.calls.append("before_denoise")

    @hookimpl
    def sdmark_on_step_end(self, batch, step, timestep, context):
        self.calls.append(f"step{step}")

    @hookimpl
    def sdmark_after_denoise(self, batch, context):
        self.calls.append("after_denoise")

    @hookimpl
    def sdmark_after_decode(self, items, context):
        assert items[0].image.size == (256, 256)
        self.calls.append("after_decode")

    @hookimpl
    def sdmark_before_save(self, item, path, context):
        item.text["comment"] = "from a hook"
        self.calls.append(f"before_save:{path.name}")

    @hookimpl
    def sdmark_finalize_output(self, path, final, item, context):
        assert path.exists() and path.name.startswith(".")
        assert final.parent == path.parent and final.name == "00000-11.png" and not final.exists()
        self.calls.append("finalize_output")

    @hookimpl
    def sdmark_after_save(self, path, item, context):
        assert path.exists() and not path.name.startswith(".")
        self.calls.append("after_save")


def test_generation_hooks_run_in_the_documented_order(tiny_pipe, runtime, register_plugin, tmp_path):
    recorder = register_plugin(Recorder(), name="recorder")
    settings = GenerationSettings(prompts=["x"], seed=11, steps=3, width=256, height=256)
    generate(settings, None, OutputOptions(tmp_path), safety="off", pipeline=tiny_pipe, progress=False, warn=lambda m: None,
             runtime=runtime)
    steps = [call for call in recorder.calls if call.startswith("step")]
    assert steps == [f"step{i}" for i in range(len(tiny_pipe.scheduler.timesteps))] and len(steps) >= 3
    assert recorder.calls == [
        "before_denoise", *steps, "after_denoise", "after_decode", "before_save:00000-11.png", "finalize_output",
        "after_save",
    ]
    from PIL import Image

    assert Image.open(tmp_path / "00000-11.png").info["comment"] == "from a hook"


class Loader:
    def __init__(self, pipe):
        self.pipe, self.asked = pipe, []

    @hookimpl
    def sdmark_load_pipeline(self, model, device, dtype, options):
        self.asked.append(model)
        return self.pipe if model == "plugin:tiny" else None


def test_a_plugin_can_replace_the_pipeline_loader(tiny_pipe, runtime, register_plugin, tiny_model_dir):
    from sdmark.core.pipeline import load_pipeline

    loader = register_plugin(Loader(tiny_pipe), name="loader")
    assert load_pipeline("plugin:tiny", device="cpu", runtime=runtime) is tiny_pipe
    other = load_pipeline(str(tiny_model_dir), device="cpu", runtime=runtime)  # passes: the built-in loader runs
    assert other is not tiny_pipe and loader.asked == ["plugin:tiny", str(tiny_model_dir)]


def sdmark(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", **(env or {})}
    return subprocess.run([sys.executable, "-m", "sdmark.cli", *args], capture_output=True, text=True, env=full_env,
                          timeout=120, **kwargs)


def test_trace_prints_each_hook_call_to_stderr():
    result = sdmark("stages", env={"SDMARK_TRACE_PLUGINS": "1"})
    assert result.returncode == 0, result.stderr
    assert "hook sdmark_register_stages(register=" in result.stderr
    assert "hook sdmark_register_commands(cli=" in result.stderr
    assert "[sdmark]" not in result.stdout


def test_allowlist_and_denylist_choose_plugins(runtime):
    none = sdmark("plugins", env={"SDMARK_LOAD_PLUGINS": ""})
    assert none.returncode == 0 and none.stdout.split()[0] == "sdmark.core.pipeline"
    only = sdmark("plugins", "--json", env={"SDMARK_LOAD_PLUGINS": "caption"})
    assert {line.split('"name": "')[1].split('"')[0] for line in only.stdout.splitlines()} == {"caption", "sdmark.core.pipeline"}
    without = sdmark("plugins", env={"SDMARK_DISABLE_PLUGINS": "caption,upscale"})
    assert "caption" not in without.stdout and "upscale" not in without.stdout and "watermark" in without.stdout


THIRD_PARTY = '''
from dataclasses import dataclass

from PIL import ImageOps
from sdmark.core.runtime import hookimpl
from sdmark.core.stages import Stage, StageOptions, option

@dataclass(frozen=True)
class MirrorOptions(StageOptions):
    times: int = option(1, "how many flips")

class Mirror(Stage[MirrorOptions]):
    name = "mirror"
    description = "flip left-right"

    def process_one(self, item, context):
        for _ in range(self.options.times):
            item.image = ImageOps.mirror(item.image)
        return {"summary": f"mirrored x{self.options.times}"}

@hookimpl
def sdmark_register_stages(register):
    register(Mirror)
'''


@pytest.fixture(scope="module")
def third_party_site(tmp_path_factory) -> Path:
    """A separate tiny package 'sdmark-mirror', built and installed into its own folder with pip."""
    src = tmp_path_factory.mktemp("mirror-src")
    (src / "sdmark_mirror.py").write_text(THIRD_PARTY)
    (src / "broken_plugin.py").write_text("raise ImportError('needs libfoo 9')\n")
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "sdmark-mirror"\nversion = "1.2.3"\n'
        '[tool.setuptools]\npy-modules = ["sdmark_mirror", "broken_plugin"]\n'
        '[project.entry-points.sdmark]\nmirror = "sdmark_mirror"\nbroken = "broken_plugin"\n'
    )
    site = tmp_path_factory.mktemp("mirror-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(src)], check=True, capture_output=True, timeout=300)
    return site


def _with_path(folder) -> str:
    """``folder`` ahead of the PYTHONPATH already set (where sdmark itself may be installed)."""
    return os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))


def test_third_party_plugin_is_discovered_and_its_stage_runs(third_party_site, photo_dir, tmp_path):
    env = {"PYTHONPATH": _with_path(third_party_site), "SDMARK_DISABLE_PLUGINS": "broken"}
    stages = sdmark("stages", env=env)
    assert stages.returncode == 0, stages.stderr
    assert "mirror  (process)  from sdmark_mirror" in stages.stdout and "times  (int, default 1)" in stages.stdout
    plugins = sdmark("plugins", env=env)
    assert "mirror  (sdmark-mirror 1.2.3)" in plugins.stdout
    out = tmp_path / "out"
    run = sdmark("process", str(photo_dir / "astronaut.png"), "--chain", "mirror:times=1", "-o", str(out), env=env)
    assert run.returncode == 0, run.stderr
    assert "[safety: ok; mirror: mirrored x1]" in run.stdout  # process adds the safety stage first
    from PIL import Image, ImageOps

    original = Image.open(photo_dir / "astronaut.png").convert("RGB")
    assert Image.open(out / "astronaut.png").convert("RGB").tobytes() == ImageOps.mirror(original).tobytes()


def test_broken_plugin_is_named_and_the_allowlist_is_the_way_out(third_party_site):
    broken = sdmark("stages", env={"PYTHONPATH": _with_path(third_party_site)})
    assert broken.returncode == 2
    assert "plugin 'broken' (from sdmark-mirror, broken_plugin) failed to load: ImportError: needs libfoo 9" in broken.stderr
    assert "SDMARK_DISABLE_PLUGINS=broken" in broken.stderr and "Traceback" not in broken.stderr
    allowed = sdmark("stages", env={"PYTHONPATH": _with_path(third_party_site), "SDMARK_LOAD_PLUGINS": "mirror"})
    assert allowed.returncode == 0 and allowed.stdout.startswith("mirror")


def test_a_failed_plugin_load_fails_again_instead_of_loading_nothing(third_party_site):
    script = (
        "from sdmark.core.errors import PluginError\n"
        "from sdmark.core.runtime import Runtime\n"
        "for attempt in (1, 2):\n"
        "    try:\n"
        "        Runtime.load()\n"
        "    except PluginError as exc:\n"
        "        print(attempt, 'raised', 'broken' in str(exc))\n"
        "    else:\n"
        "        print(attempt, 'returned')\n"
    )
    env = {**os.environ, "PYTHONPATH": _with_path(third_party_site)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split("\n")[:2] == ["1 raised True", "2 raised True"], done.stderr
