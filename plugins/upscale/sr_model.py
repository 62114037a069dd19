"""Single-image super-resolution models from files (ESRGAN, Real-ESRGAN, SwinIR, ...), via spandrel.

spandrel recognises the architecture and its hyper-parameters from the weights alone. The weights
are read here, not by spandrel's file loader, so that the rules are ours: ``.safetensors`` (plain
tensors, no code) is preferred; pickle-based files (``.pth``, ``.pt``, ``.ckpt``, ``.bin``) go through
``torch.load(weights_only=True)``, PyTorch's unpickler that only rebuilds tensors and containers
and refuses anything that would run code.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdmark.core.errors import ModelLoadError, SdmarkError

if TYPE_CHECKING:
    import torch
    from PIL import Image

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def check_model_file(path: Path) -> None:
    """Raise :class:`ModelLoadError` unless ``path`` is an existing file with a weights suffix."""
    if not path.exists():
        raise ModelLoadError(f"upscale model file {str(path)!r} does not exist")
    if not path.is_file():
        raise ModelLoadError(f"upscale model {str(path)!r} is not a file (give a .safetensors or .pth file)")
    if path.suffix.lower() not in SUFFIXES:
        raise ModelLoadError(f"upscale model {path.name!r}: unsupported file type; use one of {', '.join(SUFFIXES)}")


def read_weights(path: Path) -> dict[str, Any]:
    """Read a weights file into a (possibly nested) dict of tensors, on the CPU, running no code."""
    import torch

    check_model_file(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise ModelLoadError(f"upscale model {path.name!r} is not a valid .safetensors file: {exc}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelLoadError(
            f"upscale model {path.name!r} was refused: it holds Python objects other than tensors, which "
            f"could run code when loaded ({first}). Convert it to .safetensors from a trusted copy."
        ) from None
    except Exception as exc:
        raise ModelLoadError(f"upscale model {path.name!r} is not a readable PyTorch weights file: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict):
        raise ModelLoadError(f"upscale model {path.name!r} holds a {type(state).__name__}, not a dict of weights")
    return state


@dataclass
class SRModel:
    """A loaded super-resolution network, ready to upscale PIL images."""

    descriptor: Any
    name: str
    architecture: str
    scale: int
    device: str
    dtype: torch.dtype
    tiling_allowed: bool

    def describe(self) -> dict[str, Any]:
        """What the record says about the model."""
        return {"file": self.name, "architecture": self.architecture, "scale": self.scale,
                "dtype": str(self.dtype).removeprefix("torch.")}

    def upscale(self, image: Image.Image, tile: int, overlap: int) -> Image.Image:
        """Upscale ``image`` by the model's scale; an alpha channel the model lacks goes through lanczos."""
        import numpy as np
        import torch
        from PIL import Image as PILImage

        from sdmark.plugins.upscale.tiling import run_tiled

        mode = _MODES.get(self.descriptor.input_channels)
        if mode is None:
            raise SdmarkError(f"upscale model {self.name!r} takes {self.descriptor.input_channels} channels; sdmark feeds 1, 3 or 4")
        alpha = image.getchannel("A") if "A" in image.getbands() and mode != "RGBA" else None
        source = image.convert(mode)
        array = np.asarray(source, dtype=np.float32) / 255.0
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(array).permute(2, 0, 1)[None].to(self.device, self.dtype)
        # Tiles start on multiples of what the model needs (2 or 4 for pixel-unshuffle models), so
        # each tile sees the same pixel grouping as the whole image would.
        step = max(1, int(self.descriptor.size_requirements.multiple_of))
        tile, overlap = -(-tile // step) * step, -(-overlap // step) * step
        with torch.inference_mode():
            result = run_tiled(self.descriptor, tensor, self.scale, tile if self.tiling_allowed else 0, overlap)
        pixels = (result[0].clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
        out_mode = _MODES.get(pixels.shape[2], "RGB")
        upscaled = PILImage.fromarray(pixels[:, :, 0] if out_mode == "L" else pixels, out_mode)
        upscaled = upscaled.convert("RGBA" if image.mode == "RGBA" else "RGB")
        if alpha is not None:
            upscaled.putalpha(alpha.resize(upscaled.size, PILImage.Resampling.LANCZOS))
        return upscaled


def pick_model_dtype(requested: str, device: str, descriptor: Any) -> torch.dtype:
    """fp16 on GPUs when the architecture supports it, else fp32; an explicit request must be supported."""
    import torch

    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if requested == "auto":
        gpu = not device.startswith("cpu")
        return torch.float16 if gpu and descriptor.supports_half else torch.float32
    if requested == "fp16" and not descriptor.supports_half:
        raise SdmarkError(f"this {descriptor.architecture.name} model does not support fp16; use dtype=fp32")
    if requested == "bf16" and not descriptor.supports_bfloat16:
        raise SdmarkError(f"this {descriptor.architecture.name} model does not support bf16; use dtype=fp32")
    return table[requested]


def load_sr_model(path: Path, device: str = "cpu", dtype: str = "auto") -> SRModel:
    """Load a super-resolution model file and move it to ``device`` (see :func:`read_weights`).

    Raises :class:`ModelLoadError` for a missing, unreadable or unrecognised file, or a model that
    is not a single-image super-resolution model (inpainting, face restoration, 1x restoration).
    """
    from sdmark.plugins.upscale.spandrel_import import import_spandrel

    path = Path(path)
    state = read_weights(path)
    spandrel = import_spandrel()
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_state_dict(spandrel.canonicalize_state_dict(state))
    except spandrel.UnsupportedModelError:
        raise ModelLoadError(
            f"upscale model {path.name!r}: spandrel does not recognise this architecture; it reads ESRGAN, "
            "Real-ESRGAN, SwinIR, HAT, DAT, OmniSR, SPAN and other single-image super-resolution models"
        ) from None
    except Exception as exc:
        raise ModelLoadError(f"upscale model {path.name!r} could not be built: {type(exc).__name__}: {exc}") from None
    arch = descriptor.architecture.name
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose != "SR":
        raise ModelLoadError(
            f"upscale model {path.name!r} is a {arch} {descriptor.purpose} model, not a single-image super-resolution model"
        )
    torch_dtype = pick_model_dtype(dtype, device, descriptor)
    descriptor.to(device).to(torch_dtype).eval()
    tiling_allowed = descriptor.tiling != spandrel.ModelTiling.INTERNAL
    return SRModel(descriptor=descriptor, name=path.name, architecture=arch, scale=int(descriptor.scale),
                   device=device, dtype=torch_dtype, tiling_allowed=tiling_allowed)
