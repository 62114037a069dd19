"""A test-only plugin that adds safety backends through the public hook, as a third party would.

``test-flag`` flags images whose top-left pixel is magenta (255, 0, 255) and raises on images whose
top-left pixel is green (0, 255, 0): tests mark the images they want flagged or broken.
``test-unloadable`` fails to load, like a backend whose weights are missing.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdmark.core.errors import ModelLoadError
from sdmark.core.options import StageOptions, option
from sdmark.core.runtime import hookimpl
from sdmark.plugins.safety.backends import SafetyBackend, Verdict

FLAG = (255, 0, 255)
BREAK = (0, 255, 0)


@dataclass(frozen=True)
class FlagOptions(StageOptions):
    threshold: float = option(0.5, "score at or above which a marked image is flagged", minimum=0.0, maximum=1.0)


class FlagMarked(SafetyBackend[FlagOptions]):
    name = "test-flag"
    description = "flags images whose top-left pixel is magenta"
    calls: list[int] = []  # batch sizes seen, so tests can check batching

    def check(self, images):
        type(self).calls.append(len(images))
        verdicts = []
        for image in images:
            corner = image.convert("RGB").getpixel((0, 0))
            if corner == BREAK:
                raise RuntimeError("test backend cannot read this image")
            flagged = corner == FLAG
            score = 0.99 if flagged else 0.01
            verdicts.append(Verdict(flagged=flagged and score >= self.options.threshold,
                                    reasons=[("test-marker", score)] if flagged else [], scores={"test-marker": score}))
        return verdicts


class Unloadable(SafetyBackend):
    name = "test-unloadable"

    def __init__(self, options, context):
        raise ModelLoadError("could not load test weights from /nowhere/weights.bin; pass safety:model=FOLDER")

    def check(self, images):  # pragma: no cover - never loads
        raise AssertionError


@hookimpl
def sdmark_register_safety_backends(register):
    register(FlagMarked)
    register(Unloadable)
