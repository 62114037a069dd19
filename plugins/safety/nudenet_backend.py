"""The ``nudenet`` backend: NudeNet's ONNX body-part detector (ships with the package, works offline).

The detector finds body parts with a score each; an image is unsafe when a detection of one of the
``classes`` option's labels scores at least ``threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdmark.core.errors import ChainError, ModelLoadError
from sdmark.core.options import StageOptions, option
from sdmark.plugins.safety.backends import SafetyBackend, Verdict

if TYPE_CHECKING:
    from PIL import Image

    from sdmark.core.stages import RunContext

LABELS = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
    "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED",
)
"""What NudeNet 3.4's detector (320n.onnx) can report."""

DEFAULT_CLASSES = (
    "FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "BUTTOCKS_EXPOSED", "ANUS_EXPOSED",
)
"""Explicit nudity; covered parts, faces, feet, bellies and male chests do not count by default."""

DEFAULT_THRESHOLD = 0.5
"""NudeNet reports detections from 0.2; benign photos here stay below 0.2 on the default classes."""


def parse_classes(value: str) -> tuple[str, ...]:
    """``"female_breast_exposed+ANUS_EXPOSED"`` -> labels; raises :class:`ChainError` naming valid ones.

    ``+`` separates classes in a chain spec (where a bare comma starts the next option); commas work
    inside quotes and in TOML files.
    """
    parts = value.replace("+", ",").split(",")
    classes = tuple(dict.fromkeys(part.strip().upper() for part in parts if part.strip()))
    unknown = [name for name in classes if name not in LABELS]
    if unknown:
        raise ChainError(f"option safety:classes: unknown NudeNet class {', '.join(unknown)}; valid: {', '.join(LABELS)}")
    if not classes:
        raise ChainError("option safety:classes is empty: name at least one NudeNet class")
    return classes


@dataclass(frozen=True)
class NudeNetOptions(StageOptions):
    threshold: float = option(DEFAULT_THRESHOLD, "minimum detection score that counts as unsafe.", minimum=0.0, maximum=1.0)
    classes: str = option("+".join(DEFAULT_CLASSES), "detector classes that count as unsafe, joined by + (or commas in quotes).")


class NudeNetBackend(SafetyBackend[NudeNetOptions]):
    """NudeNet's detector run with onnxruntime, on CUDA when asked for and onnxruntime-gpu is installed."""

    name = "nudenet"
    description = "NudeNet body-part detector (ONNX, offline); options: classes, threshold"

    @classmethod
    def validate(cls, options: NudeNetOptions, mode: str) -> None:
        parse_classes(options.classes)

    def __init__(self, options: NudeNetOptions, context: RunContext) -> None:
        super().__init__(options, context)
        self.classes = parse_classes(options.classes)
        self.threshold = float(options.threshold)
        try:
            import nudenet
            import onnxruntime
        except ImportError as exc:
            raise ModelLoadError(f"the nudenet backend needs the nudenet package ({exc}); install it with "
                                 "pip install 'sdmark[safety]', or choose another backend: safety:backend=sd-clip") from None
        model = Path(nudenet.__file__).parent / "320n.onnx"
        providers = ["CPUExecutionProvider"]
        if context.device.startswith("cuda"):
            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                context.warn("safety: nudenet runs on the CPU (install onnxruntime-gpu to run it on CUDA)")
        try:
            # Providers are explicit: onnxruntime-gpu refuses a session without them, and
            # NudeDetector() does not pass any.
            session = onnxruntime.InferenceSession(str(model), providers=providers)
        except Exception as exc:
            raise ModelLoadError(f"could not load NudeNet's detector {model}: {type(exc).__name__}: {exc}. "
                                 "Reinstall it with pip install --force-reinstall 'nudenet>=3.4,<3.5'") from None
        self.detector = _detector(nudenet.NudeDetector, session)

    def check(self, images: list[Image.Image]) -> list[Verdict]:
        import numpy as np

        # NudeNet was built on cv2.imread's BGR arrays; giving it the same keeps its scores.
        arrays = [np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1]) for image in images]
        found = self.detector.detect_batch(arrays, batch_size=max(1, len(arrays)))
        if len(found) != len(images):
            raise RuntimeError(f"NudeNet returned {len(found)} results for {len(images)} images")
        return [self._verdict(detections) for detections in found]

    def _verdict(self, detections: list[dict[str, Any]]) -> Verdict:
        scores: dict[str, float] = {}
        for detection in detections:
            label, score = detection["class"], round(float(detection["score"]), 4)
            if label in self.classes and score > scores.get(label, 0.0):
                scores[label] = score
        unsafe = [d for d in detections if d["class"] in self.classes and d["score"] >= self.threshold]
        reasons = sorted(((label, score) for label, score in scores.items() if score >= self.threshold),
                         key=lambda pair: -pair[1])
        details = {
            "threshold": self.threshold,
            "detections": [{"label": d["class"], "score": round(float(d["score"]), 4), "box": list(d["box"])} for d in unsafe],
        }
        return Verdict(flagged=bool(reasons), reasons=reasons, scores=scores, details=details)


def _detector(base: type, session: Any) -> Any:
    """A NudeDetector around our own onnxruntime session (its constructor picks no providers)."""

    class Detector(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:  # noqa: D107 -- same attributes NudeDetector.__init__ sets
            self.onnx_session = session
            self.input_width = self.input_height = 320
            self.input_name = session.get_inputs()[0].name

    return Detector()
