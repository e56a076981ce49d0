"""Sizes of the small SD-shaped inpainting models, free of torch and diffusers so that configs and
command-line defaults can name them without loading either."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SmallSDSizes:
    """Sizes of a small SD-shaped inpainting model (defaults: tiny, for tests).

    ``sample_size`` is the UNet's latent side; the pipeline's default image side is
    ``sample_size * 2 ** (len(vae_channels) - 1)``.
    """

    sample_size: int = 32
    block_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    norm_num_groups: int = 32
    vae_channels: tuple[int, ...] = (32, 64)
    vae_layers_per_block: int = 1
    latent_channels: int = 4
    vae_scaling_factor: float = 0.18215
    text_hidden: int = 32
    text_layers: int = 2
    text_heads: int = 2
    text_intermediate: int = 64
    # Pool the prompt's hidden states into the timestep embedding (diffusers' "text" addition
    # embedding), so the prompt reaches every ResNet block, not only the cross-attention layers.
    text_time_embedding: bool = False
    num_train_timesteps: int = 1000

    @property
    def image_size(self) -> int:
        """Default working resolution (pixels) of the pipeline."""
        return self.sample_size * 2 ** (len(self.vae_channels) - 1)
