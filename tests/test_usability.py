"""Issue 16 as a new user and an attacker meet it: fail closed, fail fast, clean errors, bounded input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdmark.core.chain import MAX_CHAIN_FILE_BYTES, Chain, specs_from
from sdmark.core.errors import ChainError, SdmarkError
from sdmark.core.output import remove_stale_temps
from sdmark.core.runtime import hookimpl

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--chain", "", "--no-safety"]  # no stage: these tests are about files, names and messages


def _png(path: Path, size: int = 64, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _lines(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


# -- fail closed ---------------------------------------------------------------------------------


def test_a_symlink_loop_is_one_failed_item(cli_runner, tmp_path):
    runner, cli = cli_runner
    folder = tmp_path / "in"
    _png(folder / "c.png")
    os.symlink("b.png", folder / "a.png")
    os.symlink("a.png", folder / "b.png")
    result = runner.invoke(cli, ["process", str(folder), *FAST, "-o", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    by_name = {Path(line["source"]).name: line for line in _lines(result)}
    assert by_name["c.png"]["status"] == "written" and (tmp_path / "out" / "c.png").is_file()
    assert by_name["a.png"]["status"] == by_name["b.png"]["status"] == "failed"
    assert "1 written, 2 failed" in result.stderr


def test_the_library_refuses_to_process_or_generate_without_safety_unless_told(tmp_path, tiny_pipe):
    """The CLI refused a chain without a safety stage; ``process_images()`` only warned and wrote
    unchecked images. Both now fail closed before any work, and the explicit opt-out is recorded."""
    from sdmark.core.chain import Chain
    from sdmark.core.errors import ChainError
    from sdmark.core.generate import GenerationSettings, generate
    from sdmark.core.output import OutputOptions
    from sdmark.core.process import process_images

    _png(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    with pytest.raises(ChainError, match="no safety stage.*safety='off'"):
        process_images([tmp_path / "in"], Chain.build("watermark"), OutputOptions(out), progress=False)
    assert not out.exists()
    settings = GenerationSettings(prompts=["a kite"], seed=1, steps=1, width=256, height=256)
    with pytest.raises(ChainError, match="no safety stage"):
        generate(settings, Chain.build(""), OutputOptions(tmp_path / "gen"), pipeline=tiny_pipe, progress=False)
    assert not (tmp_path / "gen").exists()
    [result] = process_images([tmp_path / "in"], Chain.build(""), OutputOptions(out), safety="off", progress=False,
                              warn=lambda message: None)
    assert result.status == "written" and result.record.safety == "disabled"


# -- fail fast -----------------------------------------------------------------------------------


def test_existing_outputs_are_found_before_any_work(cli_runner, tmp_path):
    runner, cli = cli_runner
    _png(tmp_path / "in" / "a.png")
    _png(tmp_path / "in" / "b.png", seed=1)
    out = tmp_path / "out"
    assert runner.invoke(cli, ["process", str(tmp_path / "in"), *FAST, "-o", str(out)]).exit_code == 0
    # A rerun with the (slow) default chain is refused at once: no stage ran, nothing was changed.
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    rerun = runner.invoke(cli, ["process", str(tmp_path / "in"), "-o", str(out)])
    assert rerun.exit_code == 2
    assert "2 of 2 output file(s) already exist" in rerun.stderr and "--overwrite" in rerun.stderr
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert runner.invoke(cli, ["process", str(tmp_path / "in"), *FAST, "-o", str(out), "--overwrite"]).exit_code == 0


def test_generate_refuses_a_rerun_up_front_and_append_continues_the_numbering(cli_runner, tiny_model_dir, tmp_path):
    runner, cli = cli_runner
    args = ["generate", "a boat", "--seed", "7", "-n", "2", "--steps", "1", "--size", "64x64", "-m", str(tiny_model_dir),
            *FAST, "-o", str(tmp_path)]
    for name in ("00000-7.png", "00001-8.png"):  # what the first run of `args` writes
        _png(tmp_path / name)
    rerun = runner.invoke(cli, ["generate", "a boat", "--seed", "7", "-n", "2", "-m", str(tmp_path / "no-model-needed"),
                                *FAST, "-o", str(tmp_path)])
    assert rerun.exit_code == 2 and "already exist" in rerun.stderr and "--append" in rerun.stderr
    assert "model folder" not in rerun.stderr  # refused before the model was even looked for
    appended = runner.invoke(cli, [*args, "--append", "--json"])
    assert appended.exit_code == 0, appended.output
    assert [Path(line["path"]).name for line in _lines(appended)] == ["00002-7.png", "00003-8.png"]


def test_sizes_the_chain_cannot_take_are_refused_before_any_work(cli_runner, tmp_path):
    runner, cli = cli_runner
    missing_model = ["-m", str(tmp_path / "no-model"), "-o", str(tmp_path / "out")]
    # Each method declares its own floor: invisible-watermark's 256x256 pixels, sdmark's 176x176 pixels
    # and 128 a side (benchmarks/size_floor.py: its detector reads no smaller mark back).
    for size, method, floor in (("248x256", "dwtDctSvd", "65536 pixels"), ("64x64", "sdmark", "30976 pixels (176x176)"),
                                ("160x160", "sdmark", "30976 pixels (176x176)"), ("120x400", "sdmark", "128 pixels a side")):
        result = runner.invoke(cli, ["generate", "x", "--size", size, "--chain", f"safety watermark:method={method}", *missing_model])
        assert result.exit_code == 2, result.output
        assert "watermark: image is" in result.stderr and floor in result.stderr
        assert "model folder" not in result.stderr
    below_iw = runner.invoke(cli, ["generate", "x", "--size", "248x200", "--chain", "safety watermark", *missing_model])
    assert "model folder" in below_iw.stderr  # sdmark's mark has no 256x256 floor: the run got as far as the model
    # An upscale before the mark makes a small size fine: the check follows the size through the chain.
    upscaled = runner.invoke(cli, ["generate", "x", "--size", "64x64", "--chain", "safety upscale:factor=4 watermark", *missing_model])
    assert "model folder" in upscaled.stderr
    odd = runner.invoke(cli, ["generate", "x", "--size", "250x509", *FAST])
    assert odd.exit_code == 2 and "nearest valid size: 248x512" in odd.stderr
    help_text = " ".join(runner.invoke(cli, ["generate", "--help"]).stdout.split())  # as read, not as wrapped
    assert "65536 pixels (256x256)" in help_text and "30976 pixels (176x176) and 128 a side" in help_text


def test_signing_misconfiguration_exits_2_before_any_work(cli_runner, tmp_path, monkeypatch):
    runner, cli = cli_runner
    _png(tmp_path / "in" / "a.png", size=300)
    monkeypatch.setenv("SDMARK_SIGN_CERT", str(tmp_path / "cert.pem"))
    result = runner.invoke(cli, ["process", str(tmp_path / "in"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "SDMARK_SIGN_CERT needs exactly one of SDMARK_SIGN_KEY" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_output_folder_is_left_out_of_the_input_walk(cli_runner, tmp_path):
    runner, cli = cli_runner
    nest = tmp_path / "nest"
    _png(nest / "a.png")
    for _ in range(2):
        result = runner.invoke(cli, ["process", str(nest), *FAST, "-o", str(nest / "out"), "--overwrite"])
        assert result.exit_code == 0, result.output
    assert sorted(str(p.relative_to(nest)) for p in nest.rglob("*.png")) == ["a.png", "out/a.png"]
    assert "1 inside the output folder" in result.stderr


@pytest.mark.parametrize("device", ["mps", "tpu", "cuda:x"])
def test_unusable_devices_are_a_clean_error(cli_runner, tmp_path, device):
    runner, cli = cli_runner
    for command in (["generate", "x"], ["process", str(_png(tmp_path / "a.png"))]):
        result = runner.invoke(cli, [*command, "--device", device, *FAST, "-o", str(tmp_path / "out")])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.stderr and result.stderr.count("Error: ") == 1, result.stderr
        assert f"device {device!r}" in result.stderr


# -- clean errors --------------------------------------------------------------------------------


def test_a_missing_chain_file_says_so_and_a_bare_space_gets_a_quote_hint(cli_runner, tmp_path):
    runner, cli = cli_runner
    missing = runner.invoke(cli, ["process", str(tmp_path), "--chain", "nonexist.toml"])
    assert missing.exit_code == 2 and "chain file nonexist.toml: no such file" in missing.stderr
    with pytest.raises(ChainError, match=r"unknown stage 'World'.*quote the value: caption:text=\"... World\""):
        Chain.build("caption:text=Hello World")
    with pytest.raises(ChainError) as quoted:
        Chain.build("caption:text='Hello' World")
    assert "quote" not in str(quoted.value)


def test_watermark_then_upscale_names_the_real_cause(cli_runner, photo_dir, tmp_path):
    runner, cli = cli_runner
    result = runner.invoke(cli, ["process", str(photo_dir / "chelsea.png"), "--chain", "watermark:method=dwtDct upscale", "--no-safety",
                                 "-o", str(tmp_path)])
    assert result.exit_code == 1
    assert "erased by 'upscale', which changed the pixels after the watermark stage" in result.stdout
    assert "raise --quality" not in result.stdout and "encoding" not in result.stdout


def test_duplicate_stages_have_their_own_message():
    warnings = Chain.build("watermark watermark").validate("process")
    assert warnings == ["stage 'watermark' appears twice (positions 1 and 2): the second mark is embedded over "
                        "the first and may erase it; keep one watermark stage"]
    assert not any("before 'watermark'" in w for w in warnings)


def test_upscale_rejects_options_of_other_backends_like_safety_does():
    with pytest.raises(ChainError, match="option upscale:interpolation does not apply to backend 'lanczos'"):
        Chain.build("upscale:interpolation=area").validate("process")
    with pytest.raises(ChainError, match="option upscale:tile does not apply to backend 'opencv'"):
        Chain.build("upscale:backend=opencv,tile=64").validate("process")
    with pytest.raises(ChainError, match="option safety:threshold does not apply"):
        Chain.build("safety:backend=sd-clip,threshold=0.9").validate("process")
    Chain.build("upscale:backend=opencv,interpolation=area,factor=2").validate("process")


def test_the_readme_chain_file_works_on_a_photo(cli_runner, photo_dir, tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```toml\n# chain.toml\n(.*?)```", readme, re.S).group(1)
    chain_file = tmp_path / "chain.toml"
    chain_file.write_text(block, encoding="utf-8")
    runner, cli = cli_runner
    result = runner.invoke(cli, ["process", str(photo_dir / "coffee.jpg"), "--chain", str(chain_file), "-o", str(tmp_path / "o"), "--json"])
    assert result.exit_code == 0, result.output
    assert [s["stage"] for s in _lines(result)[0]["record"]["stages"]] == ["safety", "caption", "watermark"]


def test_failure_lines_name_the_path_once(cli_runner, tmp_path):
    runner, cli = cli_runner
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    result = runner.invoke(cli, ["process", str(bad), *FAST, "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    [line] = result.stdout.splitlines()
    assert line.count(str(bad)) == 1 and line.startswith(f"failed   {bad}  (")


def test_help_texts_give_exit_codes_naming_and_comments(cli_runner):
    runner, cli = cli_runner
    generate = " ".join(runner.invoke(cli, ["generate", "--help"]).stdout.split())
    process = " ".join(runner.invoke(cli, ["process", "--help"]).stdout.split())
    for text in (generate, process):
        assert "Exit codes: 0" in text and "1 at least one image failed" in text and "2 usage or configuration" in text
        assert "130 interrupted" in text
    assert "NNNNN-SEED.EXT" in generate and "lines starting with # are ignored" in generate
    assert "pic.jpg.png" in process
    verify = " ".join(runner.invoke(cli, ["verify", "--help"]).stdout.split())
    assert "rivaGan" in verify and "s an image" in verify


def test_seeds_that_would_overflow_are_refused(cli_runner, tmp_path):
    runner, cli = cli_runner
    result = runner.invoke(cli, ["generate", "x", "--seed", str(2**63 - 1), "-n", "2", *FAST, "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert f"use a seed of at most {2**63 - 2}" in result.stderr


def test_output_names_say_which_input_became_which_file(cli_runner, tmp_path):
    runner, cli = cli_runner
    one, two = tmp_path / "one", tmp_path / "two"
    for number, suffix in enumerate(("png", "jpg", "webp")):
        _png(one / f"pic.{suffix}", seed=number)  # Pillow picks the format from the extension
    _png(two / "pic.png", seed=3)
    same = one / "pic.png"
    out = tmp_path / "out"
    result = runner.invoke(cli, ["process", str(one), str(two), str(same), str(same), *FAST, "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    mapping = {Path(line["source"]).relative_to(tmp_path).as_posix(): Path(line["path"]).relative_to(out).as_posix()
               for line in _lines(result)}
    assert mapping == {"one/pic.jpg": "one/pic.jpg.png", "one/pic.png": "one/pic.png",
                       "one/pic.webp": "one/pic.webp.png", "two/pic.png": "two/pic.png"}
    assert "2 skipped (2 given more than once)" in result.stderr
    text = runner.invoke(cli, ["process", str(one), *FAST, "-o", str(tmp_path / "text")])
    assert text.stdout.splitlines() == [
        f"written  {tmp_path / 'text' / 'pic.jpg.png'}  from {one / 'pic.jpg'}  [safety: OFF]",
        f"written  {tmp_path / 'text' / 'pic.png'}  [safety: OFF]",
        f"written  {tmp_path / 'text' / 'pic.webp.png'}  from {one / 'pic.webp'}  [safety: OFF]",
    ]


def test_skipped_files_are_counted_and_an_empty_folder_exits_2_like_verify(cli_runner, tmp_path):
    runner, cli = cli_runner
    folder = tmp_path / "in"
    _png(folder / "a.png")
    for name in ("README", "notes.txt", ".hidden.png"):
        (folder / name).write_bytes(b"x")
    result = runner.invoke(cli, ["process", str(folder), *FAST, "-o", str(tmp_path / "out")])
    assert result.exit_code == 0
    assert "1 written, 3 skipped (3 not an image file name" in result.stderr
    verified = runner.invoke(cli, ["verify", str(folder)])
    assert "(1 checked), 3 skipped (not image file names" in verified.stderr
    (tmp_path / "empty").mkdir()
    process = runner.invoke(cli, ["process", str(tmp_path / "empty"), *FAST, "-o", str(tmp_path / "o2")])
    verify = runner.invoke(cli, ["verify", str(tmp_path / "empty")])
    assert process.exit_code == verify.exit_code == 2
    assert "no images found" in process.stderr and "no images found" in verify.stderr


def test_stale_temp_files_of_our_own_naming_are_removed(tmp_path):
    old = [tmp_path / ".pic.0badc0de.tmp.png", tmp_path / "sub" / ".x.12345678.signing.jpg"]
    keep = [tmp_path / ".pic.0badc0de.tmp.png.mine", tmp_path / ".recent.abcdef01.tmp.png", tmp_path / "pic.png"]
    for path in old + keep:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x")
    for path in old + keep[:1] + keep[2:]:
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    messages: list[str] = []
    assert remove_stale_temps(tmp_path, messages.append) == 2
    assert not any(path.exists() for path in old) and all(path.exists() for path in keep)
    assert "removed 2 temporary file(s)" in messages[0]


def _start(args: list[str], tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent), "SDMARK_DEVICE": "cpu", "SDMARK_SIGN": "off"}
    return subprocess.Popen([sys.executable, "-m", "sdmark.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=tmp_path, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_signals_exit_with_the_summary_and_leave_no_temp_file(tmp_path, signum, code, word):
    folder = tmp_path / "in"
    for number in range(40):
        _png(folder / f"{number:02d}.png", size=512, seed=number)
    out = tmp_path / "out"
    process = _start(["process", str(folder), "--chain", "upscale:factor=4", "--no-safety", "--batch-size", "1",
                      "-o", str(out), "--format", "png"], tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.is_dir() and any(p.suffix == ".png" and not p.name.startswith(".") for p in out.iterdir())):
        time.sleep(0.05)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    written = stdout.count("written ")
    assert 1 <= written < 40 and f"{written} written" in stderr and word in stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# -- bounded input -------------------------------------------------------------------------------


def test_chain_files_are_capped_before_parsing(tmp_path):
    cases = {
        "big.toml": "# " + "x" * MAX_CHAIN_FILE_BYTES + "\n",
        "dotted.toml": "[[stage]]\nname = \"safety\"\n" + ".".join(["a"] * 100) + " = 1\n",
        "deep.toml": "[[stage]]\nname = \"safety\"\nx = " + "[" * 5000 + "]" * 5000 + "\n",
        "inline.toml": "[[stage]]\nname = \"safety\"\nx = " + "{a = " * 100 + "1" + "}" * 100 + "\n",
        # Odd quoting cannot hide a long key from the caps: a closing run of four quotes ends after the fourth.
        "quotes.toml": "[[stage]]\nname = \"safety\"\nx = {a = " + '"' * 3 + "q" + '"' * 4 + ", " + ".".join(["b"] * 40) + " = 1}\n",
        "dots.toml": "[[stage]]\nname = \"safety\"\n" + "".join(f'k{i} = "{"." * 30}"\n' for i in range(200)),
    }
    messages = {"big.toml": "KiB", "dotted.toml": "more than 32 parts", "deep.toml": "nested deeper than 16",
                "inline.toml": "nested deeper than 16", "quotes.toml": "more than 32 parts",
                "dots.toml": "more than 4096 dots"}
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        started = time.process_time()
        with pytest.raises(ChainError, match=messages[name]):
            specs_from(str(path))
        assert time.process_time() - started < 5
    # What a real chain file uses passes: strings with dots and brackets, floats, comments.
    ok = tmp_path / "ok.toml"
    ok.write_text('# a.b.c.d [[[[\n[[stage]]\nname = "caption"\ntext = "v1.2.3 [x] {y} # not a comment"\n'
                  'template = ' + '"' * 3 + 'say ""hi"" [[[' + '"' * 4 + '\n'
                  '[[stage]]\nname = "safety"\nthreshold = 0.75\n', encoding="utf-8")
    assert [spec.name for spec in specs_from(str(ok))] == ["caption", "safety"]


def test_huge_option_values_are_not_echoed_back(cli_runner, tmp_path):
    runner, cli = cli_runner
    result = runner.invoke(cli, ["process", str(tmp_path), "--chain", "watermark:id=" + "f" * 200_000, *["--no-safety"]])
    assert result.exit_code == 2
    assert "option watermark:id is 200000 characters long; the limit is 4096" in result.stderr
    assert len(result.stderr) < 500
    with pytest.raises(ChainError) as caught:
        Chain.build("safety:policy=" + "x" * 3000)
    assert "(3000 characters)" in str(caught.value) and len(str(caught.value)) < 400


def test_control_characters_in_file_names_are_escaped_everywhere(cli_runner, tmp_path):
    runner, cli = cli_runner
    evil = tmp_path / "in" / "\x1b]0;pwned\x07\x9b2J.png"
    evil.parent.mkdir()
    evil.write_bytes(b"broken")
    _png(tmp_path / "in" / "ok\x1b[31m.png")
    for command in (["process", str(evil.parent), *FAST, "-o", str(tmp_path / "out")], ["verify", str(evil.parent)],
                    ["process", str(evil.parent), *FAST, "-o", str(tmp_path / "out2"), "--json"],
                    ["verify", str(evil.parent), "--json"]):
        result = runner.invoke(cli, command)
        printed = result.stdout + result.stderr
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", printed), (command, printed)
        assert "\\x1b]0;pwned\\x07\\x9b2J" in printed or "\\u001b]0;pwned\\u0007\\u009b2J" in printed, printed


class _ConfigCheck:
    """A plugin that refuses a configuration before any work."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    @hookimpl
    def sdmark_check_config(self, mode, output):
        self.calls.append((mode, output.directory if output else None))
        if mode == "process":
            raise SdmarkError("MYPLUGIN_TOKEN is not set")


def test_a_plugin_refuses_its_configuration_before_any_work(cli_runner, register_plugin, tiny_model_dir, tmp_path):
    runner, cli = cli_runner
    plugin = register_plugin(_ConfigCheck())
    _png(tmp_path / "in" / "a.png")
    result = runner.invoke(cli, ["process", str(tmp_path / "in"), *FAST, "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Error: MYPLUGIN_TOKEN is not set" in result.stderr
    assert not (tmp_path / "out").exists()
    generated = runner.invoke(cli, ["generate", "x", "--steps", "1", "--size", "64x64", "-m", str(tiny_model_dir), *FAST,
                                    "-o", str(tmp_path / "gen")])
    assert generated.exit_code == 0, generated.output
    assert plugin.calls == [("process", tmp_path / "out"), ("generate", tmp_path / "gen")]
