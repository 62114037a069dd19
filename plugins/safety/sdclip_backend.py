"""The ``sd-clip`` backend: Stable Diffusion's own safety checker, with a sensitivity knob and scores.

diffusers' ``StableDiffusionSafetyChecker`` compares a CLIP image embedding with 17 concept
embeddings (and 3 "special care" ones), each with its own threshold, and only returns booleans
(and a black image). We compute the same scores from the checker's own weights so users see *which*
concept fired and by how much, and so ``sensitivity`` can shift every score (SD's ``adjustment``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdmark.core.errors import ChainError, ModelLoadError, first_line
from sdmark.core.options import StageOptions, option
from sdmark.core.pipeline import looks_local
from sdmark.plugins.safety.backends import SafetyBackend, Verdict

if TYPE_CHECKING:
    from PIL import Image

    from sdmark.core.stages import RunContext

DEFAULT_CHECKER = "CompVis/stable-diffusion-safety-checker"
SPECIAL_CARE_BUMP = 0.01
"""What SD adds to every concept score once a special-care concept fires."""

_HOW_TO = (
    "Without network access, pass safety:model=FOLDER: a folder saved with save_pretrained() that holds the "
    "checker (config.json and weights) and its preprocessor_config.json (e.g. a local copy of "
    f"{DEFAULT_CHECKER}), or a Stable Diffusion model folder with safety_checker/ and feature_extractor/."
)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "true", "yes")


@dataclass(frozen=True)
class SdClipOptions(StageOptions):
    model: str = option("", "hub id or folder of the checker (default: the model's safety_checker/ "
                        f"during generate, else {DEFAULT_CHECKER}).")
    sensitivity: float = option(0.0, "added to every concept score; >0 flags more, <0 flags less.",
                                minimum=-1.0, maximum=1.0)


class SdClipBackend(SafetyBackend[SdClipOptions]):
    """The SD CLIP checker, loaded from the running model's subfolders or from ``model=``."""

    name = "sd-clip"
    description = "Stable Diffusion's CLIP safety checker; options: model, sensitivity"

    @classmethod
    def validate(cls, options: SdClipOptions, mode: str) -> None:
        model = options.model
        if model and looks_local(model) and not Path(model).expanduser().exists():
            raise ChainError(f"option safety:model: folder {model!r} does not exist")

    def __init__(self, options: SdClipOptions, context: RunContext) -> None:
        super().__init__(options, context)
        self.sensitivity = float(options.sensitivity)
        self.device = context.device
        checker, processor = self._load(options.model, context)
        self._prepare(checker, processor)

    @classmethod
    def from_components(cls, checker: Any, processor: Any, sensitivity: float = 0.0, device: str = "cpu") -> SdClipBackend:
        """A backend around an already loaded checker and processor (benchmarks, notebooks)."""
        backend = cls.__new__(cls)
        backend.options = SdClipOptions(model="", sensitivity=sensitivity)
        backend.sensitivity = sensitivity
        backend.device = device
        backend._prepare(checker, processor)
        return backend

    def _prepare(self, checker: Any, processor: Any) -> None:
        import torch

        self.dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.checker = checker.to(self.device, self.dtype).eval()
        self.processor = processor

    def _candidates(self, model: str, context: RunContext) -> tuple[list[tuple[str, str, str | None, str | None]], list[str]]:
        """(label, source, checker subfolder, processor subfolder) to try in order, and notes on what was skipped."""
        subfolders = ("safety_checker", "feature_extractor")
        if model:
            path = Path(model).expanduser()
            if path.is_dir():
                if (path / "safety_checker").is_dir():
                    return [(f"model folder {model}", str(path), *subfolders)], []
                return [(f"folder {model}", str(path), None, None)], []
            return [(f"hub id {model}", model, None, None), (f"hub id {model} (subfolders)", model, *subfolders)], []
        candidates: list[tuple[str, str, str | None, str | None]] = []
        skipped: list[str] = []
        running = context.model if context.mode == "generate" else None
        if running:
            path = Path(running).expanduser()
            if path.is_dir():
                if (path / "safety_checker").is_dir():
                    candidates.append((f"model folder {running}", str(path), *subfolders))
                else:
                    skipped.append(f"model folder {running} (it has no safety_checker/ subfolder)")
            elif path.is_file():
                skipped.append(f"model file {running} (a single-file model carries no safety checker)")
            else:
                candidates.append((f"hub id {running} (safety_checker/)", running, *subfolders))
        candidates.append((f"hub id {DEFAULT_CHECKER}", DEFAULT_CHECKER, None, None))
        return candidates, skipped

    def _load(self, model: str, context: RunContext) -> tuple[Any, Any]:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        from sdmark.core.pipeline import quiet_loading

        quiet_loading()
        candidates, tried = self._candidates(model, context)
        # Offline first: every candidate from local files (folders, the hub cache) before any network
        # call, so a machine without network finds what it has at once instead of retrying the hub.
        # When the user named a local folder (safety:model= or the running model), the hub is not
        # asked at all: they chose local files.
        local_given = bool(tried) or any(label.startswith(("model folder", "folder")) for label, *_ in candidates)
        passes = [True] if local_given or _offline() else [True, False]
        for local_only in passes:
            for label, source, checker_sub, processor_sub in candidates:
                if not local_only and not label.startswith("hub id"):
                    continue
                where: dict[str, Any] = {"local_files_only": True} if local_only else {}
                checker_where = {**where, **({"subfolder": checker_sub} if checker_sub else {})}
                processor_where = {**where, **({"subfolder": processor_sub} if processor_sub else {})}
                try:
                    checker = StableDiffusionSafetyChecker.from_pretrained(source, **checker_where)
                    processor = CLIPImageProcessor.from_pretrained(source, **processor_where)
                except Exception as exc:  # offline hub, missing files, wrong format: all mean "try the next"
                    if not local_only or not label.startswith("hub id") or not local_given and len(passes) == 1:
                        tried.append(f"{label} ({first_line(exc)})")
                    elif local_given:
                        tried.append(f"{label} (not in the local cache; the hub was not asked because a local "
                                     f"model was given: name it with safety:model={source} to download it)")
                    continue
                return checker, processor
        raise ModelLoadError(f"could not load the Stable Diffusion safety checker (safety:backend=sd-clip); tried: "
                             f"{'; '.join(tried)}. {_HOW_TO}")

    def check(self, images: list[Image.Image]) -> list[Verdict]:
        import torch

        pixels = self.processor(images=[image.convert("RGB") for image in images], return_tensors="pt").pixel_values
        checker = self.checker
        with torch.inference_mode():
            pooled = checker.vision_model(pixels.to(self.device, self.dtype))[1]
            embeds = torch.nn.functional.normalize(checker.visual_projection(pooled).float(), dim=-1)
            special = embeds @ torch.nn.functional.normalize(checker.special_care_embeds.float(), dim=-1).T
            concepts = embeds @ torch.nn.functional.normalize(checker.concept_embeds.float(), dim=-1).T
            special = special - checker.special_care_embeds_weights.float() + self.sensitivity
            # As in diffusers: one special-care hit makes every concept a little more likely to fire.
            bump = (special.round(decimals=3) > 0).any(dim=1, keepdim=True).float() * SPECIAL_CARE_BUMP
            concepts = concepts - checker.concept_embeds_weights.float() + self.sensitivity + bump
        special_rows, concept_rows = special.cpu().tolist(), concepts.cpu().tolist()
        return [self._verdict(s, c) for s, c in zip(special_rows, concept_rows)]

    def _verdict(self, special: list[float], concepts: list[float]) -> Verdict:
        scores = {f"concept_{i:02d}": round(score, 4) for i, score in enumerate(concepts)}
        scores.update({f"special_{i}": round(score, 4) for i, score in enumerate(special)})
        # diffusers compares scores rounded to 3 decimals; so do we, to give the same verdicts.
        reasons = sorted(((f"concept_{i:02d}", round(score, 4)) for i, score in enumerate(concepts) if round(score, 3) > 0),
                         key=lambda pair: -pair[1])
        why = ", ".join(f"{label} {score:+.3f}" for label, score in reasons[:3])
        details = {
            "sensitivity": self.sensitivity,
            "max_score": round(max(concepts), 4),
            "special_care": [f"special_{i}" for i, score in enumerate(special) if round(score, 3) > 0],
        }
        return Verdict(flagged=bool(reasons), reasons=reasons, scores=scores, why=why, details=details)


