"""invisible-watermark's rivaGan networks, run through onnxruntime without importing the library.

``imwatermark`` imports torch at package import just to reshape arrays; the two ONNX files it ships
are all that rivaGan needs, so this module finds them on disk and runs them on numpy arrays with
the same scaling (pixels to [-1, 1], BGR order, a one-frame "video" axis) and the same
thresholds (decoded bit = output > 0.52; encoded pixels truncated to uint8, as the library does).
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

import numpy as np

BITS = 32
THRESHOLD = 0.52
_sessions: dict[str, Any] = {}
_lock = threading.Lock()


class RivaGanUnavailable(RuntimeError):
    """onnxruntime or invisible-watermark's model files are missing."""


def _model_path(name: str) -> Path:
    spec = importlib.util.find_spec("imwatermark")
    if spec is None or not spec.submodule_search_locations:
        raise RivaGanUnavailable("rivaGan needs invisible-watermark (pip install invisible-watermark)")
    path = Path(next(iter(spec.submodule_search_locations))) / f"rivagan_{name}.onnx"
    if not path.is_file():
        raise RivaGanUnavailable(f"rivaGan model file missing: {path}")
    return path


def session(name: str) -> Any:
    """The ONNX session for ``encoder`` or ``decoder``, loaded once per process."""
    with _lock:
        if name not in _sessions:
            try:
                import onnxruntime
            except ImportError:
                raise RivaGanUnavailable("rivaGan needs onnxruntime (pip install onnxruntime)") from None
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3
            _sessions[name] = onnxruntime.InferenceSession(str(_model_path(name)), options,
                                                           providers=["CPUExecutionProvider"])
        return _sessions[name]


def _frame(rgb: np.ndarray) -> np.ndarray:
    bgr = rgb[:, :, 2::-1].astype(np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(bgr.transpose(2, 0, 1)[None, :, None])


def decode(rgb: np.ndarray) -> np.ndarray:
    """The 32 bits (bool) rivaGan reads from an RGB uint8 image."""
    out = session("decoder").run(None, {"frame": _frame(rgb)})[0][0]
    return out > THRESHOLD


def encode(rgb: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """``rgb`` (uint8, H x W x 3) with the 32 ``bits`` embedded by rivaGan's encoder."""
    data = np.asarray(bits, dtype=np.float32).reshape(1, BITS)
    out = session("encoder").run(None, {"frame": _frame(rgb), "data": data})[0]
    bgr = (np.clip(out[0, :, 0], -1.0, 1.0).transpose(1, 2, 0) + 1.0) * 127.5
    return bgr[:, :, ::-1].astype(np.uint8)
