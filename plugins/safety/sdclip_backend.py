"""The ``sd-clip`` backend: Stable Diffusion's own safety checker, with a sensitivity knob and scores.

diffusers' ``StableDiffusionSafetyChecker`` compares a CLIP image embedding with 17 concept
embeddings (and 3 "special care" ones), each with its own threshold, and only returns booleans
(and a black image). We compute the same scores from the checker's own weights so users see *which*
concept fired and by how much, and so ``sensitivity`` can shift every score (SD's ``adjustment``).
"""

from __future__ import annotations

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
        """The checker and its image processor from local files only: a folder, or the Hugging Face
        cache for a hub id. The hub is never asked (with no network it retries for minutes): weights
        that are not local fail at once, naming every place looked in and how to provide them."""
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        from sdmark.core.pipeline import quiet_loading

        quiet_loading()
        candidates, tried = self._candidates(model, context)
        hub_ids = []
        for label, source, checker_sub, processor_sub in candidates:
            checker_where: dict[str, Any] = {"local_files_only": True, **({"subfolder": checker_sub} if checker_sub else {})}
            processor_where: dict[str, Any] = {"local_files_only": True,
                                               **({"subfolder": processor_sub} if processor_sub else {})}
            try:
                checker = StableDiffusionSafetyChecker.from_pretrained(source, **checker_where)
                processor = CLIPImageProcessor.from_pretrained(source, **processor_where)
            except Exception as exc:  # not in the cache, missing files, wrong format: all mean "try the next"
                if label.startswith("hub id"):
                    hub_ids.append(source)
                    # The loaders' own words for a missing file speak of connecting, which never happened.
                    tried.append(f"{label}: not in the local Hugging Face cache" if isinstance(exc, OSError)
                                 else f"{label}: in the local Hugging Face cache but unreadable ({first_line(exc)})")
                else:
                    tried.append(f"{label} ({first_line(exc)})")
                continue
            return checker, processor
        fetch = "".join(f" `hf download {hub_id}`" for hub_id in dict.fromkeys(hub_ids) if hub_id == DEFAULT_CHECKER)
        raise ModelLoadError(f"could not load the Stable Diffusion safety checker (safety:backend=sd-clip) from local files; "
                             f"tried: {'; '.join(tried)}. The hub is never asked while checking images. "
                             + (f"To fetch it into the cache once, with network access:{fetch}. " if fetch else "") + _HOW_TO)

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


