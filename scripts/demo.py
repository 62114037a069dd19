"""The offline demo: generate with a tiny local model, process real photos, verify the marks.

    python scripts/demo.py [--out demo-output]   (make demo)

Everything runs on this machine without downloads: the model is a tiny random-weight Stable
Diffusion built locally (its images are noise-like, but every stage runs for real), the photos
are the samples scikit-image ships, the signing identity is a local CA made on the spot. Each step
prints the equivalent ``sdmark`` command.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _run(args: list[str]) -> int:
    from sdmark.cli.main import get_cli

    print(f"\n$ sdmark {shlex.join(args)}", flush=True)
    try:
        get_cli().main(args=args, prog_name="sdmark", standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="sdmark offline demo")
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for everything the demo writes")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    # The demo's signing identity and manifest registry live beside its outputs, not in your home.
    os.environ.setdefault("SDMARK_KEYS_DIR", str(out / "keys"))
    os.environ.setdefault("SDMARK_REGISTRY", str(out / "registry.sqlite"))
    keys = Path(os.environ["SDMARK_KEYS_DIR"])
    model = out / "tiny-model"
    if not (model / "model_index.json").exists():
        from sdmark.testing.tiny import save_tiny_model

        print(f"building a tiny random-weight Stable Diffusion model in {model}", flush=True)
        save_tiny_model(model)
    photos = out / "photos"
    if not photos.exists():
        from PIL import Image
        from skimage import data

        photos.mkdir(parents=True)
        for name in ("astronaut", "coffee", "chelsea", "rocket"):
            Image.fromarray(getattr(data, name)()).convert("RGB").save(photos / f"{name}.png")
    codes = []
    if not (keys / "ca.pem").exists():
        codes.append(_run(["keys", "init", "--dir", str(keys)]))
    codes += [
        _run(["generate", "a lighthouse at dusk, oil painting", "-n", "2", "--seed", "42", "--steps", "10",
              "-m", str(model), "-o", str(out / "generated"), "--overwrite"]),
        _run(["process", str(photos), "-o", str(out / "processed"), "--overwrite"]),
    ]
    verify = _run(["verify", "--trust", str(keys / "ca.pem"), str(out / "generated"), str(out / "processed")])
    print(f"\noutputs: {out / 'generated'} (generated), {out / 'processed'} (photos with the default chain)")
    if any(codes) or verify != 0:
        print("demo: something failed (see above)", file=sys.stderr)
        return 1
    print("demo: ok — every output is safety-checked, watermarked, signed (C2PA) and verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
