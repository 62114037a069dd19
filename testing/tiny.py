"""Tiny Stable Diffusion (1.x and XL) components with seeded random weights, built locally.

They drive the real diffusers classes (UNet, VAE, CLIP text encoder and tokenizer, scheduler)
without downloading anything, so tests, the offline demo and the benchmarks exercise the same code
paths as a real model, including ``save_pretrained``/``from_pretrained``. The images they make are
not pictures of anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def _byte_alphabet() -> list[str]:
    """The printable stand-ins CLIP's byte-level BPE uses for the 256 byte values."""
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for byte in range(256):
        if byte in visible:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def write_tokenizer(folder: Path) -> Path:
    """Write a CLIP BPE tokenizer (every byte, every byte at a word end, a few merges) to ``folder``."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(c + "</w>" for c in alphabet)]:
        vocab.setdefault(token, len(vocab))
    merges = ["t h", "th e</w>", "a n", "i n", "o n</w>", "e r"]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    for token in _SPECIAL:
        vocab[token] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    try:  # transformers >= 5 takes the vocabulary and merges themselves
        tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), **_special_kwargs())
    except TypeError:
        tokenizer = CLIPTokenizer(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"), **_special_kwargs())
    tokenizer.save_pretrained(folder)
    return folder


def _special_kwargs() -> dict[str, Any]:
    return dict(
        bos_token=_SPECIAL[0], eos_token=_SPECIAL[1], pad_token=_SPECIAL[1], unk_token=_SPECIAL[1],
        model_max_length=77,
    )


def build_tiny_pipeline(seed: int = 0, tokenizer_dir: Path | None = None) -> Any:
    """A ``StableDiffusionPipeline`` of tiny random modules: 256x256 images, VAE factor 8."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if tokenizer_dir is None:
        with tempfile.TemporaryDirectory(prefix="sdmark-tokenizer-") as scratch:
            tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(Path(scratch)))
    else:
        tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(tokenizer_dir))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=256, layers_per_block=1,
        block_out_channels=(16, 16, 32, 32), norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, layer_norm_eps=1e-5,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def save_tiny_model(folder: Path, seed: int = 0) -> Path:
    """Build the tiny pipeline and ``save_pretrained`` it to ``folder`` (a diffusers model folder)."""
    folder = Path(folder)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sdmark-tokenizer-") as scratch:
        pipe = build_tiny_pipeline(seed, tokenizer_dir=Path(scratch))
        pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_sdxl_pipeline(
    seed: int = 0,
    tokenizer_dir: Path | None = None,
    *,
    latents_mean: tuple[float, float, float, float] | None = None,
    latents_std: tuple[float, float, float, float] | None = None,
) -> Any:
    """A ``StableDiffusionXLPipeline`` of tiny random modules: 256x256 images, VAE factor 8.

    Two CLIP text encoders (the second with a projection, whose pooled output feeds the UNet's
    ``text_time`` embedding together with the six size/crop ids) share one local tokenizer. The VAE
    keeps SDXL's ``scaling_factor`` and ``force_upcast``; ``latents_mean``/``latents_std`` give it the
    per-channel latent statistics some SDXL-derived models (Playground v2.5) carry, which changes
    how latents are unscaled before decoding. The pipeline is built without diffusers' invisible
    watermarker, as sdmark runs SDXL (:func:`sdmark.core.pipeline.drop_builtin_watermarker`); that
    choice is not saved with the model, so whoever loads the folder makes it again.
    """
    import tempfile

    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if (latents_mean is None) != (latents_std is None):
        raise ValueError("give both latents_mean and latents_std, or neither")
    if tokenizer_dir is None:
        with tempfile.TemporaryDirectory(prefix="sdmark-tokenizer-") as scratch:
            tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(Path(scratch)))
    else:
        tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(tokenizer_dir))
    hidden, projection, time_dim = 32, 32, 8
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2), use_linear_projection=True, norm_num_groups=32,
        # Cross-attention reads both encoders' penultimate hidden states side by side.
        cross_attention_dim=2 * hidden,
        # SDXL's micro-conditioning: six size/crop ids embedded at time_dim each, plus the pooled prompt.
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + projection,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=256, layers_per_block=1,
        block_out_channels=(16, 16, 32, 32), norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.13025, force_upcast=True,
        latents_mean=None if latents_mean is None else list(latents_mean),
        latents_std=None if latents_std is None else list(latents_std),
    )
    text_config = dict(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_config, projection_dim=projection))
    # SDXL base's own scheduler settings (Euler, "leading" spacing), so sampler names match a real model.
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        timestep_spacing="leading", steps_offset=1,
    )
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=unet, scheduler=scheduler, add_watermarker=False,
    )


def save_tiny_sdxl_model(
    folder: Path,
    seed: int = 0,
    *,
    latents_mean: tuple[float, float, float, float] | None = None,
    latents_std: tuple[float, float, float, float] | None = None,
) -> Path:
    """Build the tiny SDXL pipeline and ``save_pretrained`` it to ``folder`` (a diffusers model folder)."""
    import tempfile

    folder = Path(folder)
    with tempfile.TemporaryDirectory(prefix="sdmark-tokenizer-") as scratch:
        pipe = build_tiny_sdxl_pipeline(seed, tokenizer_dir=Path(scratch), latents_mean=latents_mean, latents_std=latents_std)
        pipe.save_pretrained(folder, safe_serialization=True)
    return folder
