"""The ``safety`` stage: judge each image with a backend, then apply the policy to flagged ones.

It fails closed: an image the backend could not judge is failed (reported, never written), and a
backend that cannot load stops the run with an error naming what was tried.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdmark.core.errors import ChainError, ImageReadError, StageError
from sdmark.core.stages import ImageItem, Option, RunContext, Stage
from sdmark.plugins.safety import policies
from sdmark.plugins.safety.backends import (
    BACKEND_OPTIONS,
    SafetyBackend,
    Verdict,
    backend_names,
    get_backend,
    load_backend,
)
from sdmark.plugins.safety.nudenet_backend import DEFAULT_CLASSES, DEFAULT_THRESHOLD

if TYPE_CHECKING:
    from PIL import Image

# Options that only mean something for one policy.
_POLICY_OPTIONS = {"image": "replace", "blur_radius": "blur", "pixel_size": "pixelate"}


class SafetyStage(Stage):
    """NSFW check with a policy for flagged images; sets the record's ``safety`` to ``checked``."""

    name = "safety"
    description = ("Check images for unsafe content and apply a policy to flagged ones (fails closed: an image "
                   "that cannot be checked is not written). Put it before other pixel stages.")
    options = (
        Option("backend", str, "nudenet", "Checker: nudenet (offline detector) or sd-clip (Stable Diffusion's checker).",
               choices=backend_names),
        Option("policy", str, policies.DEFAULT_POLICY, "What to do with a flagged image.", choices=policies.POLICIES),
        Option("threshold", float, DEFAULT_THRESHOLD, "nudenet: minimum detection score that counts as unsafe.",
               minimum=0.0, maximum=1.0),
        Option("classes", str, "+".join(DEFAULT_CLASSES), "nudenet: detector classes that count as unsafe, joined by + (or commas in quotes)."),
        Option("model", str, "", "sd-clip: hub id or folder of the checker (default: the model's safety_checker/ "
               "during generate, else CompVis/stable-diffusion-safety-checker)."),
        Option("sensitivity", float, 0.0, "sd-clip: added to every concept score; >0 flags more, <0 flags less.",
               minimum=-1.0, maximum=1.0),
        Option("image", Path, None, "replace: the image shown instead of a flagged one (scaled to fit)."),
        Option("blur_radius", float, 0.0, "blur: Gaussian radius in pixels (0: 8% of the longer side).", minimum=0.0),
        Option("pixel_size", int, 0, "pixelate: block size in pixels (0: 16 blocks along the longer side).", minimum=0),
    )
    phases = ("process",)
    changes_pixels = True
    checks_safety = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # flag and drop never touch pixels, so only the other policies may erase a watermark.
        self.changes_pixels = options.get("policy") not in ("flag", "drop")
        self._backend: SafetyBackend | None = None
        self._replacement: Image.Image | None = None

    def check(self, mode: str) -> None:
        if self.runtime is None:
            raise ChainError("the safety stage was built outside a Chain (it has no runtime to find its backend in)")
        runtime = self.runtime
        backend = get_backend(self.options["backend"], runtime)
        defaults = {option.name: option.default for option in type(self).options}
        for name in BACKEND_OPTIONS:
            if name not in backend.uses and self.options[name] != defaults[name]:
                users = [other for other in backend_names(runtime) if name in get_backend(other, runtime).uses]
                raise ChainError(f"option safety:{name} does not apply to backend {backend.name!r} "
                                 f"(it is for {', '.join(users) or 'no installed backend'})")
        for name, policy in _POLICY_OPTIONS.items():
            if self.options["policy"] != policy and self.options[name] != defaults[name]:
                raise ChainError(f"option safety:{name} only applies to policy={policy}")
        if self.options["policy"] == "replace":
            if self.options["image"] is None:
                raise ChainError("safety:policy=replace needs image=PATH (the picture shown instead of a flagged one)")
            from sdmark.core.io import read_image

            try:
                self._replacement = read_image(self.options["image"]).image
            except ImageReadError as exc:
                raise ChainError(f"option safety:image: {exc}") from None
        backend.validate(self.options, mode)

    def setup(self, context: RunContext) -> None:
        """Load the backend (once per run, shared through ``context.cache``) and the replacement image."""
        if self.options["policy"] == "replace" and self._replacement is None:
            self.check(context.mode)
        self._backend = load_backend(self.options["backend"], self.options, context)

    def process(self, items: list[ImageItem], context: RunContext) -> None:
        """Judge the batch, then record each verdict and apply the policy; failures fail the image."""
        if self._backend is None:
            raise StageError("the safety backend was not set up; nothing was checked")
        verdicts = self._judge([item.image for item in items])
        for item, verdict in zip(items, verdicts):
            if isinstance(verdict, str):
                item.fail(f"safety: could not check the image, so it is not written ({verdict})")
                item.record.add(self.name, "process", self.options,
                                {"backend": self._backend.name, "verdict": "error", "error": verdict})
                continue
            item.record.safety = "checked"
            item.record.add(self.name, "process", self.options, self._apply(item, verdict, context))

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
        policy = self.options["policy"]
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
            item.image = policies.blur(item.image, self.options["blur_radius"])
        elif policy == "pixelate":
            item.image = policies.pixelate(item.image, self.options["pixel_size"])
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
