"""Textual inversion of one class token (paper Eq. 1).

A new placeholder token is added to the inpainting model's tokenizer, its embedding row is
initialised from a class noun, and only that row is trained on the class's token pool with the
denoising loss

    L = E_{z_0, ε, t} ‖ε − ε_θ([z_t, m, z_masked], t, τ(prompt))‖²

where ``z_0`` = VAE latents × scaling factor, ``m`` the mask at latent resolution and
``z_masked`` the latents of the image with the masked pixels blanked (the 9-channel input of an
inpainting UNet), and every prompt contains both the token and the dataset's class name.

Only the new row is a trainable parameter: it is spliced into the embedding output by a forward
hook, while the embedding matrix, the rest of the text encoder, the UNet and the VAE keep
``requires_grad=False``. Every other embedding row is therefore bit-identical by construction
(stronger than restoring rows after each step, and the optimiser state is one vector, not V×D).
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raydbb import storage
from raydbb.config import InvertConfig
from raydbb.ddb.inversion.model import InpaintModel
from raydbb.ddb.inversion.pool import PoolImage
from raydbb.ddb.tokens import EMBEDS_FILE
from raydbb.errors import ConfigError, DataError, RaydbbError

CHECKPOINT_PREFIX = "checkpoint-"


def _class_key(class_name: str) -> int:
    return zlib.crc32(class_name.encode("utf-8"))


@dataclass
class MicroBatch:
    """One forward pass: which cached images (and whether flipped), prompts, noise and timesteps."""

    index: torch.Tensor  # (B,) long, into the encoded images
    flip: torch.Tensor  # (B,) bool
    template: torch.Tensor  # (B,) long, into the prompt templates
    noise: torch.Tensor  # (B, C, h, w) float32
    timesteps: torch.Tensor  # (B,) long


@dataclass
class EncodedImages:
    """VAE latents of the token pool (both orientations), cached once: the VAE is frozen."""

    latents: torch.Tensor  # (2, N, C, h, w): [plain, flipped]
    mask: torch.Tensor  # (2, N, 1, h, w)
    masked_latents: torch.Tensor  # (2, N, C, h, w)
    used: list[PoolImage] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


class TokenTrainer:
    """Learns one placeholder token's embedding with the inpainting denoising loss (Eq. 1).

    Construction adds ``token`` to the tokenizer, grows the embedding matrix by one row
    initialised from ``initializer`` and makes that row (:attr:`embedding`) the only trainable
    parameter. Use :meth:`spliced` around forward passes (the training methods do).
    """

    def __init__(self, model: InpaintModel, token: str, initializer: str, class_name: str,
                 cfg: InvertConfig, device: str | torch.device = "cpu") -> None:
        self.model, self.cfg, self.device = model, cfg, torch.device(device)
        self.token, self.class_name = token, class_name
        tok = model.tokenizer
        if tok.add_tokens([token]) != 1:
            raise ConfigError(f"token {token!r} is already in the vocabulary; choose another token")
        init_ids = tok.encode(initializer, add_special_tokens=False)
        if len(init_ids) != 1:
            raise ConfigError(f"initializer {initializer!r} is {len(init_ids)} tokens; expected exactly one")
        self.token_id = tok.convert_tokens_to_ids(token)
        # The new row is overwritten just below; mean resizing would only cost a V x D covariance.
        model.text_encoder.resize_token_embeddings(len(tok), mean_resizing=False)
        table = model.text_encoder.get_input_embeddings()
        with torch.no_grad():
            table.weight[self.token_id] = table.weight[init_ids[0]]
        self.embedding = torch.nn.Parameter(table.weight[init_ids[0]].detach().clone().float())
        self.resolution = cfg.resolution or model.default_resolution
        if self.resolution % model.vae_scale_factor:
            raise ConfigError(f"invert.resolution={self.resolution}: expected a multiple of the VAE "
                              f"downsampling factor {model.vae_scale_factor}")
        prompts = [t.format(token=token, class_name=class_name) for t in cfg.templates]
        self.prompt_ids = tok(prompts, padding="max_length", max_length=tok.model_max_length,
                              truncation=True, return_tensors="pt").input_ids.to(self.device)
        scale = cfg.batch_size * cfg.grad_accum if cfg.scale_lr else 1
        self.optimizer = torch.optim.AdamW([self.embedding], lr=cfg.lr * scale, betas=(0.9, 0.999),
                                           weight_decay=cfg.weight_decay, eps=1e-8)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.mixed_precision == "fp16")
        prediction = model.noise_scheduler.config.prediction_type
        if prediction not in ("epsilon", "v_prediction"):
            raise ConfigError(f"inpaint.model: scheduler prediction_type={prediction!r}; expected epsilon "
                              "or v_prediction")
        self.images: EncodedImages | None = None

    # -- data --------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_images(self, pool: Sequence[PoolImage], mask_mode: str) -> EncodedImages:
        """Read, resize and VAE-encode the pool (plain and flipped) once.

        Unreadable images and empty masks are recorded as skips; no usable image is an error.
        """
        from raydbb.data.images import read_image, read_mask
        from raydbb.models.transforms import mask_to_model, to_model_input

        pixels, masks, used, skipped = [], [], [], []
        for item in pool:
            if item.skip:
                skipped.append({"path": item.path, "reason": item.skip})
                continue
            try:
                image = read_image(item.path)
            except DataError as err:
                skipped.append({"path": item.path, "reason": f"image_read: {err}"})
                continue
            if mask_mode == "object":
                try:
                    mask = mask_to_model(read_mask(item.mask), self.resolution) >= 0.5
                except DataError as err:
                    skipped.append({"path": item.path, "reason": f"mask_read: {err}"})
                    continue
                if not mask.any():
                    skipped.append({"path": item.path, "reason": "empty_mask"})
                    continue
            else:
                mask = torch.ones(self.resolution, self.resolution, dtype=torch.bool)
            pixels.append(to_model_input([image], self.resolution)[0])
            masks.append(mask)
            used.append(item)
        if not used:
            raise DataError(f"class {self.class_name!r}: none of the {len(pool)} token-pool images is usable "
                            f"(first: {skipped[0]['reason']})")
        image = torch.stack(pixels).to(self.device) * 2.0 - 1.0  # (N,3,R,R) in [-1, 1]
        mask = torch.stack(masks).to(self.device, torch.float32)[:, None]  # (N,1,R,R)
        views = [(image, mask), (image.flip(-1), mask.flip(-1))]
        lat, msk, masked = zip(*(self._encode_view(i, m) for i, m in views), strict=True)
        self.images = EncodedImages(torch.stack(lat), torch.stack(msk), torch.stack(masked), used, skipped)
        return self.images

    def _encode_view(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # As StableDiffusionInpaintPipeline prepares its inputs: masked pixels set to 0 (mid-grey),
        # mask resized to the latent grid with nearest-neighbour interpolation.
        masked_image = image * (mask < 0.5)
        side = self.resolution // self.model.vae_scale_factor
        latent_mask = F.interpolate(mask, size=(side, side))
        return self._vae_encode(image), latent_mask, self._vae_encode(masked_image)

    def _vae_encode(self, image: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        vae = self.model.vae
        # The posterior mode, not a sample: cached latents stay deterministic.
        out = [vae.encode(image[i:i + chunk].to(self.model.weight_dtype)).latent_dist.mode()
               for i in range(0, len(image), chunk)]
        return torch.cat(out).float() * vae.config.scaling_factor

    def micro_batch(self, index: int) -> MicroBatch:
        """The ``index``-th micro-batch of the run, a pure function of (seed, class, index).

        Images are drawn in epoch-wise random permutations, so every image is seen once per
        epoch; resuming at any step replays exactly the same stream.
        """
        if self.images is None:
            raise RaydbbError("encode_images() must run before training")
        n = self.images.latents.shape[1]
        b = self.cfg.batch_size
        positions = range(index * b, (index + 1) * b)
        perms: dict[int, np.ndarray] = {}
        picks = []
        for pos in positions:
            epoch = pos // n
            if epoch not in perms:
                perms[epoch] = self._rng("epoch", epoch).permutation(n)
            picks.append(int(perms[epoch][pos % n]))
        gen = torch.Generator().manual_seed(int(self._rng("batch", index).integers(2**63 - 1)))
        flip = (torch.rand(b, generator=gen) < 0.5) if self.cfg.flip else torch.zeros(b, dtype=torch.bool)
        template = torch.randint(len(self.cfg.templates), (b,), generator=gen)
        timesteps = torch.randint(self.model.noise_scheduler.config.num_train_timesteps, (b,), generator=gen)
        noise = torch.randn((b, *self.images.latents.shape[2:]), generator=gen)
        return MicroBatch(torch.tensor(picks), flip, template, noise, timesteps)

    def _rng(self, kind: str, index: int) -> np.random.Generator:
        stream = {"epoch": 0, "batch": 1}[kind]
        return np.random.default_rng([self.cfg.seed, _class_key(self.class_name), stream, index])

    # -- loss and steps ----------------------------------------------------------------------

    @contextmanager
    def spliced(self) -> Iterator[None]:
        """Within the block, the text encoder reads the token's embedding from :attr:`embedding`."""
        table = self.model.text_encoder.get_input_embeddings()

        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            hit = (args[0] == self.token_id)[..., None]
            return torch.where(hit, self.embedding.to(output.dtype), output)

        handle = table.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def loss(self, batch: MicroBatch) -> torch.Tensor:
        """Eq. 1 on one micro-batch: mean squared error of the UNet's noise (or v) prediction."""
        if self.images is None:
            raise RaydbbError("encode_images() must run before computing the loss")
        dev, wd = self.device, self.model.weight_dtype
        view = batch.flip.long().to(dev)
        idx = batch.index.to(dev)
        z0 = self.images.latents[view, idx]
        noise, t = batch.noise.to(dev), batch.timesteps.to(dev)
        sched = self.model.noise_scheduler
        zt = sched.add_noise(z0, noise, t)
        unet_in = torch.cat([zt, self.images.mask[view, idx], self.images.masked_latents[view, idx]], dim=1)
        with self.spliced():
            states = self.model.text_encoder(self.prompt_ids[batch.template.to(dev)])[0]
        with torch.autocast(dev.type, dtype=wd, enabled=wd != torch.float32):
            pred = self.model.unet(unet_in.to(wd), t, encoder_hidden_states=states.to(wd)).sample
        target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(z0, noise, t)
        return F.mse_loss(pred.float(), target.float())

    def step(self, batches: Sequence[MicroBatch]) -> float:
        """One optimiser step over ``batches`` (gradient accumulation); returns the mean loss."""
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for mb in batches:
            loss = self.loss(mb)
            self.scaler.scale(loss / len(batches)).backward()
            total += float(loss.detach())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return total / len(batches)

    def train_step(self, step: int) -> float:
        """Optimiser step number ``step`` (0-based) of the run, on its deterministic micro-batches."""
        a = self.cfg.grad_accum
        return self.step([self.micro_batch(step * a + j) for j in range(a)])

    def learned_embedding(self) -> torch.Tensor:
        """The trained row, (1, D) float32 on the CPU — the tensor ``learned_embeds`` stores."""
        return self.embedding.detach().float().cpu()[None].clone()

    # -- checkpoints -------------------------------------------------------------------------

    def save_checkpoint(self, folder: Path, step: int, losses: list[float], settings: dict[str, Any]) -> None:
        """Write ``checkpoint-<step>`` atomically (a temporary folder renamed into place)."""
        from safetensors.torch import save_file

        final = folder / f"{CHECKPOINT_PREFIX}{step}"
        tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{final.name}."))
        save_file({self.token: self.learned_embedding()}, str(tmp / EMBEDS_FILE))
        state = self.optimizer.state.get(self.embedding, {})
        moments = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(moments, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps(
            {"step": step, "losses": losses, "scaler": self.scaler.state_dict(), "settings": settings}))
        os.chmod(tmp, storage.creation_mode(directory=True))
        os.replace(tmp, final)

    def load_checkpoint(self, path: Path) -> tuple[int, list[float]]:
        """Restore the embedding, optimiser and loss scaler from a checkpoint; returns (step, losses)."""
        from safetensors.torch import load_file

        row = load_file(str(path / EMBEDS_FILE))[self.token]
        with torch.no_grad():
            self.embedding.copy_(row[0].to(self.embedding.device))
        opt_state = load_file(str(path / "optimizer.safetensors"), device=str(self.device))
        if opt_state:
            full = self.optimizer.state_dict()
            full["state"] = {0: {k: (v.cpu() if k == "step" else v) for k, v in opt_state.items()}}
            self.optimizer.load_state_dict(full)
        state = json.loads((path / "state.json").read_text())
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        return int(state["step"]), [float(x) for x in state["losses"]]
