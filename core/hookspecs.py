"""Every hook a plugin can implement, grouped by when it runs.

Hooks are always called with keyword arguments. A plugin implements any subset of them with the
:data:`sdmark.core.hookimpl` marker on functions named exactly like the specifications below.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    import click
    from diffusers import DiffusionPipeline

    from sdmark.core.stages import DenoiseBatch, ImageItem, RunContext, Stage

hookspec = pluggy.HookspecMarker("sdmark")


# -- registration: run once, when the plugin manager first needs what they provide ---------------


@hookspec(historic=True)
def sdmark_add_hookspecs(pluginmanager: pluggy.PluginManager) -> None:
    """Declare the hooks a plugin owns (pytest's ``pytest_addhooks``).

    Runs for each plugin as it is registered (historic: a plugin registered later is asked too).
    Hooks a plugin declares are called by that plugin, never by the core; another plugin that
    implements one marks its implementation ``@hookimpl(optionalhook=True)`` so it loads whether
    or not the declaring plugin does.

    :param pluginmanager: the runtime's :class:`pluggy.PluginManager`; call
        ``pluginmanager.add_hookspecs(module)`` with a module of ``@hookspec`` functions.
    """



@hookspec
def sdmark_register_stages(register: Callable[[type[Stage]], None]) -> None:
    """Contribute stages that users can put in a chain.

    Runs once per runtime, the first time its stage registry is built.

    :param register: call ``register(StageClass)`` for each :class:`~sdmark.core.stages.Stage`
        subclass the plugin provides. Registering a name that is already taken is an error that
        names both plugins.
    """


@hookspec
def sdmark_register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``sdmark`` command line.

    Runs once each time the command line is built (:func:`sdmark.cli.main.make_cli`).

    :param cli: the top-level click group; use ``@cli.command()`` or ``cli.add_command`` to add
        commands to it. ``cli.runtime`` is the :class:`~sdmark.core.runtime.Runtime` the commands
        run with (inside a command, :func:`sdmark.cli.main.current_runtime` returns it).
    """


# -- model loading: one plugin provides it ------------------------------------------------------


@hookspec(firstresult=True)
def sdmark_load_pipeline(model: str, device: str, dtype: Any, options: dict[str, Any]) -> DiffusionPipeline | None:
    """Load the diffusers text-to-image pipeline for ``model``.

    The built-in implementation (``from_pretrained`` on a hub id or a local folder) is marked
    ``trylast``, so a plugin that returns a pipeline replaces it; return ``None`` to pass.

    :param model: hub id, local folder or single-file checkpoint the user asked for.
    :param device: torch device name the pipeline will run on (``cuda``, ``cpu``, ...).
    :param dtype: ``torch.dtype`` for the weights.
    :param options: loader options (``scheduler``, ``cpu_offload``, ``vae_slicing``, ...).
    :return: a loaded pipeline, or ``None`` to let the next implementation try.
    """


# -- runs: checked before any work -------------------------------------------------------------


@hookspec
def sdmark_check_config(mode: str, output: Any) -> None:
    """Runs once per ``generate`` or ``process`` run, after the chain is validated and before any
    model loads or image is read: the place to refuse a configuration that cannot work.

    :param mode: ``generate`` or ``process``.
    :param output: the run's :class:`~sdmark.core.output.OutputOptions`, or ``None`` when nothing
        is written.

    May change: nothing. Raise :class:`~sdmark.core.errors.SdmarkError` (exit code 2) naming the
    setting to fix (the C2PA plugin does so for an incomplete signing identity).
    """


# -- generation events, in the order they happen -------------------------------------------------


@hookspec
def sdmark_before_denoise(batch: DenoiseBatch, context: RunContext) -> None:
    """Runs once per batch after the chain's ``before_denoise`` phases, before the first step.

    :param batch: ``batch.latents`` holds the initial latents as unscaled N(0, 1) noise, shape
        ``(n, C, H/8, W/8)``; ``batch.seeds`` and ``batch.prompts`` say what each row is for.
    :param context: the run: settings, pipeline, device.

    May change: ``batch.latents`` (assign a tensor of the same shape, or edit it in place). The
    pipeline scales it by the scheduler's ``init_noise_sigma`` afterwards.
    """


@hookspec
def sdmark_on_step_end(batch: DenoiseBatch, step: int, timestep: Any, context: RunContext) -> None:
    """Runs after every denoising step (bridged from diffusers' ``callback_on_step_end``).

    :param batch: ``batch.latents`` holds the latents after this step.
    :param step: zero-based index of the step that just finished.
    :param timestep: the scheduler's timestep for that step.
    :param context: the run.

    May change: ``batch.latents``; the next step continues from whatever is there.
    """


@hookspec
def sdmark_after_denoise(batch: DenoiseBatch, context: RunContext) -> None:
    """Runs once per batch after the chain's ``after_denoise`` phases, before the VAE decode.

    :param batch: ``batch.latents`` holds the final latents (what the VAE will decode).
    :param context: the run.

    May change: ``batch.latents`` (its spatial size too: the decoded image follows it).
    """


@hookspec
def sdmark_after_decode(items: list[ImageItem], context: RunContext) -> None:
    """Runs once per batch on the decoded images, before the chain's ``process`` phases.

    :param items: one :class:`~sdmark.core.stages.ImageItem` per image, with ``item.image`` (PIL,
        RGB) and ``item.record`` (its provenance record).
    :param context: the run.

    May change: ``item.image`` and ``item.record`` of each item.
    """


@hookspec
def sdmark_before_save(item: ImageItem, path: Path, context: RunContext) -> None:
    """Runs for each image that passed the chain, just before it is encoded and written.

    Runs in ``generate`` and ``process`` alike.

    :param item: the image, its record and ``item.text`` (text metadata that will be written).
    :param path: where the file will end up.
    :param context: the run.

    May change: ``item.text`` and ``item.record``. Changing pixels here bypasses the chain's
    ordering rules (a watermark may be lost): use a stage for that.
    """


@hookspec
def sdmark_finalize_output(path: Path, final: Path, item: ImageItem, context: RunContext) -> None:
    """Runs after an image and its metadata are written to a temporary file, before the file is
    moved atomically to its final name. This is the last write (e.g. a signature).

    :param path: the temporary file, in the output folder, with the final file's extension.
    :param final: where the file will be once moved (its name is the one to sign, never the temp name's).
    :param item: the image that was written.
    :param context: the run.

    May change: the file at ``path`` (rewrite it in place); it must remain a valid image file.
    """


@hookspec
def sdmark_after_save(path: Path, item: ImageItem, context: RunContext) -> None:
    """Runs once the image is in place at its final name (after the atomic move).

    For bookkeeping that must only happen for files that really exist: registries, indexes, logs.

    :param path: the written file.
    :param item: the image that was written.
    :param context: the run.

    May change: nothing of the file; raise nothing for ordinary problems (the file is already written).
    """
