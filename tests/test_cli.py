"""The command line: generate end to end, prompts files, JSON output, one-line errors."""

from __future__ import annotations

import json

from sdmark.core.io import read_image


def test_generate_prompts_file_count_and_json(cli_runner, tiny_model_dir, tmp_path):
    runner, cli = cli_runner
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# my prompts\na castle\n\na boat\n")
    out = tmp_path / "out"
    result = runner.invoke(cli, ["generate", "--prompts-file", str(prompts), "-n", "2", "--seed", "100", "--steps", "1",
                                 "-m", str(tiny_model_dir), "--chain", "", "--no-safety", "--size", "128x192",
                                 "-o", str(out), "--json", "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["record"]["generation"]["prompt"] for line in lines] == ["a castle", "a castle", "a boat", "a boat"]
    assert [line["record"]["generation"]["seed"] for line in lines] == [100, 101, 102, 103]
    assert all(line["status"] == "written" for line in lines)
    assert read_image(lines[3]["path"]).image.size == (128, 192)
    assert "safety checking is OFF" in result.stderr and "4 written" in result.stderr


def test_generate_human_output(cli_runner, tiny_model_dir, tmp_path):
    runner, cli = cli_runner
    result = runner.invoke(cli, ["generate", "a castle", "--seed", "1", "--steps", "1", "-m", str(tiny_model_dir),
                                 "--chain", "", "--no-safety", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"written  {tmp_path / '00000-1.png'}  [safety: OFF]\n"


def test_user_errors_are_one_line_with_exit_code_2(cli_runner, tmp_path, monkeypatch):
    runner, cli = cli_runner
    cases = [
        (["generate", "x", "-m", str(tmp_path / "nope"), "--no-safety", "--chain", ""], "model folder"),
        (["generate", "x", "-m", "./relative/missing", "--no-safety", "--chain", ""], "does not exist"),
        # No GPU here (CUDA is not available) or one or a few (there is no 100th): either way a clear error.
        (["generate", "x", "--device", "cuda:99", "--no-safety", "--chain", ""], "device 'cuda:99' requested but"),
        (["generate", "--prompts-file", str(tmp_path / "none.txt"), "--no-safety", "--chain", ""], "cannot read prompts file"),
        (["process", str(tmp_path), "--chain", "no-such-stage"], "unknown stage 'no-such-stage'"),
    ]
    for args, message in cases:
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
        errors = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
        assert len(errors) == 1 and errors[0].startswith("Error: "), result.stderr
    usage = runner.invoke(cli, ["generate"])
    assert usage.exit_code == 2 and "give a PROMPT or --prompts-file" in usage.stderr
    monkeypatch.setenv("SDMARK_DEBUG", "1")
    debug = runner.invoke(cli, ["process", str(tmp_path), "--chain", "no-such-stage"])
    assert debug.exception is not None and "no-such-stage" in str(debug.exception)


def test_model_folder_without_model_index_names_the_fix(cli_runner, tmp_path):
    runner, cli = cli_runner
    (tmp_path / "empty-model").mkdir()
    result = runner.invoke(cli, ["generate", "x", "-m", str(tmp_path / "empty-model"), "--no-safety", "--chain", ""])
    assert result.exit_code == 2
    assert "could not load model folder" in result.stderr and "save_pretrained" in result.stderr


def test_stages_and_plugins_list_as_json(cli_runner):
    runner, cli = cli_runner
    plugins = [json.loads(line) for line in runner.invoke(cli, ["plugins", "--json"]).stdout.splitlines()]
    names = {plugin["name"] for plugin in plugins}
    assert {"safety", "watermark", "caption", "upscale", "sdmark.core.pipeline"} <= names
    stages = runner.invoke(cli, ["stages", "--json"])
    assert stages.exit_code == 0
    for line in stages.stdout.splitlines():
        stage = json.loads(line)
        assert stage["name"] and stage["phases"] and isinstance(stage["options"], list)


def test_bad_sizes_are_usage_errors(cli_runner):
    runner, cli = cli_runner
    for size in ("-64x64", "0x0", "100x64", "axb"):
        result = runner.invoke(cli, ["generate", "x", "--size", size, "--no-safety", "--chain", ""])
        assert result.exit_code == 2 and "--size" in result.stderr and "Traceback" not in result.stderr, size


def test_process_adds_safety_first_and_no_safety_is_the_only_way_out(cli_runner, photo_dir, tmp_path):
    runner, cli = cli_runner
    result = runner.invoke(cli, ["process", str(photo_dir / "coffee.jpg"), "--chain", "", "-o", str(tmp_path / "a"), "--json"])
    assert result.exit_code == 0, result.output
    assert "adding the 'safety' stage first (use --no-safety to process unchecked)" in result.stderr
    record = json.loads(result.stdout)["record"]
    assert record["safety"] == "checked" and [s["stage"] for s in record["stages"]] == ["safety"]
    # The README's own example: caption and watermark only; the image is still checked first.
    readme = runner.invoke(cli, ["process", str(photo_dir / "coffee.jpg"), "--chain", "caption:text='Made with AI' watermark",
                                 "-o", str(tmp_path / "b"), "--json"])
    assert readme.exit_code == 0, readme.output
    assert [s["stage"] for s in json.loads(readme.stdout)["record"]["stages"]] == ["safety", "caption", "watermark"]
    off = runner.invoke(cli, ["process", str(photo_dir / "coffee.jpg"), "--chain", "", "--no-safety", "-o", str(tmp_path / "c"), "--json"])
    assert off.exit_code == 0 and json.loads(off.stdout)["record"]["safety"] == "disabled"
    assert "safety checking is OFF" in off.stderr
