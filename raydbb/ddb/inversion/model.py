"""The frozen inpainting model textual inversion trains against: checks and loading.

The checks read only configs (tokenizer, UNet and VAE ``config.json``), so a wrong model is
reported before any weights load.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from raydbb.errors import ConfigError

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@functools.lru_cache(maxsize=4)
def load_tokenizer(model: str) -> Any:
    """The model's tokenizer, read-only: validation runs twice per command and once per test."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model, subfolder="tokenizer")
    except OSError as err:
        raise ConfigError(f"inpaint.model={model!r}: cannot load its tokenizer ({err}); "
                          "expected a diffusers inpainting checkpoint (hub id or local folder)") from err


def _check_inpainting(model: str, in_channels: int, latent_channels: int) -> None:
    if in_channels != 2 * latent_channels + 1:
        raise ConfigError(f"inpaint.model={model!r}: UNet has {in_channels} input channels; expected "
                          f"{2 * latent_channels + 1} (an inpainting UNet: noisy latents, mask, "
                          "masked-image latents)")


def check_model_configs(model: str) -> None:
    """Read only the UNet and VAE configs (no weights) and check the model is an inpainting one."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    try:
        unet = UNet2DConditionModel.load_config(model, subfolder="unet")
        vae = AutoencoderKL.load_config(model, subfolder="vae")
    except (OSError, ValueError) as err:
        raise ConfigError(f"inpaint.model={model!r}: cannot read its unet/vae configs ({err}); expected "
                          "a diffusers inpainting checkpoint (hub id or local folder)") from err
    _check_inpainting(model, int(unet["in_channels"]), int(vae["latent_channels"]))


@dataclass
class InpaintModel:
    """The frozen parts of an inpainting pipeline that textual inversion needs."""

    tokenizer: Any
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    noise_scheduler: Any
    weight_dtype: torch.dtype = torch.float32

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_resolution(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor


def load_inpaint_model(
    model: str, device: str | torch.device = "cpu", mixed_precision: str = "no"
) -> InpaintModel:
    """Load ``model`` (hub id or local folder) with ``StableDiffusionInpaintPipeline.from_pretrained``.

    Frozen UNet and VAE run in fp16/bf16 under mixed precision; the text encoder stays fp32 so the
    trained embedding and its gradients keep full precision.
    """
    from diffusers import DDPMScheduler

    from raydbb.models.inpaint_pipeline import load_inpaint_pipeline

    pipe = load_inpaint_pipeline(model)
    _check_inpainting(model, pipe.unet.config.in_channels, pipe.vae.config.latent_channels)
    weight_dtype = _DTYPES.get(mixed_precision, torch.float32)
    frozen = {"dtype": weight_dtype} if weight_dtype != torch.float32 else {}
    parts = InpaintModel(
        tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder.to(device).float(),
        vae=pipe.vae.to(device, **frozen), unet=pipe.unet.to(device, **frozen),
        # Training noise follows the checkpoint's own schedule (betas, prediction type).
        noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config), weight_dtype=weight_dtype,
    )
    for module in (parts.text_encoder, parts.vae, parts.unet):
        module.requires_grad_(False)
        module.eval()
    return parts
