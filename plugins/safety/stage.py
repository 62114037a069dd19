"""The ``safety`` stage: judge each image with a backend, then apply the policy to flagged ones.

It fails closed: an image the backend could not judge is failed (reported, never written), and a
backend that cannot load stops the run with an error naming what was tried.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdmark.core.errors import ChainError, ImageReadError, StageError
from sdmark.core.stages import ImageItem, OptionGroup, RunContext, Stage, StageOptions, option
from sdmark.plugins.safety import policies
from sdmark.plugins.safety.backends import (
    SafetyBackend,
    Verdict,
    backend_names,
    backend_options,
    get_backend,
    load_backend,
)

if TYPE_CHECKING:
    from PIL import Image

    from sdmark.core.runtime import Runtime


@dataclass(frozen=True)
class SafetyOptions(StageOptions):
    backend: str = option("nudenet", "Checker: nudenet (offline detector) or sd-clip (Stable Diffusion's checker).",
                          choices=backend_names)
    policy: str = option(policies.DEFAULT_POLICY, "What to do with a flagged image.", choices=policies.POLICIES)


@dataclass(frozen=True)
class ReplaceOptions(StageOptions):
    image: Path | None = option(None, "the image shown instead of a flagged one (scaled to fit).")


@dataclass(frozen=True)
class BlurOptions(StageOptions):
    blur_radius: float = option(0.0, "Gaussian radius in pixels (0: 8% of the longer side).", minimum=0.0)


@dataclass(frozen=True)
class PixelateOptions(StageOptions):
    pixel_size: int = option(0, "block size in pixels (0: 16 blocks along the longer side).", minimum=0)


POLICY_OPTIONS: dict[str, type[StageOptions]] = {"replace": ReplaceOptions, "blur": BlurOptions, "pixelate": PixelateOptions}
"""The options of the policies that have some."""


class SafetyStage(Stage[SafetyOptions]):
    """NSFW check with a policy for flagged images; sets the record's ``safety`` to ``checked``."""

    name = "safety"
    description = ("Check images for unsafe content and apply a policy to flagged ones (fails closed: an image "
                   "that cannot be checked is not written). Put it before other pixel stages.")
    phases = ("process",)
    changes_pixels = True
    checks_safety = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # flag and drop never touch pixels, so only the other policies may erase a watermark.
        self.changes_pixels = self.options.policy not in ("flag", "drop")
        self._backend: SafetyBackend[Any] | None = None
        self._replacement: Image.Image | None = None

    @classmethod
    def option_groups(cls, runtime: Runtime) -> tuple[OptionGroup, ...]:
        """Each backend's options (``backend=``) and each policy's (``policy=``)."""
        return (OptionGroup("backend", backend_options(runtime)),
                OptionGroup("policy", POLICY_OPTIONS, misplaced="option {stage}:{name} only applies to policy={users}"))

    @property
    def backend_options(self) -> StageOptions:
        """The chosen backend's options."""
        return self.chosen.get("backend", StageOptions())

    def check(self, mode: str) -> None:
        if self.runtime is None:
            raise ChainError("the safety stage was built outside a Chain (it has no runtime to find its backend in)")
        backend = get_backend(self.options.backend, self.runtime)
        if self.options.policy == "replace":
            image = self.chosen_options("policy", ReplaceOptions).image
            if image is None:
                raise ChainError("safety:policy=replace needs image=PATH (the picture shown instead of a flagged one)")
            from sdmark.core.io import read_image

            try:
                self._replacement = read_image(image).image
            except ImageReadError as exc:
                raise ChainError(f"option safety:image: {exc}") from None
        backend.validate(self.backend_options, mode)

    def setup(self, context: RunContext) -> None:
        """Load the backend (once per run, kept by the runtime: see ``load_backend``) and the replacement image."""
        if self.options.policy == "replace" and self._replacement is None:
            self.check(context.mode)
        self._backend = load_backend(self.options.backend, self.backend_options, context)

    def process(self, items: list[ImageItem], context: RunContext) -> None:
        """Judge the batch, then record each verdict and apply the policy; failures fail the image."""
        if self._backend is None:
            raise StageError("the safety backend was not set up; nothing was checked")
        verdicts = self._judge([item.image for item in items])
        for item, verdict in zip(items, verdicts):
            if isinstance(verdict, str):
                item.fail(f"safety: could not check the image, so it is not written ({verdict})")
                item.record.add(self.name, "process", self.option_values(),
                                {"backend": self._backend.name, "verdict": "error", "error": verdict})
                continue
            item.record.safety = "checked"
            item.record.add(self.name, "process", self.option_values(), self._apply(item, verdict, context))

    def _judge(self, images: list[Image.Image]) -> list[Verdict | str]:
        """A verdict per image, or the error text for images the backend could not judge.

        A batch that fails is retried one image at a time, so one bad image does not fail the rest.
        """
        assert self._backend is not None
        try:
            return self._checked(self._backend.check(images), len(images))
        except Exception as exc:
            if len(images) == 1:
                return [f"{type(exc).__name__}: {exc}"]
        results: list[Verdict | str] = []
        for image in images:
            results += self._judge([image])
        return results

    def _checked(self, verdicts: Any, count: int) -> list[Verdict | str]:
        verdicts = list(verdicts)
        if len(verdicts) != count or not all(isinstance(v, Verdict) for v in verdicts):
            raise TypeError(f"backend {self._backend.name!r} did not return {count} Verdict objects")  # type: ignore[union-attr]
        return verdicts

    def _apply(self, item: ImageItem, verdict: Verdict, context: RunContext) -> dict[str, Any]:
        """Apply the policy to a flagged image; return the record entry (with the CLI ``summary``)."""
        assert self._backend is not None
        policy = self.options.policy
        result: dict[str, Any] = {
            "backend": self._backend.name,
            "verdict": "flagged" if verdict.flagged else "safe",
            "flagged": verdict.flagged,
            "reasons": [{"label": label, "score": score} for label, score in verdict.reasons],
            "scores": verdict.scores,
            **verdict.details,
            "policy": policy,
            "action": "none",
            "summary": "ok",
        }
        if not verdict.flagged:
            return result
        action = policies.ACTIONS[policy]
        if policy == "blur":
            item.image = policies.blur(item.image, self.chosen_options("policy", BlurOptions).blur_radius)
        elif policy == "pixelate":
            item.image = policies.pixelate(item.image, self.chosen_options("policy", PixelateOptions).pixel_size)
        elif policy == "black":
            item.image = policies.black(item.image)
        elif policy == "replace":
            assert self._replacement is not None
            item.image = policies.replace(item.image, self._replacement)
        why = verdict.describe()
        if policy == "drop":
            item.dropped = f"flagged by safety ({why})"
        result["action"] = action
        result["summary"] = f"FLAGGED ({why}) -> {action}"
        context.warn(f"safety flagged {item.name}: {why} -> {action}")
        return result
