"""A testing kit for plugin authors: tiny pipelines and a runtime of your own per test.

- :func:`tiny_pipeline` saves a tiny random-weight Stable Diffusion model (the real diffusers
  classes, no download) and loads it through sdmark's own loader, so ``generate`` runs end to end in
  seconds on a CPU. :mod:`sdmark.testing.tiny` and :mod:`sdmark.testing.tiny_upscalers` hold the
  builders (SD 1.x, SDXL, ESRGAN, the x4 and latent x2 upscalers).
- :mod:`sdmark.testing.fixtures` is a pytest plugin: ``runtime`` (a :class:`~sdmark.core.runtime.Runtime`
  loaded from the installed plugins, for one test) and ``register_plugin`` (register a plugin object
  with it). Use it from your ``conftest.py``::

      from sdmark.testing.fixtures import register_plugin, runtime  # noqa: F401

  then build chains and command lines on that runtime: ``Chain.build(spec, runtime)``,
  ``generate(..., runtime=runtime)``, ``sdmark.cli.main.get_cli(runtime)``.

Nothing here is imported by sdmark itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdmark.core.runtime import Runtime

__all__ = ["tiny_pipeline"]


def tiny_pipeline(folder: Path, *, seed: int = 0, runtime: Runtime | None = None, device: str = "cpu") -> Any:
    """Save a tiny SD 1.x model into ``folder`` (once: an existing one is reused) and load it
    through ``runtime``'s ``sdmark_load_pipeline`` hook, in fp32 on ``device``."""
    from sdmark.core.pipeline import load_pipeline
    from sdmark.testing.tiny import save_tiny_model

    folder = Path(folder)
    if not (folder / "model_index.json").exists():
        save_tiny_model(folder, seed=seed)
    return load_pipeline(str(folder), device=device, dtype="fp32", runtime=runtime)
