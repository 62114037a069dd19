"""Shared fixtures: a tiny Stable Diffusion model saved once per session, real sample photos."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sdmark.testing import fixtures

# The kit's fixtures, as a plugin author's conftest.py would take them.
runtime = fixtures.runtime
register_plugin = fixtures.register_plugin

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
# CLI runs compare pixels with CPU references: on a GPU machine `--device auto` would pick CUDA and fp16.
os.environ.setdefault("SDMARK_DEVICE", "cpu")


@pytest.fixture(autouse=True, scope="session")
def _isolated_user_state(tmp_path_factory: pytest.TempPathFactory):
    """Keep the user's signing identity and manifest registry out of the tests (and vice versa)."""
    home = tmp_path_factory.mktemp("user-state")
    saved = {key: os.environ.get(key) for key in ("SDMARK_KEYS_DIR", "SDMARK_REGISTRY")}
    os.environ["SDMARK_KEYS_DIR"] = str(home / "keys")
    os.environ["SDMARK_REGISTRY"] = str(home / "registry.sqlite")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers model folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    from sdmark.testing.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-sd") / "model")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir: Path):
    """The tiny model loaded through sdmark's real loader (``from_pretrained`` on the folder), on CPU."""
    from sdmark.testing import tiny_pipeline

    return tiny_pipeline(tiny_model_dir)


@pytest.fixture(scope="session")
def photos() -> dict[str, "object"]:
    """Real photographs shipped by scikit-image, as PIL RGB images."""
    from PIL import Image
    from skimage import data

    def rgb(array):
        image = Image.fromarray(array)
        return image.convert("RGB")

    return {
        "astronaut": rgb(data.astronaut()),
        "coffee": rgb(data.coffee()),
        "chelsea": rgb(data.chelsea()),
        "rocket": rgb(data.rocket()),
        "camera": rgb(data.camera()),
    }


@pytest.fixture
def photo_dir(tmp_path: Path, photos) -> Path:
    """A folder with three real photos as PNG and JPEG."""
    folder = tmp_path / "photos"
    folder.mkdir()
    photos["astronaut"].save(folder / "astronaut.png")
    photos["coffee"].save(folder / "coffee.jpg", quality=92)
    photos["chelsea"].save(folder / "chelsea.png")
    return folder


@pytest.fixture(scope="session")
def isolate_c2pa():
    """``isolate(patch, folder)``: signing keys and registry under ``folder``, and no signing, trust
    anchor or TSA setting from the developer's environment (through the MonkeyPatch ``patch``)."""
    from sdmark.plugins.c2pa import set_signing_config, set_trust_anchors

    def isolate(patch: pytest.MonkeyPatch, folder: Path) -> None:
        for name in list(os.environ):
            if name.startswith("SDMARK_SIGN") or name in ("SDMARK_TRUST_ANCHORS", "SDMARK_TSA_URL"):
                patch.delenv(name)
        patch.setenv("SDMARK_KEYS_DIR", str(folder / "keys"))
        patch.setenv("SDMARK_REGISTRY", str(folder / "registry.sqlite"))
        set_trust_anchors(None)
        set_signing_config(None)

    return isolate


@pytest.fixture
def cli_runner(runtime):
    """A CliRunner and the sdmark click group with every plugin command attached, on this test's runtime."""
    from click.testing import CliRunner

    from sdmark.cli.main import get_cli

    return CliRunner(), get_cli(runtime)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs, as on the CI machine) shared by every test that asks for it:
    starting Ray costs ~10 s. sdmark's Ray executor joins it instead of starting its own."""
    import shutil
    import tempfile

    ray = pytest.importorskip("ray")
    # A short folder of our own: Ray's socket paths must stay under the OS limit.
    temp = tempfile.mkdtemp(prefix="sdmark-ray-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR", _temp_dir=temp)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
