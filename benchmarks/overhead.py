"""Runner overhead: sdmark's generation runner (empty chain) vs diffusers' own pipeline call.

Both run the same tiny locally-built model with the same seed and settings, interleaved in one
process so that machine noise hits both alike. Prints the median times and the ratio (target <= 1.03),
and checks the images are pixel-identical.

    .venv/bin/python benchmarks/overhead.py [--steps 20] [--repeats 7] [--size 256]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402

from sdmark.core.generate import GenerationSettings, generate  # noqa: E402
from sdmark.core.pipeline import load_pipeline  # noqa: E402
from sdmark.testing.tiny import save_tiny_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        folder = save_tiny_model(Path(scratch) / "tiny")
        ours_pipe = load_pipeline(str(folder), device="cpu", dtype="fp32")
        # The same weights in memory for both sides: only the calling code differs.
        theirs_pipe = StableDiffusionPipeline(**ours_pipe.components)
        theirs_pipe.set_progress_bar_config(disable=True)

        def ours(seed: int) -> np.ndarray:
            settings = GenerationSettings(prompts=["a lighthouse"], seed=seed, steps=args.steps, width=args.size, height=args.size)
            [result] = generate(settings, None, safety="off", pipeline=ours_pipe, progress=False, warn=lambda m: None)
            return np.asarray(result.item.image)

        def theirs(seed: int) -> np.ndarray:
            image = theirs_pipe("a lighthouse", generator=torch.Generator("cpu").manual_seed(seed),
                                num_inference_steps=args.steps, height=args.size, width=args.size).images[0]
            return np.asarray(image)

        assert np.array_equal(ours(0), theirs(0)), "outputs differ: the runner is not faithful"
        times: dict[str, list[float]] = {"diffusers": [], "sdmark": []}
        for repeat in range(args.repeats):
            order = [("diffusers", theirs), ("sdmark", ours)]
            if repeat % 2:
                order.reverse()
            for name, run in order:
                start = time.perf_counter()
                run(repeat + 1)
                times[name].append(time.perf_counter() - start)

    base, mine = statistics.median(times["diffusers"]), statistics.median(times["sdmark"])
    best_base, best_mine = min(times["diffusers"]), min(times["sdmark"])
    print(f"tiny SD, {args.size}x{args.size}, {args.steps} steps, CPU, {args.repeats} interleaved runs")
    print("                                               median     best")
    print(f"  diffusers StableDiffusionPipeline.__call__ : {base * 1000:7.1f} ms {best_base * 1000:7.1f} ms")
    print(f"  sdmark runner, empty chain                 : {mine * 1000:7.1f} ms {best_mine * 1000:7.1f} ms")
    print(f"  ratio sdmark / diffusers                   : {mine / base:7.3f}    {best_mine / best_base:7.3f}"
          "   (target <= 1.03; images identical)")


if __name__ == "__main__":
    main()
