"""Typed stage options: declared once as a dataclass, converted once (click's types) from chain specs
and TOML alike, read as attributes; option groups for options that belong to one value of another."""

from __future__ import annotations

import dataclasses
import re
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from sdmark.core.chain import Chain
from sdmark.core.errors import ChainError, PluginError
from sdmark.core.options import MAX_OPTION_CHARS
from sdmark.core.runtime import hookimpl
from sdmark.core.stages import Option, OptionGroup, Stage, StageOptions, option

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class PaintOptions(StageOptions):
    tool: str = option("brush", "what paints", choices=("brush", "roller"))
    coats: int = option(1, "how many coats", minimum=1, maximum=5)
    glossy: bool = option(False, "gloss finish")
    label: str = option("", "a label")
    stencil: Path | None = option(None, "a stencil file")


@dataclass(frozen=True)
class BrushOptions(StageOptions):
    width: float = option(1.0, "brush width in pixels", minimum=0.5)
    bristles: str = option("soft", "bristle kind", choices=("soft", "hard"))


@dataclass(frozen=True)
class RollerOptions(StageOptions):
    width: float = option(1.0, "roller width in pixels", minimum=0.5)
    nap: int = option(10, "nap in millimetres", minimum=1)


class Paint(Stage[PaintOptions]):
    name = "t-paint"
    changes_pixels = False

    @classmethod
    def option_groups(cls, runtime):
        return (OptionGroup("tool", {"brush": BrushOptions, "roller": RollerOptions}),)

    def process_one(self, item, context):
        return {"summary": "painted"}


class PaintPlugin:
    @hookimpl
    def sdmark_register_stages(self, register):
        register(Paint)


@pytest.fixture
def paint(register_plugin, runtime):
    register_plugin(PaintPlugin(), name="t-paint")
    return runtime


def _one(spec, runtime) -> Paint:
    [stage] = Chain.build(spec, runtime).stages
    return stage


def test_spec_strings_are_parsed_by_clicks_types(paint):
    stage = _one("t-paint:coats=3,glossy=yes,label=007,stencil=~/s.png", paint)
    assert stage.options == PaintOptions(coats=3, glossy=True, label="007", stencil=Path("~/s.png").expanduser())
    assert _one("t-paint:glossy=off", paint).options.glossy is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        stage.options.coats = 4
    for spec, message in {
        "t-paint:coats=2.0": "option t-paint:coats expects int, got '2.0'",
        "t-paint:coats=": "option t-paint:coats expects int, got ''",
        "t-paint:glossy=maybe": "option t-paint:glossy expects bool, got 'maybe'",
        "t-paint:coats=9": "option t-paint:coats must be <= 5; got '9'",
        "t-paint:coats=0": "option t-paint:coats must be >= 1; got '0'",
        "t-paint:tool=sponge": "option t-paint:tool must be one of brush, roller; got 'sponge'",
        f"t-paint:label={'x' * (MAX_OPTION_CHARS + 1)}": f"is {MAX_OPTION_CHARS + 1} characters long",
    }.items():
        with pytest.raises(ChainError, match=re.escape(message)):
            Chain.build(spec, paint)


def test_toml_values_must_already_have_the_options_type(paint, tmp_path):
    def build(table: str) -> Paint:
        path = tmp_path / "chain.toml"
        path.write_text(f'[[stage]]\nname = "t-paint"\n{table}\n', encoding="utf-8")
        [stage] = Chain.build(path, paint).stages
        return stage

    assert build("coats = 2\nglossy = true\nwidth = 3").option_values()["width"] == 3  # an int is a float
    for table, message in {
        'coats = "2"': "coats expects int, got '2'",
        "coats = 2.0": "coats expects int, got 2.0",
        "glossy = 1": "glossy expects bool, got 1",
        "coats = true": "coats expects int, got True",
        "label = 5": "label expects str, got 5",
    }.items():
        with pytest.raises(ChainError, match=re.escape(message)):
            build(table)


def test_a_group_takes_each_values_options_and_records_them_all(paint):
    stage = _one("t-paint:tool=roller,nap=12", paint)
    assert stage.chosen_options("tool", RollerOptions) == RollerOptions(nap=12)
    # Every option the stage accepts, own first, then the group's in declaration order.
    assert stage.option_values() == {"tool": "roller", "coats": 1, "glossy": False, "label": "", "stencil": None,
                                     "width": 1.0, "bristles": "soft", "nap": 12}
    assert repr(stage).startswith("t-paint:tool=roller,coats=1,")
    with pytest.raises(TypeError, match="not BrushOptions"):
        stage.chosen_options("tool", BrushOptions)
    assert _one("t-paint:width=2", paint).chosen_options("tool", BrushOptions).width == 2.0
    with pytest.raises(ChainError, match=re.escape("option t-paint:nap does not apply to tool 'brush' (it is for roller)")):
        Chain.build("t-paint:nap=3", paint)
    with pytest.raises(ChainError, match=re.escape("option t-paint:nap must be >= 1; got '0'")):
        Chain.build("t-paint:tool=roller,nap=0", paint)
    with pytest.raises(ChainError, match="has no option colour; valid options: bristles, coats, glossy, label, nap, "
                                         "stencil, tool, width"):
        Chain.build("t-paint:colour=red", paint)
    described = {o.name: o for o in Paint.describe_options(paint)}
    assert described["width"].applies_to == ("tool", ("brush", "roller"))
    assert described["width"].help == "brush: brush width in pixels; roller: roller width in pixels"
    assert described["coats"] == Option("coats", int, 1, "how many coats", None, 1, 5)


def test_bad_declarations_are_the_plugins_error(runtime, register_plugin):
    @dataclass(frozen=True)
    class Loose(StageOptions):
        count: int = 3  # not made with option()

    @dataclass(frozen=True)
    class Listy(StageOptions):
        names: tuple = option((), "names")

    class OldStyle(Stage):
        name = "t-old"
        options = (Option("times", int, 1, "how many"),)

    for options, message in ((Loose, "Loose.count is not declared with sdmark.core.options.option()"),
                             (Listy, "Listy.names: an option's type is one of str, int, float, bool, Path")):
        fresh = runtime.reload()
        stage = types.new_class("Bad", (Stage[options],), exec_body=lambda ns: ns.update(name="t-bad"))
        fresh.register(types.SimpleNamespace(sdmark_register_stages=hookimpl(lambda register, stage=stage: register(stage))),
                       name="bad")
        with pytest.raises(PluginError, match=re.escape(message)):
            Chain.build("t-bad", fresh)
    fresh = runtime.reload()
    fresh.register(types.SimpleNamespace(sdmark_register_stages=hookimpl(lambda register: register(OldStyle))), name="old")
    with pytest.raises(ChainError, match="declares its options as a tuple of Option; declare a StageOptions dataclass"):
        Chain.build("t-old", fresh)

    @dataclass(frozen=True)
    class Wide(StageOptions):
        width: int = option(2, "width in whole pixels")

    class Clash(Paint):
        name = "t-clash"

        @classmethod
        def option_groups(cls, runtime):
            return (OptionGroup("tool", {"brush": BrushOptions, "roller": Wide}),)

    with pytest.raises(PluginError, match=r"option t-clash:width is declared twice with different types or defaults"):
        Clash.describe_options(runtime)


def test_the_docs_options_example_says_what_the_code_does(runtime):
    docs = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    [example] = [block for block in re.findall(r"```python\n(.*?)```", docs, re.S) if "sdmark_mirror.py" in block]
    module = types.ModuleType("sdmark_mirror")
    exec(compile(example, "docs/plugins.md", "exec", dont_inherit=True), module.__dict__)
    runtime.register(module, name="mirror")
    quoted = re.search(r"`(option mirror:times must be <= 8; got '9')`", docs).group(1)
    with pytest.raises(ChainError) as caught:
        Chain.build("mirror:times=9", runtime)
    assert str(caught.value) == quoted
    assert Chain.build("mirror:times=2", runtime).stages[0].options.times == 2


def test_a_float_option_is_a_finite_number(paint, tmp_path, runtime):
    """NaN passes every range check (each comparison with it is false): a safety threshold or
    sensitivity of NaN would flag nothing, so the safety stage would fail open. Every float option
    refuses NaN and infinity, from a spec and from TOML."""
    for spec in ("t-paint:width=nan", "t-paint:width=inf", "t-paint:width=-NaN",
                 "safety:threshold=nan", "safety:backend=sd-clip,sensitivity=nan",
                 "safety:policy=blur,blur_radius=inf"):
        with pytest.raises(ChainError, match="expects a finite number"):
            Chain.build(spec, paint)
    path = tmp_path / "chain.toml"
    path.write_text('[[stage]]\nname = "safety"\nthreshold = nan\n', encoding="utf-8")
    with pytest.raises(ChainError, match=re.escape("option safety:threshold expects a finite number, got nan")):
        Chain.build(path, runtime)
