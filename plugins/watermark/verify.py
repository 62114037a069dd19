"""Checking images for watermarks: the Python API behind ``sdmark verify``.

:func:`verify_image` runs schemes on pixels; :func:`verify_file` reads a file safely, runs them and
lets other plugins add to the report through the ``sdmark_inspect_image`` hook. Reports are plain
JSON-ready dicts: ``path``, ``watermarked`` (``None`` when the file could not be read),
``detections`` (the schemes that found something, strongest first), ``checked`` and ``error``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from sdmark.plugins.watermark.schemes import Detection, ImageView, rgb_array, scheme_registry


def select_schemes(names: Sequence[str] = (), all_schemes: bool = False) -> list[Any]:
    """Schemes to run: those named, else every cheap one (every one with ``all_schemes``)."""
    return scheme_registry().select(names, all_schemes)


def detect(image: Any, schemes: Iterable[Any] | None = None) -> list[Detection]:
    """Every scheme's detection on ``image`` (PIL image or ``(H, W, 3|4)`` uint8 array), best first."""
    if schemes is None:
        schemes = select_schemes()
    rgb = rgb_array(image)
    view = ImageView(rgb)
    found = [d for d in (scheme.detect(view) for scheme in schemes) if d is not None]
    return sorted(found, key=lambda d: d.p_value)


def verify_image(image: Any, schemes: Iterable[Any] | None = None) -> dict[str, Any]:
    """The verdict for one image: ``watermarked``, the ``detections`` above band ``none``, ``checked``."""
    schemes = list(schemes) if schemes is not None else select_schemes()
    detections = detect(image, schemes)
    return {
        "watermarked": any(d.watermarked for d in detections),
        "detections": [d.to_json() for d in detections if d.band != "none"],
        "checked": [s.name for s in schemes],
    }


def verify_file(path: Path | str, schemes: Iterable[Any] | None = None, inspect: bool = True) -> dict[str, Any]:
    """Read ``path`` and verify it; a file that cannot be read gives ``watermarked: None`` and ``error``."""
    from sdmark.core.errors import SdmarkError
    from sdmark.core.io import read_image

    report: dict[str, Any] = {"path": str(path), "watermarked": None, "detections": [], "error": None}
    try:
        loaded = read_image(path)
    except SdmarkError as exc:
        report["error"] = str(exc)
        return report
    try:
        report.update(verify_image(loaded.image, schemes))
    except Exception as exc:  # a detector failing on one image must not stop a folder
        report["error"] = f"{path}: verification failed: {type(exc).__name__}: {exc}"
        return report
    if inspect:
        from sdmark.core.plugins import pm

        try:
            pm.hook.sdmark_inspect_image(path=Path(path), image=loaded.image, metadata=loaded.metadata, report=report)
        except Exception as exc:  # a plugin's extra report must not stop a folder or hide the verdict
            report["inspect_error"] = f"{type(exc).__name__}: {exc}"
    return report
