"""Hyper-parameters of the demo inpainter's training, kept free of torch and diffusers so that
``raydbb train-inpainter --help`` shows the defaults without loading them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from raydbb.errors import ConfigError
from raydbb.models.small_sd_sizes import SmallSDSizes

#: Sizes of the shipped model: 64 px images, 16x16x4 latents, ~1.5 M UNet parameters.
DEFAULT_SIZES: dict[str, Any] = {
    "sample_size": 16,
    "block_channels": (32, 64, 64),
    "layers_per_block": 1,
    # diffusers' UNet2DConditionModel reads this as the number of heads: one head of 32/64 channels
    # is 1.5x faster on a CPU than SD-2's head count at these widths.
    "attention_head_dim": 1,
    "norm_num_groups": 8,
    "vae_channels": (16, 32, 64),
    "vae_layers_per_block": 1,
    "latent_channels": 4,
    "text_hidden": 32,
    "text_layers": 2,
    "text_heads": 2,
    "text_intermediate": 128,
    "text_time_embedding": True,
}


@dataclass(frozen=True)
class InpainterSpec:
    """Hyper-parameters of :func:`train_inpainter` (defaults: the shipped model)."""

    seed: int = 0
    vae_steps: int = 1000
    vae_batch_size: int = 16
    vae_crop: int = 32
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    vae_object_weight: float = 10.0
    vae_logvar_init: float = -6.0
    # Decoder fine-tuning with the encoder frozen (SD's fine-tuned VAE decoders did the same): the
    # latent space a trained UNet works in does not move, so it can follow any VAE phase or --init.
    decoder_steps: int = 0
    decoder_lr: float = 1e-3
    decoder_perceptual_weight: float = 1.0
    unet_steps: int = 6000
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 100
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    prompt_dropout: float = 0.1
    # Extra weight of the hole's latents in the noise-prediction loss: the hole is a few % of the
    # image and all that DDB asks the model to paint; the rest is copied from the masked image.
    hole_loss_weight: float = 4.0
    token_word_prob: float = 0.5
    balance: Literal["group", "class", "none"] = "group"
    # Training data: the unbiased pretraining corpus (``corpus_n`` samples from ``corpus_seed``,
    # plumage odds ``corpus_colours``) or a dataset's train split (``train_inpainter(records=...)``).
    corpus: Literal["pretrain", "dataset"] = "pretrain"
    corpus_n: int = 8000
    corpus_seed: int = 0
    corpus_colours: Literal["benchmark", "uniform"] = "benchmark"
    # Mask mix (the rest are random rectangles/ellipses), each dilated/grown by 0..max_dilate px:
    # the object's own mask; its union with an other-class object's mask centred on it (so the
    # hole's shape does not tell the class: only the prompt does); the object's bounding box.
    object_mask_prob: float = 0.35
    pair_mask_prob: float = 0.3
    box_mask_prob: float = 0.1
    max_dilate: int = 8  # DDB dilates its masks by 6 px at 64 px (demo.yaml)
    sizes: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SIZES))

    def __post_init__(self) -> None:
        if int(self.seed) < 0:
            raise ConfigError(f"seed={self.seed}: expected an integer >= 0")
        if not float(self.hole_loss_weight) >= 0:
            raise ConfigError(f"hole_loss_weight={self.hole_loss_weight}: expected a number >= 0")
        for name in ("lr", "vae_lr", "decoder_lr"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"{name}={getattr(self, name)}: expected a learning rate > 0")
        for name in ("vae_steps", "vae_batch_size", "batch_size", "vae_crop"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: expected an integer >= 1")
        for name in ("unet_steps", "decoder_steps"):  # 0: skip the phase (unet_steps only with init)
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}: expected an integer >= 0")
        if not float(self.decoder_perceptual_weight) >= 0:
            raise ConfigError(f"decoder_perceptual_weight={self.decoder_perceptual_weight}: "
                              "expected a number >= 0")
        for name in ("prompt_dropout", "token_word_prob", "object_mask_prob", "pair_mask_prob",
                     "box_mask_prob"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ConfigError(f"{name}={getattr(self, name)}: expected a probability in [0, 1]")
        total = self.object_mask_prob + self.pair_mask_prob + self.box_mask_prob
        if total > 1.0 + 1e-9:
            raise ConfigError(f"object_mask_prob + pair_mask_prob + box_mask_prob = {total:g}: "
                              "expected at most 1")
        if self.corpus not in ("pretrain", "dataset"):
            raise ConfigError(f"corpus={self.corpus!r}: expected pretrain or dataset")
        if self.corpus_colours not in ("benchmark", "uniform"):
            raise ConfigError(f"corpus_colours={self.corpus_colours!r}: expected benchmark or uniform")
        if int(self.corpus_n) < 1 or int(self.corpus_seed) < 0:
            raise ConfigError(f"corpus_n={self.corpus_n}, corpus_seed={self.corpus_seed}: expected "
                              "corpus_n >= 1 and corpus_seed >= 0")
        if self.balance not in ("group", "class", "none"):
            raise ConfigError(f"balance={self.balance!r}: expected group, class or none")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay={self.ema_decay}: expected a value in [0, 1)")
        unknown = sorted(set(self.sizes) - {f.name for f in dataclasses.fields(SmallSDSizes)})
        if unknown:
            raise ConfigError(f"sizes: unknown field(s) {unknown}; expected SmallSDSizes fields")

    @property
    def model_sizes(self) -> SmallSDSizes:
        """The :class:`SmallSDSizes` of the model to train."""
        return SmallSDSizes(**self.sizes)
