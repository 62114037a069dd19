"""The caption plugin: the ``caption`` stage, a visible provenance stamp ("AI-generated", seed, model...)."""

from __future__ import annotations

from typing import Callable

from sdmark.core.runtime import hookimpl


@hookimpl
def sdmark_register_stages(register: Callable[[type], None]) -> None:
    from sdmark.plugins.caption.stage import CaptionStage

    register(CaptionStage)
