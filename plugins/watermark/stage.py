"""The ``watermark`` stage: embed an sdmark mark, then read it back before the image may leave."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sdmark.core.errors import ChainError, StageError
from sdmark.core.stages import ImageItem, RunContext, Stage, StageOptions, option
from sdmark.plugins.watermark.methods import Method, method_names, method_registry
from sdmark.plugins.watermark.schemes import rgb_array

if TYPE_CHECKING:
    from sdmark.core.runtime import Runtime
    from sdmark.plugins.watermark.schemes import Detection


@dataclass(frozen=True)
class WatermarkOptions(StageOptions):
    method: str = option("sdmark", "Embedding method (sdmark: our own, the most robust; see docs/spectral-watermark.md).",
                         choices=method_names)
    id: str = option("auto", "Payload id: 1-16 hex digits, or 'auto' for a random one per image "
                     "(stored in the provenance record).")
    existing: str = option("fail", "An image that already carries a mark (any default scheme): fail (name the "
                           "mark, write nothing), keep (leave it, add none) or replace (add ours over it; recorded).",
                           choices=("fail", "keep", "replace"))


class WatermarkStage(Stage[WatermarkOptions]):
    """Marks each image invisibly and checks the mark reads back.

    Colour images only change in their RGB channels (alpha is kept as it is); pixels beyond the
    largest multiple-of-4 area are untouched. An image too small for the method (each declares its
    floor: 256x256 pixels for invisible-watermark's, 128 a side for sdmark's own) fails with a clear
    error and is not written: nothing leaves this stage unmarked. A method with a strength knob (``sdmark``) is made only as
    strong as it must be for its mark to read back with margin; the strength used is recorded.
    """

    name = "watermark"
    description = "Invisible watermark with an sdmark id; verified by reading it back (see `sdmark verify`)."
    phases = ("process",)
    changes_pixels = True
    embeds_watermark = True

    def _method(self) -> Method:
        if self.runtime is None:
            raise ChainError("the watermark stage was built outside a Chain (it has no runtime to find its method in)")
        try:
            return method_registry(self.runtime).get(self.options.method)
        except KeyError as exc:
            raise ChainError(str(exc.args[0])) from None

    def check(self, mode: str) -> None:
        from sdmark.plugins.watermark import payload

        method = self._method()
        fixed = str(self.options.id).strip().lower() not in ("", "auto")
        if fixed and not method.carries_id:
            raise ChainError(f"option watermark:id: method {method.name} carries no id (only a fixed pattern); "
                             "use method=dwtDctSvd to embed an id")
        if fixed:
            try:
                payload.parse_id(self.options.id)
            except ValueError as exc:
                raise ChainError(f"option watermark:id: {exc}") from None

    def unfit_size(self, width: int, height: int) -> str | None:
        return self._method().unfit(width, height)

    def setup(self, context: RunContext) -> None:
        method = self._method()
        try:
            method.require()
        except RuntimeError as exc:
            raise ChainError(f"watermark:method={method.name}: {exc}") from None
        from sdmark.plugins.watermark.schemes import scheme_registry

        schemes = scheme_registry(context.require_runtime())
        self._scheme = schemes.get(method.scheme)
        # Every default scheme, ours included: a mark already there is never replaced silently.
        self._existing_schemes = schemes.select()

    def process_one(self, item: ImageItem, context: RunContext) -> dict[str, Any]:
        from PIL import Image

        from sdmark.plugins.watermark import payload

        method = self._method()
        image = item.image
        problem = method.unfit(image.width, image.height)
        if problem:
            raise StageError(problem)
        alpha = image.getchannel("A") if image.mode in ("RGBA", "LA", "PA") else None
        rgb = rgb_array(image)
        existing = self._existing_marks(rgb)
        policy = self.options.existing
        if existing and policy == "fail":
            raise StageError(f"the image already carries {_describe(existing)}; not re-marked (watermark:existing=keep "
                             "leaves that mark and adds none, watermark:existing=replace adds ours over it)")
        if existing and policy == "keep":
            return {"method": method.name, "embedded": False, "existing": existing, "existing_policy": "keep",
                    "summary": f"kept {_describe(existing)} already there; no new mark"}
        ident = payload.parse_id(self.options.id) if method.carries_id else b""
        expected = ident.hex() if method.carries_id else None
        marked, detection, strength = self._mark(method, rgb, ident, expected)
        psnr = _psnr(rgb, marked)
        del rgb  # the unmarked copy is not kept while the marked image is built
        out = Image.fromarray(marked, "RGB")
        if alpha is not None:
            out.putalpha(alpha)
        item.image = out
        result: dict[str, Any] = {
            "method": method.name,
            "scheme": method.scheme,
            "payload": expected,
            "id": expected,
            # Which format a method with several wrote (sdmark: format 2, or format 1 where 2 would read poorly).
            "readback": {"band": detection.band, "p_value": detection.p_value,
                         **({"format": detection.details["format"]} if detection.details.get("format") else {})},
            "strength": strength,
            "psnr_db": psnr,
        }
        result["summary"] = f"{method.name} id={expected}" if expected else f"{method.name} (keyed pattern)"
        if strength != 1.0:
            result["summary"] += f", strength {strength:g}"
        if existing:
            result.update(existing=existing, existing_policy="replace")
            result["summary"] += f", over the existing {_describe(existing)}"
        return result

    def _existing_marks(self, rgb: np.ndarray) -> list[dict[str, Any]]:
        """The marks (likely or very likely) that the default schemes find in the input."""
        from sdmark.plugins.watermark.schemes import ImageView

        view = ImageView(rgb)
        found = []
        for scheme in self._existing_schemes:
            detection = scheme.detect(view)
            if detection is not None and detection.watermarked:
                found.append({"scheme": detection.scheme, "payload": detection.payload, "p_value": detection.p_value,
                              "band": detection.band})
        return found

    def _mark(self, method: Method, rgb: np.ndarray, ident: bytes,
              expected: str | None) -> tuple[np.ndarray, Detection, float]:
        """The weakest of ``method.strengths`` whose mark reads back with margin (else the cleanest
        read-back of any), with its detection and strength; :class:`StageError` if none reads back."""
        from sdmark.plugins.watermark.schemes import ImageView

        best: tuple[np.ndarray, Detection, float] | None = None
        attempts = []
        for strength in method.strengths:
            marked = method.mark(rgb, ident, strength)
            detection = self._scheme.detect(ImageView(marked))
            if detection is None or not detection.watermarked or detection.payload != expected:
                attempts.append(f"strength {strength:g}: {_misread(detection, expected)}")
                continue
            if detection.p_value <= method.margin_p():
                return marked, detection, strength
            if best is None or detection.p_value < best[1].p_value:
                best = (marked, detection, strength)
        if best is not None:
            return best
        h, w = rgb.shape[:2]
        if w * h < method.sure_pixels:
            side = round(method.sure_pixels ** 0.5)
            raise StageError(f"{method.name} mark did not read back ({'; '.join(attempts)}); at {w}x{h} the image "
                             f"is too small for it to read reliably (it read back on every image measured from "
                             f"{side}x{side}): upscale it before the watermark stage; not written")
        raise StageError(f"{method.name} mark did not read back ({'; '.join(attempts)}); the image content "
                         "cannot carry it (large flat or saturated areas, or a small image of dense texture?); "
                         "not written")


def _describe(marks: list[dict[str, Any]]) -> str:
    return " and ".join(f"a {m['scheme']} mark" + (f" (payload {m['payload']})" if m.get("payload") else "")
                        + f", p={m['p_value']:.1e}" for m in marks)


def _misread(detection: Detection | None, expected: str | None) -> str:
    if detection is None:
        return "no mark found"
    if detection.watermarked:
        return f"read id {detection.payload}, not {expected}"
    return f"{detection.band}, p={detection.p_value:.2g}"


def check_written_mark(path: Any, item: ImageItem, runtime: Runtime) -> None:
    """Fail the image if the mark its record claims does not read back from the file at ``path``.

    The stage checks its own output, but encoding comes later: JPEG/WebP compression and JPEG's
    flattening of alpha can erase a fragile mark. The file is checked as a reader will see it.
    """
    from sdmark.core.io import read_image
    from sdmark.plugins.watermark.schemes import ImageView, scheme_registry

    from sdmark.core.results import WATERMARK, WatermarkResult, entries_of_kind, stage_kinds

    kinds = stage_kinds(runtime)
    schemes = scheme_registry(runtime)
    # Any watermark stage, whatever it is called, whose result names a scheme installed here.
    marks = [(entry, mark) for entry in entries_of_kind(item.record.stages, WATERMARK, kinds)
             if (mark := WatermarkResult.from_result(entry.result)) is not None and entry.result.get("scheme")
             and mark.scheme in schemes]
    if not marks:
        return
    entry, mark = marks[-1]
    view = ImageView(rgb_array(read_image(path).image))  # the decoded file is dropped once it is an array
    detection = schemes.get(mark.scheme).detect(view)
    expected = entry.result.get("payload")
    if detection is None or not detection.watermarked or detection.payload != expected:
        got = "nothing" if detection is None else f"{detection.band} (p={detection.p_value:.2g})"
        position = max(i for i, e in enumerate(item.record.stages) if e is entry)
        later = list(dict.fromkeys(e.stage for e in item.record.stages[position + 1:] if kinds.get(e.stage) != WATERMARK))
        if later:
            raise StageError(
                f"watermark: the {entry.result.get('method')} mark was erased by {', '.join(map(repr, later))}, "
                f"which changed the pixels after the watermark stage (read back {got}); put "
                f"{', '.join(map(repr, later))} before 'watermark'; not written"
            )
        raise StageError(
            f"watermark: the {entry.result.get('method')} mark does not survive encoding to {path.suffix} "
            f"(read back {got}); raise --quality, write PNG, or use a sturdier method; not written"
        )
    item.checks["file_readback"] = {"stage": entry.stage, "scheme": mark.scheme, "band": detection.band,
                                    "p_value": detection.p_value}


def _psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    # Exact integer sums in strips: the same value as a float64 mean of the whole image (sums of small
    # integers are exact there), without its three full-size float64 copies (72 bytes per pixel).
    total = 0
    rows = max(1, (1 << 18) // max(1, a.shape[1]))
    for top in range(0, a.shape[0], rows):
        diff = np.subtract(a[top:top + rows], b[top:top + rows], dtype=np.int32)
        total += int((diff * diff).sum(dtype=np.int64))
    mse = total / a.size
    return None if mse == 0 else round(float(10.0 * np.log10(255.0**2 / mse)), 2)
