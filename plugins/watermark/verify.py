"""Checking images for watermarks: the Python API behind ``sdmark verify``.

:func:`verify_image` runs schemes on pixels; :func:`verify_file` reads a file safely, runs them and
lets other plugins add to the report through the ``sdmark_inspect_image`` hook. Reports are plain
JSON-ready dicts: ``path``, ``watermarked`` (``None`` when the file could not be read),
``detections`` (the schemes that found something, strongest first, each with ``key``: ``public`` or
``private``), ``checked``, ``expected_marks`` (marks the image's own record names that no scheme
found) and ``error``. No scheme to run is an error, never "unmarked".
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from sdmark.core.errors import SdmarkError
from sdmark.plugins.watermark.schemes import Detection, ImageView, rgb_array, scheme_registry

if TYPE_CHECKING:
    from sdmark.core.runtime import Runtime


class NoSchemeError(SdmarkError):
    """No watermark scheme is available: verify cannot say "unmarked", so it is an error (exit 2)."""

    exit_code = 2


PUBLIC_KEY_MEANING = ("public key: anyone can make or remove this mark; it shows that an sdmark tool was used, "
                      "not by whom")


def _runtime(runtime: Runtime | None) -> Runtime:
    from sdmark.core.runtime import Runtime

    return runtime if runtime is not None else Runtime.load()


def select_schemes(names: Sequence[str] = (), all_schemes: bool = False, runtime: Runtime | None = None) -> list[Any]:
    """Schemes of ``runtime`` (the installed plugins' by default) to run: those named, else every
    cheap one (every one with ``all_schemes``).

    Raises :class:`NoSchemeError` when there are none (the watermark plugin disabled or blocked):
    verify fails closed rather than call every image unmarked.
    """
    runtime = _runtime(runtime)
    if not runtime.has_hook("sdmark_register_watermark_schemes"):
        raise NoSchemeError("no watermark scheme is available (is the watermark plugin disabled, e.g. by "
                            "SDMARK_DISABLE_PLUGINS?): cannot check for marks")
    schemes = scheme_registry(runtime).select(names, all_schemes)
    if not schemes:
        raise NoSchemeError("no watermark scheme is available (is the watermark plugin disabled, e.g. by "
                            "SDMARK_DISABLE_PLUGINS?): cannot check for marks")
    return schemes


def detection_key(scheme: Any) -> str:
    """``public`` or ``private``: who can make (and remove) a mark of this scheme.

    Fixed messages and the DWT payload schemes have no key; the sdmark mark is keyed, with the
    published default key unless ``SDMARK_WATERMARK_KEY`` is set. A third-party scheme says so
    itself with a ``key`` attribute.
    """
    declared = getattr(scheme, "key", None)
    if declared in ("public", "private"):
        return declared
    if getattr(scheme, "name", None) == "sdmark":
        from sdmark.plugins.watermark import spectral
        from sdmark.plugins.watermark.methods import spectral_key

        return "public" if spectral_key() == spectral.PUBLIC_KEY else "private"
    return "public"


def expected_marks(record: dict[str, Any] | None, detections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Marks that the image's own sdmark record (unsigned metadata: a claim) says were embedded but
    that no scheme found here, each with how to check it."""
    if not isinstance(record, dict):
        return []
    found = {d.get("scheme") for d in detections if d.get("band") in ("likely", "very likely")}
    missing = []
    for entry in record.get("stages") or []:
        result = entry.get("result") if isinstance(entry, dict) else None
        if not isinstance(result, dict) or not result.get("scheme") or result.get("embedded") is False:
            continue
        scheme = str(result["scheme"])
        if scheme in found:
            continue
        how = f"sdmark verify --scheme {scheme}"
        if scheme == "sdmark":
            how = "set SDMARK_WATERMARK_KEY to the deployment's key, then sdmark verify (a private-key mark reads only with its key)"
        elif scheme == "rivagan":
            how = "sdmark verify --all-schemes (rivaGan is costly, so not run by default)"
        missing.append({"stage": entry.get("stage"), "scheme": scheme, "payload": result.get("payload"),
                        "method": result.get("method"), "how_to_check": how})
    return missing


def detect(image: Any, schemes: Iterable[Any] | None = None, runtime: Runtime | None = None) -> list[Detection]:
    """Every scheme's detection on ``image`` (PIL image or ``(H, W, 3|4)`` uint8 array), best first."""
    if schemes is None:
        schemes = select_schemes(runtime=runtime)
    rgb = rgb_array(image)
    view = ImageView(rgb)
    found = []
    for scheme in schemes:
        detection = scheme.detect(view)
        if detection is not None:
            detection.details.setdefault("key", detection_key(scheme))
            found.append(detection)
    return sorted(found, key=lambda d: d.p_value)


def verify_image(image: Any, schemes: Iterable[Any] | None = None, runtime: Runtime | None = None) -> dict[str, Any]:
    """The verdict for one image: ``watermarked``, the ``detections`` above band ``none``, ``checked``."""
    schemes = list(schemes) if schemes is not None else select_schemes(runtime=runtime)
    if not schemes:
        raise NoSchemeError("no watermark scheme to run: cannot check for marks")
    detections = detect(image, schemes)
    return {
        "watermarked": any(d.watermarked for d in detections),
        "detections": [d.to_json() for d in detections if d.band != "none"],
        "checked": [s.name for s in schemes],
    }


def verify_file(path: Path | str, schemes: Iterable[Any] | None = None, inspect: bool = True,
                runtime: Runtime | None = None) -> dict[str, Any]:
    """Read ``path`` and verify it; a file that cannot be read gives ``watermarked: None`` and ``error``.

    With ``inspect``, ``runtime``'s plugins add to the report (``sdmark_inspect_image``). Without a
    ``runtime`` the installed plugins are loaded for this call (about 8 ms): pass one
    (``Runtime.load()``) when checking many files, as ``sdmark verify`` does."""
    from sdmark.core.errors import SdmarkError
    from sdmark.core.io import read_image

    own_runtime = runtime is None and (inspect or schemes is None)
    if own_runtime:
        runtime = _runtime(None)
    report: dict[str, Any] = {"path": str(path), "watermarked": None, "detections": [], "error": None}
    try:
        loaded = read_image(path)
    except SdmarkError as exc:
        report["error"] = str(exc)
        return report
    try:
        report.update(verify_image(loaded.image, schemes, runtime))
    except NoSchemeError as exc:
        report["error"] = f"{path}: {exc}"
        return report
    except Exception as exc:  # a detector failing on one image must not stop a folder
        report["error"] = f"{path}: verification failed: {type(exc).__name__}: {exc}"
        return report
    report["expected_marks"] = expected_marks(loaded.metadata.get("record"), report["detections"])
    if inspect:
        try:
            _runtime(runtime).inspect_image(path=Path(path), image=loaded.image, metadata=loaded.metadata, report=report)
        finally:
            if own_runtime and runtime is not None:  # a run of one image: what plugins opened for it ends here
                runtime.close_resources()
    return report
