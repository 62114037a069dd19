"""Upscale backends: time per output megapixel, and PSNR of a downscale-then-upscale round trip.

Each real photo (scikit-image) is cropped to a multiple of ``--factor``, shrunk by ``--factor``
with Pillow's lanczos, then brought back to its original size by every backend of the ``upscale``
stage; PSNR is measured against the original. ``lanczos`` is the baseline: the table gives each
backend's time and PSNR relative to it. Backends run interleaved (each photo, each repeat, every
backend in turn) so machine noise hits them alike; times are medians.

The model backends run locally built networks with RANDOM weights (no downloads here): their
PSNR says nothing about the quality of a trained model, only their time is real. ``model (tiny)``
is the 8-feature, 1-block RRDB the tests use; ``model (x4plus size)`` has the layer sizes of
RealESRGAN_x4plus (64 features, 23 blocks) and shows what a real ESRGAN costs on this machine;
``sd-x4``/``sd-latent-x2`` are tiny diffusers components, much cheaper than the released models.

    .venv/bin/python benchmarks/upscale.py [--repeats 3] [--factor 4] [--no-heavy]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data  # noqa: E402

from sdmark.core.chain import Chain  # noqa: E402
from sdmark.core.records import ProvenanceRecord  # noqa: E402
from sdmark.core.stages import DenoiseBatch, ImageItem, RunContext  # noqa: E402
from sdmark.testing.tiny_upscalers import save_tiny_esrgan, save_tiny_latent_upscaler, save_tiny_sd_x4_upscaler  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")
SLOW = {"sd-x4 (tiny, random)"}  # timed on the first repeat only (20 denoising steps per photo)


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = (np.asarray(i.convert("RGB"), dtype=np.float64) for i in (a, b))
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def photos(factor: int) -> dict[str, tuple[Image.Image, Image.Image]]:
    """name -> (original cropped to a multiple of ``factor``, its lanczos-shrunk version)."""
    out = {}
    for name in PHOTOS:
        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        w, h = image.width // factor * factor, image.height // factor * factor
        image = image.crop((0, 0, w, h))
        out[name] = (image, image.resize((w // factor, h // factor), Image.Resampling.LANCZOS))
    return out


def stage_for(spec: str, context: RunContext):
    chain = Chain.build(spec)
    chain.validate(context.mode)
    chain.setup(context)
    return chain.stages[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--no-heavy", action="store_true", help="skip the x4plus-sized RRDB (slow on a CPU)")
    args = parser.parse_args()
    factor = args.factor
    images = photos(factor)
    context = RunContext(mode="process", device="cpu")

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        tiny = save_tiny_esrgan(folder / "tiny-x4.safetensors", scale=4, seed=0)
        x4_dir = save_tiny_sd_x4_upscaler(folder / "sd-x4")
        latent_dir = save_tiny_latent_upscaler(folder / "sd-latent")
        backends = {
            "lanczos": "upscale",
            "opencv linear": "upscale:backend=opencv,interpolation=linear",
            "opencv cubic": "upscale:backend=opencv,interpolation=cubic",
            "opencv lanczos4": "upscale:backend=opencv,interpolation=lanczos4",
            "opencv area": "upscale:backend=opencv,interpolation=area",
            "model (tiny, random)": f"upscale:backend=model,model={tiny}",
            "sd-x4 (tiny, random)": f"upscale:backend=sd-x4,model={x4_dir}",
        }
        heavy = None
        if not args.no_heavy:
            heavy = save_tiny_esrgan(folder / "x4plus-size.safetensors", scale=4, seed=0, features=64, blocks=23)
        stages = {name: stage_for(spec, context) for name, spec in backends.items()}

        times: dict[str, list[float]] = {name: [] for name in backends}
        scores: dict[str, list[float]] = {name: [] for name in backends}
        for name, (original, small) in images.items():
            for repeat in range(args.repeats):
                order = list(backends) if repeat % 2 == 0 else list(reversed(backends))
                for backend in order:
                    if backend in SLOW and repeat:
                        continue
                    stage = stages[backend]
                    stage.options = dataclasses.replace(stage.options, factor=0.0, width=original.width, height=original.height)
                    item = ImageItem(image=small.copy(), record=ProvenanceRecord(kind="processed"), name=name)
                    start = time.perf_counter()
                    stage.process_one(item, context)
                    elapsed = time.perf_counter() - start
                    assert item.image.size == original.size, (backend, item.image.size)
                    times[backend].append(elapsed / (original.width * original.height / 1e6))
                    if repeat == 0:
                        scores[backend].append(psnr(item.image, original))

        extra_rows = []
        if heavy is not None:
            stage = stage_for(f"upscale:backend=model,model={heavy},tile=128", context)
            _, small = images["astronaut"]
            crop = small.crop((0, 0, 64, 64))
            runs = []
            for _ in range(max(1, args.repeats - 1)):
                item = ImageItem(image=crop.copy(), record=ProvenanceRecord(kind="processed"), name="crop")
                start = time.perf_counter()
                stage.process_one(item, context)
                runs.append((time.perf_counter() - start) / (item.image.width * item.image.height / 1e6))
            extra_rows.append(("model (x4plus size, random)", statistics.median(runs), "64x64 crop -> 256x256"))

        # sd-latent-x2 works on latents during generation: timed on SD latents of each shrunk photo's size.
        latent_pipe = stage_for(f"upscale:backend=sd-latent-x2,model={latent_dir}", RunContext(mode="generate", device="cpu"))
        latent_runs = []
        for _name, (_, small) in images.items():
            h, w = small.height // 64 * 8, small.width // 64 * 8  # the latent UNet halves 3 times
            batch = DenoiseBatch(latents=torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(0)), seeds=[0], prompts=["a photo"])
            start = time.perf_counter()
            with torch.inference_mode():
                latent_pipe.after_denoise(batch, RunContext(mode="generate", device="cpu"))
            latent_runs.append((time.perf_counter() - start) / (w * 16 * h * 16 / 1e6))
        extra_rows.append(("sd-latent-x2 (tiny, random)", statistics.median(latent_runs), "latents only, no VAE decode"))

    base_time = statistics.median(times["lanczos"])
    base_psnr = statistics.mean(scores["lanczos"])
    print(f"upscale round trip: {len(images)} scikit-image photos shrunk 1/{factor} with lanczos, upscaled x{factor} back; "
          f"{args.repeats} interleaved repeats, median times, CPU ({torch.get_num_threads()} threads)")
    print("WARNING: model, sd-x4 and sd-latent-x2 run RANDOM weights here: their PSNR is meaningless, only their time is real\n")
    print(f"| {'backend':<28} | {'s per output MP':>15} | {'time vs lanczos':>15} | {'PSNR dB':>8} | {'PSNR vs lanczos':>15} |")
    print(f"|{'-' * 30}|{'-' * 17}|{'-' * 17}|{'-' * 10}|{'-' * 17}|")
    for backend in backends:
        t = statistics.median(times[backend])
        p = statistics.mean(scores[backend])
        print(f"| {backend:<28} | {t:>15.4f} | {t / base_time:>14.2f}x | {p:>8.2f} | {p - base_psnr:>+12.2f} dB |")
    for backend, t, note in extra_rows:
        print(f"| {backend:<28} | {t:>15.4f} | {t / base_time:>14.0f}x | {'n/a':>8} | {'n/a':>15} |  ({note})")
    print("\nper photo PSNR (dB):")
    for i, name in enumerate(images):
        print(f"  {name:<10} " + "  ".join(f"{b.split(' (')[0]}={scores[b][i]:.2f}" for b in backends))


if __name__ == "__main__":
    main()
