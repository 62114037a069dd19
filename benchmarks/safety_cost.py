"""Per-image cost of the safety backends, side by side: nudenet vs sd-clip.

Both judge the same 512x512 photos (scikit-image's) in batches, interleaved in one process so that
machine noise hits both alike; prints the median milliseconds per image of each and their ratio.
sd-clip uses the real checker when --sd-clip-model names a local folder (hub repo layout, or an SD
model folder with safety_checker/); otherwise a random-weight checker of the same architecture
(CLIP ViT-L/14 at 224 px, as CompVis/stable-diffusion-safety-checker), which costs the same.

    .venv/bin/python benchmarks/safety_cost.py [--batch 1 4] [--repeats 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from PIL import Image  # noqa: E402

from sdmark.core.stages import RunContext  # noqa: E402
from sdmark.plugins.safety.backends import SafetyBackend  # noqa: E402
from sdmark.plugins.safety.nudenet_backend import DEFAULT_CLASSES, DEFAULT_THRESHOLD, NudeNetBackend  # noqa: E402
from sdmark.plugins.safety.sdclip_backend import SdClipBackend  # noqa: E402


def photos(count: int) -> list[Image.Image]:
    from skimage import data

    names = ["astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "coins", "moon"]
    images = [Image.fromarray(getattr(data, name)()).convert("RGB").resize((512, 512)) for name in names]
    return [images[i % len(images)] for i in range(count)]


def sd_clip(model: str | None, context: RunContext) -> SafetyBackend:
    if model:
        return SdClipBackend({"model": model, "sensitivity": 0.0}, context)
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(0)
    config = CLIPConfig(
        vision_config={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                       "num_attention_heads": 16, "image_size": 224, "patch_size": 14},
        projection_dim=768,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    return SdClipBackend.from_components(checker, processor, device=context.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sd-clip-model", help="local folder with the real checker (else random weights, same cost)")
    args = parser.parse_args()

    import torch

    from sdmark.core.runtime import Runtime

    context = RunContext(mode="process", device=args.device, runtime=Runtime.load())
    started = time.perf_counter()
    nudenet = NudeNetBackend({"classes": "+".join(DEFAULT_CLASSES), "threshold": DEFAULT_THRESHOLD}, context)
    loaded_nudenet = time.perf_counter() - started
    started = time.perf_counter()
    clip = sd_clip(args.sd_clip_model, context)
    loaded_clip = time.perf_counter() - started
    print(f"device {args.device}, torch threads {torch.get_num_threads()}; load: nudenet {loaded_nudenet:.2f} s, "
          f"sd-clip {loaded_clip:.2f} s ({'real' if args.sd_clip_model else 'random'} weights)")
    backends = {"nudenet": nudenet, "sd-clip": clip}
    for batch in args.batch:
        images = photos(batch)
        for backend in backends.values():  # warm-up: first calls allocate
            backend.check(images)
        times: dict[str, list[float]] = {name: [] for name in backends}
        for _ in range(args.repeats):
            for name, backend in backends.items():
                started = time.perf_counter()
                backend.check(images)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[name].append((time.perf_counter() - started) / batch * 1000)
        medians = {name: statistics.median(values) for name, values in times.items()}
        print(f"batch {batch}: " + ", ".join(f"{name} {ms:.1f} ms/image" for name, ms in medians.items())
              + f"; sd-clip / nudenet = {medians['sd-clip'] / medians['nudenet']:.2f}")


if __name__ == "__main__":
    main()
