"""Tiny upscaling models with seeded random weights, built locally for tests, demos and benchmarks.

* :class:`TinyRRDBNet`: an ESRGAN-style RRDB network written from the published architecture, with
  the parameter names of BasicSR/Real-ESRGAN checkpoints, so that a file saved from it is recognised
  by spandrel exactly like a downloaded ``RealESRGAN_x4plus.pth`` (``save_tiny_esrgan``).
* Tiny components for diffusers' ``StableDiffusionUpscalePipeline`` (x4) and
  ``StableDiffusionLatentUpscalePipeline`` (latent x2), saved with ``save_pretrained`` so that the
  code under test loads them through ``from_pretrained`` like a real model folder.

Nothing here downloads anything; the outputs are not meaningful pictures, only the right shapes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sdmark.testing.tiny import write_tokenizer

_GROWTH = 32  # spandrel's ESRGAN loader assumes the standard growth width of 32 channels


class _DenseBlock(nn.Module):
    """Residual dense block: five 3x3 convs, each seeing all previous outputs."""

    conv5: nn.Conv2d  # conv1..conv5 are set by name: spandrel reads ESRGAN weights by these keys

    def __init__(self, features: int) -> None:
        super().__init__()
        widths = [features + i * _GROWTH for i in range(5)]
        for i, width in enumerate(widths, 1):
            setattr(self, f"conv{i}", nn.Conv2d(width, _GROWTH if i < 5 else features, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = [x]
        for i in range(1, 5):
            seen.append(F.leaky_relu(getattr(self, f"conv{i}")(torch.cat(seen, 1)), 0.2))
        return self.conv5(torch.cat(seen, 1)) * 0.2 + x


class _RRDB(nn.Module):
    """Residual-in-residual dense block (three dense blocks and a scaled skip)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = (_DenseBlock(features) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class TinyRRDBNet(nn.Module):
    """ESRGAN generator (RRDB trunk, two nearest-neighbour x2 upsamplings).

    ``scale`` 4 upsamples directly; ``scale`` 2 first folds 2x2 pixels into channels
    (pixel-unshuffle, as Real-ESRGAN x2 does) and then upsamples by 4.
    """

    def __init__(self, scale: int = 4, features: int = 8, blocks: int = 1, channels: int = 3) -> None:
        super().__init__()
        if scale not in (2, 4):
            raise ValueError(f"scale must be 2 or 4; got {scale}")
        self.scale = scale
        in_channels = channels * (4 if scale == 2 else 1)
        self.conv_first = nn.Conv2d(in_channels, features, 3, padding=1)
        self.body = nn.Sequential(*(_RRDB(features) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(features, features, 3, padding=1)
        self.conv_up1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv_up2 = nn.Conv2d(features, features, 3, padding=1)
        self.conv_hr = nn.Conv2d(features, features, 3, padding=1)
        self.conv_last = nn.Conv2d(features, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (N, C, H, W) in [0, 1]; returns (N, C, H*scale, W*scale), not clamped."""
        if self.scale == 2:
            x = F.pixel_unshuffle(x, 2)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for conv in (self.conv_up1, self.conv_up2):
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


def build_tiny_esrgan(scale: int = 4, seed: int = 0, features: int = 8, blocks: int = 1) -> TinyRRDBNet:
    """A :class:`TinyRRDBNet` with weights drawn from ``seed`` (small enough to keep outputs in range)."""
    generator = torch.Generator().manual_seed(seed)
    net = TinyRRDBNet(scale=scale, features=features, blocks=blocks)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            else:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) * (0.5 / fan_in) ** 0.5)
        # A mid-grey bias on the last conv keeps random outputs away from the clamp at 0.
        bias = net.conv_last.bias
        assert bias is not None  # nn.Conv2d has one unless told otherwise
        bias.fill_(0.5)
    return net.eval()


def save_tiny_esrgan(path: Path, scale: int = 4, seed: int = 0, features: int = 8, blocks: int = 1) -> Path:
    """Save a tiny ESRGAN's weights to ``path``: ``.safetensors`` or a plain ``.pth`` state dict.

    The ``.pth`` file holds ``{"params_ema": state_dict}`` as Real-ESRGAN releases do.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.contiguous() for key, value in build_tiny_esrgan(scale, seed, features, blocks).state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    elif path.suffix in (".pth", ".pt", ".ckpt", ".bin"):
        torch.save({"params_ema": state}, path)
    else:
        raise ValueError(f"{path}: use a .safetensors or .pth file name")
    return path


def _text_encoder_and_tokenizer(folder: Path, hidden: int = 32) -> tuple[Any, Any]:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(folder))
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config), tokenizer


def _tiny_vae(levels: int, scaling_factor: float) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(16,) * (levels - 1) + (32,), norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        scaling_factor=scaling_factor, mid_block_add_attention=False,  # attention over every latent pixel is slow
    )


def build_tiny_sd_x4_upscaler(seed: int = 0) -> Any:
    """A ``StableDiffusionUpscalePipeline`` of tiny random modules (x4: its VAE decodes 4x larger)."""
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline, UNet2DConditionModel

    with tempfile.TemporaryDirectory(prefix="sdmark-tokenizer-") as scratch:
        text_encoder, tokenizer = _text_encoder_and_tokenizer(Path(scratch))
    torch.manual_seed(seed)
    # 4 noisy latent channels + the 3 channels of the low-resolution image; the noise level is the
    # class label. This UNet runs at the input image's resolution, so attention only at 1/4 of it.
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=7, out_channels=4, layers_per_block=1, block_out_channels=(32, 32, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32, num_class_embeds=1000,
    )
    vae = _tiny_vae(levels=3, scaling_factor=0.08333)
    low_res_scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02)
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02, prediction_type="v_prediction",
        clip_sample=False, set_alpha_to_one=False,
    )
    return StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        low_res_scheduler=low_res_scheduler, scheduler=scheduler, max_noise_level=350,
    )


def build_tiny_latent_upscaler(seed: int = 0, text_hidden: int = 32) -> Any:
    """A ``StableDiffusionLatentUpscalePipeline`` of tiny random modules (SD latents in, 2x latents out)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionLatentUpscalePipeline, UNet2DConditionModel

    with tempfile.TemporaryDirectory(prefix="sdmark-tokenizer-") as scratch:
        text_encoder, tokenizer = _text_encoder_and_tokenizer(Path(scratch), hidden=text_hidden)
    torch.manual_seed(seed)
    # Same block family as the released sd-x2-latent-upscaler (k-diffusion style blocks, Fourier
    # time embedding conditioned on 128 noise-level features plus the pooled text embedding),
    # 4 latent + 4 conditioning channels in, 4 + 1 out (the last channel is dropped by the pipeline).
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=8, out_channels=5, act_fn="gelu", attention_head_dim=8,
        norm_num_groups=None, block_out_channels=(32, 32, 64, 64), time_cond_proj_dim=128 + text_hidden,
        conv_in_kernel=1, conv_out_kernel=1, cross_attention_dim=text_hidden, layers_per_block=1,
        down_block_types=("KDownBlock2D", "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D"),
        up_block_types=("KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KUpBlock2D"),
        mid_block_type=None, resnet_time_scale_shift="scale_shift", time_embedding_type="fourier",
        timestep_post_act="gelu",
    )
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="sample",
    )
    return StableDiffusionLatentUpscalePipeline(
        vae=_tiny_vae(levels=4, scaling_factor=0.18215), text_encoder=text_encoder, tokenizer=tokenizer,
        unet=unet, scheduler=scheduler,
    )


def save_tiny_sd_x4_upscaler(folder: Path, seed: int = 0) -> Path:
    """Build the tiny x4 upscaler and ``save_pretrained`` it to ``folder`` (a diffusers model folder)."""
    folder = Path(folder)
    build_tiny_sd_x4_upscaler(seed).save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_latent_upscaler(folder: Path, seed: int = 0) -> Path:
    """Build the tiny latent x2 upscaler and ``save_pretrained`` it to ``folder``."""
    folder = Path(folder)
    build_tiny_latent_upscaler(seed).save_pretrained(folder, safe_serialization=True)
    return folder
