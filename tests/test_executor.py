"""Executors: Ray gives the same reports, JSON lines, files and exit codes as a
plain local run; Ray actors ask for fractional CPUs so a full pool cannot hang 2 cores; the
Python API classes work with ``ray.data.Dataset.map_batches``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdmark.core.executor import ChunkResult, LocalExecutor, chunked, make_executor
from sdmark.core.executor_ray import cpus_per_actor
from sdmark.core.executor_steps import generate_chunks
from sdmark.core.errors import SdmarkError


def _lines(stdout: str, root: Path) -> list[dict]:
    """JSON lines with the run's own folder and timestamps taken out (they differ between any two runs)."""
    text = "\n".join(line for line in stdout.splitlines() if line.startswith("{"))
    text = re.sub(r'"created": "[^"]*"', '"created": "-"', text.replace(str(root), "ROOT"))
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def inputs(tmp_path: Path, photos) -> Path:
    """Real photos, one unreadable file, and two inputs that want the same output name."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for name in ("astronaut", "coffee", "chelsea"):
        photos[name].resize((256, 256)).save(folder / f"{name}.png")
    photos["rocket"].resize((256, 256)).save(folder / "chelsea.jpg", quality=90)  # also wants chelsea.png
    photos["camera"].resize((256, 256)).save(folder / "sub" / "camera.png")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


@pytest.fixture
def signing(cli_runner, tmp_path, monkeypatch):
    """A local signing identity and registry for this test only."""
    monkeypatch.setenv("SDMARK_KEYS_DIR", str(tmp_path / "keys"))
    monkeypatch.setenv("SDMARK_REGISTRY", str(tmp_path / "registry.sqlite"))
    runner, cli = cli_runner
    assert runner.invoke(cli, ["keys", "init", "--name", "Executor Test", "--org", "sdmark tests"]).exit_code == 0
    return tmp_path / "keys"


def _process(cli_runner, inputs: Path, out: Path, *extra: str):
    runner, cli = cli_runner
    result = runner.invoke(cli, ["process", str(inputs), "--chain", "watermark:id=5ca1e", "--no-safety",
                                 "--batch-size", "2", "-o", str(out), "--json", *extra])
    return result, _lines(result.stdout, out)


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_chunks_and_cpu_shares():
    assert chunked(range(5), 2) == [[0, 1], [2, 3], [4]]
    # Local batches of 2 stay whole; each of 2 workers gets a run of consecutive batches.
    assert generate_chunks(5, 2, 2) == [[0, 1, 2, 3], [4]]
    assert cpus_per_actor(64, 8) == 1.0
    for cpus, actors in ((2, 1), (2, 2), (2, 5), (1, 1)):
        assert actors * cpus_per_actor(cpus, actors) <= cpus - 0.5 + 1e-9 or cpus_per_actor(cpus, actors) == 0.01
    with pytest.raises(SdmarkError, match="--ray-address needs --executor ray"):
        make_executor("local", 1, "auto")
    with pytest.raises(SdmarkError, match="unknown executor"):
        make_executor("dask")


def test_ray_process_and_verify_equal_local(cli_runner, ray_cluster, signing, inputs, tmp_path):
    """The same JSON lines, files (pixels, text metadata, signed credentials) and exit codes."""
    local, local_lines = _process(cli_runner, inputs, tmp_path / "local")
    ray_run, ray_lines = _process(cli_runner, inputs, tmp_path / "ray", "--executor", "ray", "-j", "2")
    assert local.exit_code == ray_run.exit_code == 1, (local.output, ray_run.output)  # broken.png failed
    assert ray_lines == local_lines
    assert [line["status"] for line in local_lines].count("written") == 5
    assert {Path(line["path"]).name for line in local_lines if line["path"]} >= {"chelsea.png", "chelsea.jpg.png"}  # the jpg keeps its extension in the name
    local_files = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*.png"))
    assert local_files == sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*.png"))
    for relative in local_files:
        a, b = Image.open(tmp_path / "local" / relative), Image.open(tmp_path / "ray" / relative)
        assert np.array_equal(_pixels(a.filename), _pixels(b.filename)), relative
        assert a.text.keys() == b.text.keys()

    runner, cli = cli_runner
    files = [str(tmp_path / "ray"), str(inputs / "broken.png")]
    plain = runner.invoke(cli, ["verify", *files, "--json"])
    on_ray = runner.invoke(cli, ["verify", *files, "--json", "--executor", "ray", "-j", "2"])
    assert plain.exit_code == on_ray.exit_code == 2  # broken.png cannot be read
    assert on_ray.stdout == plain.stdout
    reports = [json.loads(line) for line in on_ray.stdout.splitlines()]
    marked = [r for r in reports if r["watermarked"]]
    assert len(marked) == 5 and all(r["detections"][0]["payload"].endswith("5ca1e") for r in marked)
    # Each actor built its own signer: every file carries intact credentials from the same identity.
    assert {r["content_credentials"]["status"] for r in marked} == {"untrusted"}
    assert {r["content_credentials"]["signer"]["common_name"] for r in marked} == {"Executor Test"}


def test_python_api_with_map_batches(ray_cluster, inputs, tmp_path):
    import ray.data

    from sdmark.core.executor_ray import ProcessImages, VerifyImages
    from sdmark.plugins.watermark.verify import select_schemes, verify_file

    paths = sorted(str(p) for p in inputs.glob("*.png"))
    processed = ray.data.from_items([{"path": p} for p in paths]).map_batches(
        ProcessImages, fn_constructor_kwargs={"chain": "watermark:id=feed", "output_dir": str(tmp_path / "api"),
                                              "safety": "off"},
        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5, batch_size=2)
    rows = {row["path"]: row for row in processed.iter_rows()}
    assert rows[str(inputs / "broken.png")]["status"] == "failed"
    written = sorted(row["output"] for row in rows.values() if row["status"] == "written")
    assert len(written) == 3
    verified = ray.data.from_items([{"path": p} for p in written]).map_batches(
        VerifyImages, fn_constructor_kwargs={"schemes": ["sdmark"]},
        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5)
    for row in verified.iter_rows():
        assert row["watermarked"] is True and row["error"] is None
        expected = verify_file(row["path"], select_schemes(["sdmark"]))
        assert json.loads(row["report"])["detections"] == expected["detections"]


def test_ray_generate_equals_local(cli_runner, ray_cluster, tiny_model_dir, tmp_path):
    """One pipeline per actor (a CPU actor here: this machine has no GPU); same images and lines."""
    runner, cli = cli_runner
    args = ["generate", "a red fox", "-n", "2", "--seed", "7", "--steps", "2", "-m", str(tiny_model_dir),
            "--chain", "watermark:id=9e4", "--no-safety", "--json"]
    local = runner.invoke(cli, [*args, "-o", str(tmp_path / "local")])
    on_ray = runner.invoke(cli, [*args, "-o", str(tmp_path / "ray"), "--executor", "ray"])
    assert local.exit_code == on_ray.exit_code == 0, on_ray.output
    assert _lines(on_ray.stdout, tmp_path / "ray") == _lines(local.stdout, tmp_path / "local")
    for path in (tmp_path / "local").glob("*.png"):
        assert np.array_equal(_pixels(path), _pixels(tmp_path / "ray" / path.name))


def test_local_executor_reports_a_worker_setup_error():
    from functools import partial

    from sdmark.core.executor_steps import VerifyStep

    with LocalExecutor(2) as pool, pytest.raises(SdmarkError, match="no-such-scheme"):
        list(pool.map(partial(VerifyStep, ("no-such-scheme",)), [[("a.png", None)], [("b.png", None)]]))


class _ClosingStep:
    """A step that records, in ``folder``, each process that closed it."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __call__(self, chunk: list) -> ChunkResult:
        import os

        return ChunkResult([os.getpid() for _ in chunk])

    def fail(self, chunk: list, message: str) -> ChunkResult:
        return ChunkResult([None for _ in chunk])

    def close(self) -> None:
        import os

        (Path(self.folder) / f"closed-{os.getpid()}").touch()


def test_every_worker_closes_its_step_when_the_run_ends(tmp_path):
    """What a worker's step kept open for the run (``process``'s registry writer) is closed when the
    worker stops, in this process and in each spawned one, not left to the process's exit."""
    import os
    from functools import partial

    with LocalExecutor(1) as pool:
        list(pool.map(partial(_ClosingStep, str(tmp_path)), [[1], [2]]))
    assert [p.name for p in tmp_path.iterdir()] == [f"closed-{os.getpid()}"]
    with LocalExecutor(2) as pool:
        workers = {pid for done in pool.map(partial(_ClosingStep, str(tmp_path)), [[1], [2], [3], [4]])
                   for pid in done.results}
    closed = {int(p.name.split("-")[1]) for p in tmp_path.iterdir()} - {os.getpid()}
    assert workers <= closed and len(closed) == 2
