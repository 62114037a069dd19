"""Attribution that cannot be transplanted: forgeries, edited copies and genuine copies, one confusion table.

Signs and registers photos and flat illustrations through ``sdmark process --chain watermark`` (the
real stage, signer and registry), then verifies, with metadata stripped (pixels only, PNG):

- **transplants**: for every ordered pair of distinct images, the victim's mark estimated from its
  signed file (a high-pass residual, normalised by local contrast, folded over the 128-px tile)
  and added to the other image at 42 dB PSNR; with the public key and with a private
  ``SDMARK_WATERMARK_KEY``;
- **edited copies**: each signed image with a box and "FAKE EDIT" drawn over 10% of it, JPEG 60;
- **local edits** (the attack review's): the most detailed 80 px square blurred (a face) or mirrored,
  a 48 px patch of another image pasted, two lines of text drawn, a 24 px square inverted;
- **genuine copies**: each signed image after each benign attack of the robustness benchmark.

and counts the recovery verdicts (``matched``, ``different-content``, ...). "Shown as its own" is
what ``verify --require-credentials`` accepts: valid embedded credentials, or a clean ``matched``
recovery from a trusted signer. It also prints the content fingerprint's distances (genuine against
unrelated), the cost that recovery adds per image, and (``--fingerprints``) the comparison of PDQ,
pHash and the ISCC image code that chose the fingerprint.

    .venv/bin/python benchmarks/attribution.py                  # 12 photos + 12 illustrations, both keys
    .venv/bin/python benchmarks/attribution.py --images 6       # 3 + 3, quicker
    .venv/bin/python benchmarks/attribution.py --fingerprints   # the fingerprint library comparison only

Output is Markdown on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

TILE = 128
TRANSPLANT_PSNR = 42.0
GENUINE_ATTACKS = ("jpeg50", "webp80", "resize0.5", "crop90", "crop75", "bright0.7", "bright1.3", "contrast0.7",
                   "blur3x3", "caption", "crop90+resize0.75+jpeg75")
VERDICTS = ("matched", "matched, locally edited", "different-content", "inconsistent", "ambiguous", "unverifiable",
            "not-registered", "unmarked", "error")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the attacks ---------------------------------------------------------------------------------


def estimate_mark(marked: np.ndarray, tile: int = TILE) -> np.ndarray:
    """An estimate of a content-agnostic tiled mark from one marked image: the high-pass residual
    of its luma, normalised by local contrast (so edges do not dominate), averaged over every tile."""
    import cv2

    y = marked[..., :3].astype(np.float32).mean(axis=2)
    residual = y - cv2.GaussianBlur(y, (0, 0), 2.0)
    residual /= np.sqrt(cv2.GaussianBlur(residual * residual, (0, 0), 4.0)) + 1.0
    h, w = residual.shape
    tiles = [residual[i:i + tile, j:j + tile] for i in range(0, h - tile + 1, tile) for j in range(0, w - tile + 1, tile)]
    return np.mean(tiles, axis=0)


def transplant(estimate: np.ndarray, target: np.ndarray, psnr: float = TRANSPLANT_PSNR) -> np.ndarray:
    """``target`` with the estimated mark added, tiled from its top-left corner, at ``psnr`` dB."""
    h, w = target.shape[:2]
    tile = estimate.shape[0]
    pattern = np.tile(estimate, (h // tile + 1, w // tile + 1))[:h, :w]
    pattern = pattern * (255 / 10 ** (psnr / 20) / (float(pattern.std()) or 1.0))
    return np.clip(np.rint(target[..., :3].astype(np.float32) + pattern[..., None]), 0, 255).astype(np.uint8)


def draw_edit(image: np.ndarray, rng: np.random.Generator, area: float = 0.10) -> np.ndarray:
    """A red box with "FAKE EDIT" on it over ``area`` of the image, somewhere random."""
    from sdmark.benchmarks.robustness import _font

    out = Image.fromarray(image[..., :3]).copy()
    h, w = image.shape[:2]
    side = int(np.sqrt(area * h * w))
    x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
    draw = ImageDraw.Draw(out)
    draw.rectangle([x, y, x + side, y + side], fill=(200, 30, 30))
    draw.text((x + side // 12, y + side // 3), "FAKE EDIT", fill=(255, 255, 255), font=_font(max(8, side // 6)))
    return np.asarray(out)


def _busiest(image: np.ndarray, side: int) -> tuple[int, int]:
    """Top-left corner of the ``side`` px square with the most detail (where a face would be)."""
    import cv2

    y = image[..., :3].astype(np.float32).mean(axis=2)
    energy = cv2.boxFilter(np.abs(y - cv2.GaussianBlur(y, (0, 0), 2.0)), -1, (side, side), normalize=True)
    h, w = y.shape
    half = side // 2
    inner = energy[half:h - side + half + 1, half:w - side + half + 1]
    row, col = np.unravel_index(int(np.argmax(inner)), inner.shape)
    return int(row), int(col)


def local_edit(image: np.ndarray, kind: str, other: np.ndarray) -> np.ndarray:
    """The attack review's local edits of a 512 px image (each leaves the rest untouched):
    ``face blur`` (the most detailed 80 px square, Gaussian sigma 8), ``patch`` (48 px of another
    image), ``text`` (two lines of 20 px text), ``mirror`` (the most detailed 80 px square flipped),
    ``invert`` (a 24 px square inverted, inside the most detailed area)."""
    import cv2

    from sdmark.benchmarks.robustness import _font

    out = image[..., :3].copy()
    if kind in ("face blur", "mirror"):
        r, c = _busiest(out, 80)
        region = out[r:r + 80, c:c + 80]
        out[r:r + 80, c:c + 80] = cv2.GaussianBlur(region, (0, 0), 8) if kind == "face blur" else region[:, ::-1]
    elif kind == "patch":
        r, c = _busiest(out, 48)
        out[r:r + 48, c:c + 48] = other[200:248, 200:248, :3]
    elif kind == "invert":
        r, c = _busiest(out, 24)
        out[r:r + 24, c:c + 24] = 255 - out[r:r + 24, c:c + 24]
    elif kind == "text":
        picture = Image.fromarray(out)
        draw = ImageDraw.Draw(picture)
        draw.text((24, 300), "PAID $0 FAKE", fill=(255, 255, 255), font=_font(20), stroke_width=1, stroke_fill=(0, 0, 0))
        draw.text((24, 330), "ACCOUNT 1234-5678", fill=(255, 255, 255), font=_font(20), stroke_width=1, stroke_fill=(0, 0, 0))
        out = np.asarray(picture)
    else:
        raise ValueError(kind)
    return out


LOCAL_EDITS = ("face blur", "patch", "text", "mirror", "invert")


# -- running -------------------------------------------------------------------------------------


@contextlib.contextmanager
def environment(**values: str | None):
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def sign_images(images: list[tuple[str, np.ndarray]], folder: Path) -> list[Path]:
    """Write, mark, sign and register each image through ``process`` (the real stage and signer)."""
    from sdmark.core.chain import Chain
    from sdmark.core.output import OutputOptions
    from sdmark.core.process import process_images

    inputs = folder / "inputs"
    inputs.mkdir(parents=True)
    paths = []
    for index, (_, rgb) in enumerate(images):
        path = inputs / f"{index:03d}.png"
        Image.fromarray(rgb).save(path)
        paths.append(path)
    results = process_images(paths, Chain.build("watermark"), OutputOptions(folder / "signed"), safety="off",
                             progress=False, warn=lambda message: None)
    failed = [r for r in results if r.status != "written"]
    if failed:
        raise SystemExit(f"signing failed: {[(r.name, r.error) for r in failed]}")
    return [Path(r.path) for r in results]


def verdict(report: dict) -> str:
    if report.get("error"):
        return "error"
    credentials = report.get("content_credentials") or {}
    recovery = credentials.get("recovery")
    if not report.get("watermarked"):
        return "unmarked"
    if recovery is None:
        return "not-registered" if not credentials.get("present") else "embedded"
    name = recovery.get("verdict") or "error"
    if name == "matched" and "locally edited" in ((recovery.get("matched") or {}).get("content") or {}).get("changes", []):
        return "matched, locally edited"
    return name


def check(rgb: np.ndarray, folder: Path, name: str, schemes: list) -> tuple[str, dict]:
    """Save pixels only, verify, and return the verdict with the report."""
    from sdmark.plugins.watermark.command import meets_credentials
    from sdmark.plugins.watermark.verify import verify_file

    path = folder / f"{name}.png"
    Image.fromarray(rgb).save(path)
    report = verify_file(path, schemes)
    report["_own"] = meets_credentials(report)
    path.unlink()
    return verdict(report), report


def run_key(images: list[tuple[str, np.ndarray]], folder: Path, key: str | None, rng: np.random.Generator) -> dict:
    """Sign, then attack and verify, with one watermark key; returns the tallies."""
    from sdmark.benchmarks.robustness import ATTACKS
    from sdmark.plugins.c2pa.settings import set_trust_anchors
    from sdmark.plugins.watermark.verify import select_schemes

    with environment(SDMARK_WATERMARK_KEY=key):
        log(f"signing {len(images)} images ({'private' if key else 'public'} key)")
        signed = sign_images(images, folder)
        set_trust_anchors([Path(os.environ["SDMARK_KEYS_DIR"]) / "ca.pem"])
        schemes = select_schemes()
        work = folder / "work"
        work.mkdir()
        marked = [np.asarray(Image.open(p).convert("RGB")) for p in signed]
        tallies: dict[str, Counter] = {"transplant": Counter(), "edited": Counter()}
        own = Counter()
        distances: dict[str, list[float]] = {"unrelated": []}
        log("transplants")
        for i, source in enumerate(marked):
            estimate = estimate_mark(source)
            for j, (_, target) in enumerate(images):
                if i == j:
                    continue
                name, report = check(transplant(estimate, target), work, f"t{i}-{j}", schemes)
                tallies["transplant"][name] += 1
                own["transplant"] += report["_own"]
                for c in ((report.get("content_credentials") or {}).get("recovery") or {}).get("candidates", []):
                    if "content" in c:
                        distances["unrelated"].append(c["content"]["distance"])
        log("edited copies")
        for i, image in enumerate(marked):
            rgb = np.asarray(Image.open(_reencode(draw_edit(image, rng), "JPEG", quality=60)))
            name, report = check(rgb, work, f"e{i}", schemes)
            tallies["edited"][name] += 1
            own["edited"] += report["_own"]
        log("local edits")
        for kind in LOCAL_EDITS:
            group = f"local: {kind}"
            tallies[group] = Counter()
            for i, image in enumerate(marked):
                name, report = check(local_edit(image, kind, marked[(i + 1) % len(marked)]), work, f"l{i}", schemes)
                tallies[group][name] += 1
                own[group] += report["_own"]
        log("genuine copies")
        for attack in GENUINE_ATTACKS:
            tallies[attack] = Counter()
            distances[attack] = []
            for i, image in enumerate(marked):
                name, report = check(np.ascontiguousarray(ATTACKS[attack](image, rng)), work, f"g{i}", schemes)
                tallies[attack][name] += 1
                own[attack] += report["_own"]
                chosen = ((report.get("content_credentials") or {}).get("recovery") or {}).get("matched") or {}
                candidates = ((report.get("content_credentials") or {}).get("recovery") or {}).get("candidates") or []
                content = chosen.get("content") or next((c["content"] for c in candidates if "content" in c), None)
                if content:
                    distances[attack].append(content["distance"])
        set_trust_anchors(None)
    return {"tallies": tallies, "own": own, "distances": distances, "signed": signed, "images": images}


def _reencode(rgb: np.ndarray, fmt: str, **options) -> io.BytesIO:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, fmt, **options)
    buffer.seek(0)
    return buffer


def recovery_cost(signed: list[Path], folder: Path, repeats: int = 20) -> dict[str, float]:
    """Per image at 512², one core: ``content_credentials`` for a stripped copy with the registry
    (lookup, manifest check, content comparison) and with it off; milliseconds (the fastest of
    ``repeats`` per image, so that other load on a shared machine does not count, then the median).

    ``per image``: the registry opened and every row's signed manifest read for each image (as
    before, and as a caller without a session still gets); ``session``: one
    :class:`~sdmark.plugins.c2pa.verify.RecoverySession` for the run, as ``sdmark verify`` keeps.
    Every call has the run's runtime (which keeps the SDK's reading context), as in ``verify``."""
    from sdmark.core.runtime import Runtime
    from sdmark.plugins.c2pa.verify import RecoverySession, inspect_credentials
    from sdmark.plugins.c2pa.settings import registry_path
    from sdmark.plugins.watermark.verify import verify_image

    cases = []
    for i, path in enumerate(signed):
        copy = folder / f"cost{i}.png"
        Image.open(path).convert("RGB").save(copy)
        image = Image.open(copy)
        image.load()
        cases.append((copy, image, verify_image(image)["detections"]))
    timings = {}
    runtime = Runtime.load()
    for label, registry in (("per image", os.environ["SDMARK_REGISTRY"]), ("session", os.environ["SDMARK_REGISTRY"]),
                            ("off", "off")):
        with environment(SDMARK_REGISTRY=registry):
            location = registry_path()
            session = RecoverySession(location) if label == "session" and location is not None else None
            runs = []
            for copy, image, detections in cases:
                inspect_credentials(copy, detections, image, session, runtime)  # warm
                best = float("inf")
                for _ in range(repeats):
                    start = time.perf_counter()
                    inspect_credentials(copy, detections, image, session, runtime)
                    best = min(best, time.perf_counter() - start)
                runs.append(best * 1000)
            if session is not None:
                session.close()
            timings[label] = statistics.median(runs)
            runtime.close_resources()  # the next label reads with anchors of its own
    return timings


def cost_line(cost: dict[str, float]) -> str:
    off = cost["off"]
    return (f"Recovery cost per image, 512², one core (lookup, signed-manifest check, content comparison), over "
            f"{off:.2f} ms with the registry off: **+{cost['session'] - off:.2f} ms** with one session per run "
            f"(target <= 5 ms), +{cost['per image'] - off:.2f} ms opening the registry and reading each row per image "
            f"(before); {(cost['per image'] - off) / max(cost['session'] - off, 1e-9):.2f}x")


# -- tables --------------------------------------------------------------------------------------


def confusion(results: dict[str, dict]) -> str:
    rows = ["| copies | key | n | " + " | ".join(VERDICTS) + " | shown as its own |",
            "|---|---|---|" + "---|" * len(VERDICTS) + "---|"]
    for key, result in results.items():
        for group, counter in result["tallies"].items():
            n = sum(counter.values())
            own = result["own"].get(group, 0)
            label = {"transplant": "transplanted (forgery)", "edited": "box + text over 10%, JPEG 60"}.get(
                group, group if group.startswith("local: ") else f"genuine: {group}")
            rows.append(f"| {label} | {key} | {n} | " + " | ".join(str(counter.get(v, 0)) for v in VERDICTS) + f" | {own} |")
    return "\n".join(rows)


def targets(results: dict[str, dict]) -> str:
    lines = []
    for key, result in results.items():
        t = result["tallies"]
        forged = t["transplant"]
        n = sum(forged.values())
        transplanted = n - forged.get("unmarked", 0)
        genuine = Counter()
        for attack in GENUINE_ATTACKS:
            genuine.update(t[attack])
        g = sum(genuine.values())
        g_matched = genuine.get("matched", 0) + genuine.get("matched, locally edited", 0)
        altered = sum(result["own"][g] for g in t if g in ("transplant", "edited") or g.startswith("local: "))
        passed = sum(result["own"][a] for a in GENUINE_ATTACKS)
        lines.append(
            f"- {key} key: forgeries or edited copies (incl. the local edits) shown as their own: {altered} "
            f"(target 0); transplants that carried the mark called different-content: "
            f"{forged.get('different-content', 0)}/{transplanted} ({_pct(forged.get('different-content', 0), transplanted)}; "
            f"target >= 99%), {forged.get('unmarked', 0)} of {n} did not carry the mark at all; "
            f"genuine copies matched {g_matched}/{g} ({_pct(g_matched, g)}; target >= 99%), called different-content "
            f"{genuine.get('different-content', 0)} ({_pct(genuine.get('different-content', 0), g)}; target <= 0.1%); "
            f"genuine copies that pass --require-credentials {passed}/{g} ({_pct(passed, g)}; the rest are matched but "
            "called locally edited: a caption band, or clipped highlights)")
    return "\n".join(lines)


def distance_table(results: dict[str, dict]) -> str:
    rows = ["| copies | n | min | median | p99 / p1 | max |", "|---|---|---|---|---|---|"]
    merged: dict[str, list[float]] = {}
    for result in results.values():
        for name, values in result["distances"].items():
            merged.setdefault(name, []).extend(values)
    for name, values in merged.items():
        if not values:
            continue
        v = np.asarray(values)
        tail = np.percentile(v, 1) if name == "unrelated" else np.percentile(v, 99)
        rows.append(f"| {'unrelated (transplant victim vs forgery)' if name == 'unrelated' else 'genuine: ' + name} | "
                    f"{v.size} | {v.min():.3f} | {np.median(v):.3f} | {tail:.3f} | {v.max():.3f} |")
    return "\n".join(rows)


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.1f}%" if b else "n/a"


def fingerprints(count: int) -> str:
    """PDQ (``pdqhash``), pHash-256 (``imagehash``) and the ISCC image code (``iscc-core``) on whole
    images: largest distance of a genuine copy per attack, smallest to an unrelated image, and cost."""
    from sdmark.benchmarks.robustness import ATTACKS, illustrations, photos
    from sdmark.plugins.c2pa.fingerprint import grey, pdq, thumbnail

    def pdq_thumb(rgb):
        return pdq(thumbnail(grey(rgb)))

    algorithms = {"PDQ over the 64-px thumbnail (chosen)": pdq_thumb}
    with contextlib.suppress(ImportError):
        import pdqhash

        algorithms["PDQ, full image"] = lambda rgb: np.packbits(pdqhash.compute(np.ascontiguousarray(rgb))[0].astype(np.uint8)).tobytes()
    with contextlib.suppress(ImportError):
        import imagehash

        algorithms["pHash-256 (imagehash)"] = lambda rgb: np.packbits(imagehash.phash(Image.fromarray(rgb), hash_size=16).hash.ravel()).tobytes()
    with contextlib.suppress(ImportError):
        import iscc_core

        algorithms["ISCC image code, 256 bits (iscc-core)"] = lambda rgb: iscc_core.soft_hash_image_v0(
            np.asarray(Image.fromarray(rgb).convert("L").resize((32, 32), Image.BICUBIC)).ravel().astype(int).tolist(), 256)
    images = photos(count // 2) + illustrations(count - count // 2)
    rng = np.random.default_rng(5)
    attacked = {a: [np.ascontiguousarray(ATTACKS[a](x, rng)) for _, x in images] for a in GENUINE_ATTACKS}
    rows = ["| fingerprint | ms / image (512²) | unrelated: min | unrelated: p1 | " + " | ".join(GENUINE_ATTACKS) + " |",
            "|---|---|---|---|" + "---|" * len(GENUINE_ATTACKS)]
    for name, function in algorithms.items():
        start = time.perf_counter()
        base = [np.unpackbits(np.frombuffer(function(x), np.uint8)) for _, x in images]
        cost = (time.perf_counter() - start) / len(images) * 1000
        unrelated = [float(np.mean(base[i] != base[j])) for i in range(len(base)) for j in range(i + 1, len(base))]
        worst = [max(float(np.mean(np.unpackbits(np.frombuffer(function(x), np.uint8)) != b)) for x, b in zip(attacked[a], base))
                 for a in GENUINE_ATTACKS]
        rows.append(f"| {name} | {cost:.2f} | {min(unrelated):.3f} | {np.percentile(unrelated, 1):.3f} | "
                    + " | ".join(f"{w:.3f}" for w in worst) + " |")
    return ("Largest distance (share of differing bits) of a genuine copy per attack, whole image, against the "
            f"smallest to an unrelated image; {len(images)} images.\n\n" + "\n".join(rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="images (half photos, half illustrations)")
    parser.add_argument("--keys", default="public,private", help="comma-separated: public, private")
    parser.add_argument("--fingerprints", action="store_true", help="only the fingerprint library comparison")
    parser.add_argument("--cost", action="store_true", help="only the recovery cost (sign --images, time recovery)")
    args = parser.parse_args(argv)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    if args.fingerprints:
        print(fingerprints(args.images))
        return 0
    from sdmark.benchmarks.robustness import illustrations, photos
    from sdmark.plugins.c2pa.identity import create_identity

    images = photos(args.images // 2) + illustrations(args.images - args.images // 2)
    rng = np.random.default_rng(13)
    results = {}
    cost = None
    with tempfile.TemporaryDirectory(prefix="sdmark-attribution-") as tmp:
        root = Path(tmp)
        for key in args.keys.split(","):
            folder = root / key
            with environment(SDMARK_KEYS_DIR=str(root / "keys"), SDMARK_REGISTRY=str(folder / "registry.sqlite"),
                             SDMARK_SIGN=None, SDMARK_SIGN_CERT=None, SDMARK_SIGN_KEY=None):
                if not (root / "keys").exists():
                    create_identity(root / "keys", "Attribution Benchmark", "sdmark")
                if args.cost:
                    with environment(SDMARK_WATERMARK_KEY=None):
                        signed = sign_images(images, folder)
                    cost = recovery_cost(signed, folder)
                    break
                results[key] = run_key(images, folder, "attribution-benchmark-secret" if key == "private" else None, rng)
                if cost is None:
                    cost = recovery_cost(results[key]["signed"], folder)
    if args.cost:
        print(cost_line(cost))
        return 0
    n = len(images)
    print(f"## Attribution: {n} images ({n // 2} photos, {n - n // 2} illustrations), 512², metadata stripped\n")
    print(confusion(results) + "\n")
    print(targets(results) + "\n")
    print("Content fingerprint distance (PDQ bits differing in the aligned region; matched needs <= 0.30 with "
          "correlation >= 0.80, or a compact local edit):\n")
    print(distance_table(results) + "\n")
    if cost:
        print(cost_line(cost))
    return 0


if __name__ == "__main__":
    sys.exit(main())
