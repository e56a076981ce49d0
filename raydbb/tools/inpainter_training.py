"""Train a small Stable-Diffusion-2-shaped inpainting model on birds with object masks.

This is how the inpainter shipped in ``raydbb/assets/synthetic_inpainter`` is made (``raydbb
train-inpainter``): the same model family and pipeline class as SD-2 inpainting
(``AutoencoderKL`` + 9-channel ``UNet2DConditionModel`` + CLIP text encoder, loaded with
``StableDiffusionInpaintPipeline``), small enough to train on a laptop CPU, so that the whole DDB
method can be shown working where no pretrained diffusion weights can be downloaded.

Up to three phases, all deterministic from ``seed`` (same torch version and thread count, same
bytes):

1. **VAE.** The ``AutoencoderKL`` (64 px -> 16x16x4 latents by default) is trained on random crops
   (L1 reconstruction + a small KL term); its ``scaling_factor`` is then set to 1 / std of the
   training latents, as for SD.
1b. **Decoder** (``decoder_steps`` > 0). The decoder alone, encoder frozen, on whole images: L1 plus
   a perceptual distance measured by the shipped synthetic backbone (the miniature world's ImageNet
   weights, in the role VGG plays in SD's LPIPS loss). The latents do not change, so this phase can
   sharpen the images of a model whose UNet is already trained (``--init``).
2. **UNet + text encoder.** Standard SD inpainting training: z_0 = VAE latents x scaling factor,
   noise at a uniform DDPM timestep, the UNet sees ``[z_t, mask, masked-image latents]`` and the
   prompt and predicts the noise (MSE). Masks and masked images are prepared exactly as
   ``StableDiffusionInpaintPipeline`` prepares them at inference (binary pixel mask, masked pixels
   set to 0 in [-1, 1], nearest-neighbour mask downsampling). The text encoder is trained too
   (it starts random). An exponential moving average of both is what gets saved.

Masks: the object's own mask dilated by a random disk radius (the DDB case), the object's bounding
box, or random rectangles/ellipses anywhere (generic inpainting). Prompts: one of the textual
inversion templates with the sample's class name, its ``{token}`` slot empty or filled with a random
vocabulary word (so a learned token added later is an extra word the model already tolerates), and
dropped to ``""`` with probability ``prompt_dropout`` for classifier-free guidance.

The class is carried only by the prompt: with object masks the bird is fully hidden and the model
must paint the prompted class.

Training data (``InpainterSpec.corpus``):

- ``"pretrain"`` (the shipped model): the synthetic world's unbiased *pretraining corpus*
  (:func:`raydbb.data.synthetic.render_pretrain_sample`: both birds on land, water, sky, sand, plain
  and clutter backgrounds, class independent of background, a seed namespace disjoint from the
  benchmark). This is the stand-in for SD-2's web-scale pretraining: the model never sees the
  benchmark, so it cannot learn the benchmark's class-background shortcut (asked for a waterbird it
  paints a waterbird, on grass too), as SD-2 had never seen Waterbirds.
- ``"dataset"``: the ``train`` split of a labelled dataset with object masks. On a spuriously
  correlated split (waterbirds on water) the model learns the shortcut and paints the background
  cue into the mask (it did: the earlier shipped model, trained on the benchmark's own split);
  rows are sampled group-balanced by default, *using the split's group labels*, which reduces but
  does not remove that.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionInpaintPipeline
from tqdm import tqdm

from raydbb.config import INVERT_TEMPLATES
from raydbb.data.images import read_image, read_mask
from raydbb.data.records import UNKNOWN, RecordSet
from raydbb.ddb.stages.inpaint import fill_prompt
from raydbb.ddb.stages.mask import dilate_mask
from raydbb.errors import ConfigError, DataError
from raydbb.models.inpaint_pipeline import load_inpaint_pipeline
from raydbb.models.small_sd import build_clip_tokenizer, make_small_inpaint_pipeline
from raydbb.models.transforms import mask_to_model, to_model_input
from raydbb.progress import TenthsLog
from raydbb.storage import build_folder
from raydbb.tools.inpainter_spec import InpainterSpec

TRAINING_RECORD = "raydbb_inpainter.json"
SIZES_RECORD = "raydbb_small_sd.json"  # the file build_small_inpaint_pipeline writes, same layout

@dataclass
class TrainingSet:
    """Training rows in memory at the model's resolution.

    ``images`` uint8 (N,3,S,S); ``masks`` bool (N,S,S) (all False where ``has_mask`` is False);
    ``labels`` int64 (N,); ``weights`` float64 (N,) sampling weights summing to 1.
    """

    images: torch.Tensor
    masks: torch.Tensor
    has_mask: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    class_names: list[str]
    group_counts: dict[str, int]


def sampling_weights(labels: np.ndarray, groups: np.ndarray, balance: str) -> np.ndarray:
    """Per-row sampling probabilities: equal total weight per group, per class, or uniform.

    ``balance="group"`` falls back to classes when any row has no group label.
    """
    n = len(labels)
    if balance == "none" or n == 0:
        return np.full(n, 1.0 / max(n, 1))
    keys = groups if balance == "group" and not (groups == UNKNOWN).any() else labels
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[inverse]
    return weights / weights.sum()


def _counted(items: Iterable[Any], total: int, desc: str, progress: bool) -> Iterator[Any]:
    """``items`` under a progress bar, or, without one, with a log line at each tenth of ``total``."""
    log = TenthsLog(f"{desc}:", total, "images")
    for done, item in enumerate(tqdm(items, total=total, desc=desc, disable=not progress), start=1):
        yield item
        if not progress:
            log(done)


def load_training_set(records: RecordSet, image_size: int, balance: str = "group",
                      progress: bool = True) -> TrainingSet:
    """Read the ``train`` split's images and object masks, resized to ``image_size``.

    Rows without a mask still train (with random masks only). An unreadable image or mask is a
    :class:`DataError` naming the file: the generator is trained once, on a dataset we control.
    """
    frame = records.split("train")
    if frame.empty:
        raise DataError(f"{records.name}: the train split is empty; expected training images")
    images, masks, has_mask = [], [], []
    for row in _counted(frame.itertuples(index=False), len(frame), "read train", progress):
        image = read_image(row.path)
        images.append(to_model_input([image], image_size)[0].mul(255).round().to(torch.uint8))
        if row.mask is None:
            masks.append(torch.zeros(image_size, image_size, dtype=torch.bool))
            has_mask.append(False)
        else:
            m = read_mask(row.mask)
            if m.shape != image.shape[:2]:
                raise DataError(f"mask {row.mask} is {m.shape[1]}x{m.shape[0]} but its image is "
                                f"{image.shape[1]}x{image.shape[0]}; expected the same size")
            masks.append(mask_to_model(m, image_size) >= 0.5)
            has_mask.append(bool(m.any()))
    labels = frame["label"].to_numpy(np.int64)
    groups = frame["group"].to_numpy(np.int64)
    counts = {records.group_name(int(g)) if g != UNKNOWN else records.class_names[int(lab)]: 0
              for g, lab in zip(groups, labels, strict=True)}
    for g, lab in zip(groups, labels, strict=True):
        counts[records.group_name(int(g)) if g != UNKNOWN else records.class_names[int(lab)]] += 1
    return TrainingSet(
        images=torch.stack(images), masks=torch.stack(masks), has_mask=np.asarray(has_mask),
        labels=labels, weights=sampling_weights(labels, groups, balance),
        class_names=list(records.class_names), group_counts=counts,
    )


def pretrain_training_set(spec: InpainterSpec, image_size: int, progress: bool = True) -> TrainingSet:
    """The pretraining corpus as a :class:`TrainingSet`: samples ``0..corpus_n-1`` of
    ``corpus_seed`` drawn at ``image_size`` with their exact object masks.

    Groups are (class, background family); both are drawn uniformly and independently, so
    ``balance`` changes little (it evens out sampling noise in the counts).
    """
    from raydbb.data.synthetic import CLASS_NAMES, PRETRAIN_BACKGROUNDS, render_pretrain_sample

    n = int(spec.corpus_n)
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    masks = torch.empty(n, image_size, image_size, dtype=torch.bool)
    labels, backgrounds = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    for i in _counted(range(n), n, "pretrain corpus", progress):
        s = render_pretrain_sample(spec.corpus_seed, i, image_size, spec.corpus_colours)
        images[i] = torch.from_numpy(s.sample.image).permute(2, 0, 1)
        masks[i] = torch.from_numpy(s.sample.mask)
        labels[i], backgrounds[i] = s.label, s.background
    groups = labels * len(PRETRAIN_BACKGROUNDS) + backgrounds
    k = len(PRETRAIN_BACKGROUNDS)
    counts = {f"{CLASS_NAMES[g // k]}/{PRETRAIN_BACKGROUNDS[g % k]}": int(c)
              for g, c in zip(*np.unique(groups, return_counts=True), strict=True)}
    return TrainingSet(images=images, masks=masks, has_mask=masks.flatten(1).any(1).numpy(), labels=labels,
                       weights=sampling_weights(labels, groups, spec.balance),
                       class_names=list(CLASS_NAMES), group_counts=counts)


def _data_record(spec: InpainterSpec, records: RecordSet | None, data: TrainingSet) -> dict[str, Any]:
    """What the model saw, for ``raydbb_inpainter.json``."""
    common = {"class_names": data.class_names, "train_rows": len(data.labels),
              "rows_with_mask": int(data.has_mask.sum()), "group_counts": data.group_counts}
    if spec.corpus == "pretrain":
        from raydbb.data.synthetic import GENERATOR_VERSION, PRETRAIN_BACKGROUNDS

        return {"name": "synthetic pretraining corpus", "corpus": "pretrain",
                "source": "raydbb.data.synthetic.render_pretrain_sample", "seed": spec.corpus_seed,
                "indices": [0, int(spec.corpus_n)], "colours": spec.corpus_colours,
                "backgrounds": list(PRETRAIN_BACKGROUNDS), "generator_version": GENERATOR_VERSION,
                "benchmark_images_seen": 0, **common}
    return {"name": records.name, "corpus": "dataset", "split": "train", **common}


# ---------------------------------------------------------------------------------------------
# Masks and prompts.


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def _random_shapes(rng: np.random.Generator, size: int) -> np.ndarray:
    """1-3 random axis-aligned rectangles or ellipses, each 1/8 to 5/8 of the side."""
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(1, 4))):
        h, w = rng.integers(size // 8, 5 * size // 8 + 1, size=2)
        cy, cx = rng.uniform(0, size, size=2)
        if rng.random() < 0.5:
            out |= (np.abs(yy + 0.5 - cy) <= h / 2) & (np.abs(xx + 0.5 - cx) <= w / 2)
        else:
            out |= ((yy + 0.5 - cy) / (h / 2)) ** 2 + ((xx + 0.5 - cx) / (w / 2)) ** 2 <= 1.0
    return out


def centred_on(shape: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """``shape``'s foreground moved so its bounding-box centre sits on ``anchor``'s (clipped at the edges)."""
    top, bottom, left, right = _bbox(shape)
    a_top, a_bottom, a_left, a_right = _bbox(anchor)
    dy = (a_top + a_bottom) // 2 - (top + bottom) // 2
    dx = (a_left + a_right) // 2 - (left + right) // 2
    h, w = shape.shape
    out = np.zeros_like(shape, dtype=bool)
    ys, xs = np.nonzero(shape)
    ys, xs = ys + dy, xs + dx
    keep = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    out[ys[keep], xs[keep]] = True
    return out


def training_mask(object_mask: np.ndarray, has_mask: bool, rng: np.random.Generator, spec: InpainterSpec,
                  partner: np.ndarray | None = None) -> np.ndarray:
    """One training mask (bool SxS).

    With an object mask: the object's mask, its union with ``partner`` (another object's mask,
    typically of another class, centred on this object and mirrored half the time), or its
    bounding box — each grown by a random 0..``max_dilate`` px; otherwise random shapes.
    Without a partner the pair share goes to the object's own mask.
    """
    u = rng.random()
    size = object_mask.shape[0]
    grow = int(rng.integers(0, spec.max_dilate + 1))
    if has_mask and u < spec.object_mask_prob + spec.pair_mask_prob:
        mask = object_mask
        if u >= spec.object_mask_prob and partner is not None and partner.any():
            other = partner[:, ::-1] if rng.random() < 0.5 else partner
            mask = object_mask | centred_on(other, object_mask)
        return dilate_mask(mask, grow).astype(bool)
    if has_mask and u < spec.object_mask_prob + spec.pair_mask_prob + spec.box_mask_prob:
        top, bottom, left, right = _bbox(object_mask)
        out = np.zeros_like(object_mask, dtype=bool)
        out[max(top - grow, 0):min(bottom + grow, size - 1) + 1,
            max(left - grow, 0):min(right + grow, size - 1) + 1] = True
        return out
    return _random_shapes(rng, size)


def _filler_words(tokenizer: Any) -> list[str]:
    """Plain lowercase whole words of the CLIP vocabulary (fillers for the ``{token}`` slot)."""
    words = [t[:-4] for t in tokenizer.get_vocab() if t.endswith("</w>") and t[:-4].isalpha()
             and t[:-4].isascii() and len(t) >= 7]
    return sorted(words)


def training_prompt(class_name: str, rng: np.random.Generator, fillers: list[str],
                    spec: InpainterSpec) -> str:
    """A prompt naming ``class_name`` (or ``""`` for classifier-free guidance)."""
    if rng.random() < spec.prompt_dropout:
        return ""
    template = INVERT_TEMPLATES[int(rng.integers(len(INVERT_TEMPLATES)))]
    token = fillers[int(rng.integers(len(fillers)))] if rng.random() < spec.token_word_prob else ""
    return fill_prompt(template, token, class_name)


# ---------------------------------------------------------------------------------------------
# Training.


def _to_signed(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (N,3,S,S) -> float in [-1, 1] (the pipeline's image normalisation)."""
    return images_u8.float().div(127.5).sub(1.0)


def _show_loss(bar: tqdm, log: TenthsLog, step: int, recent: list[float], progress: bool) -> None:
    """The running loss on the progress bar, or, without one, in a log line at each tenth."""
    if progress and step % 20 == 0:
        bar.set_postfix(loss=f"{np.mean(recent):.4f}")
    elif not progress:
        log(step + 1, f" loss {np.mean(recent):.4f}")


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10 %."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


class _EMA:
    """Exponential moving average of parameters, with the usual (1+t)/(10+t) warm-up."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float) -> None:
        self.params = params
        self.shadow = [p.detach().clone() for p in params]
        self.decay = decay
        self.step = 0

    @torch.no_grad()
    def update(self) -> None:
        self.step += 1
        d = min(self.decay, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - d)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for p, s in zip(self.params, self.shadow, strict=True):
            p.copy_(s)


def _partner(data: TrainingSet, partners: dict[int, np.ndarray], label: int,
             rng: np.random.Generator) -> np.ndarray | None:
    """The object mask of a random row of another class (``None`` when there is none)."""
    pool = partners[label]
    return data.masks[int(pool[rng.integers(len(pool))])].numpy() if len(pool) else None


def _sampler(weights: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    while True:
        yield rng.choice(len(weights), size=batch_size, p=weights)


def train_vae(vae: torch.nn.Module, data: TrainingSet, spec: InpainterSpec, rng: np.random.Generator,
              gen: torch.Generator, progress: bool = True) -> list[float]:
    """Phase 1: object-weighted L1 reconstruction + ``kl_weight`` KL on random crops; returns losses.

    The object's pixels (a few % of an image, and all that DDB repaints) weigh ``1 + vae_object_weight``
    in the L1 term, and crops are centred on the object half of the time. The posterior's log-variance
    starts at ``vae_logvar_init`` (small noise): with SD's tiny KL weight the encoder would otherwise
    spend a short training shrinking unit-variance noise while the decoder learns to ignore it.
    """
    size = data.images.shape[-1]
    crop = min(spec.vae_crop, size)
    latent = vae.config.latent_channels
    with torch.no_grad():
        vae.encoder.conv_out.bias[latent:].fill_(spec.vae_logvar_init)
    opt = torch.optim.AdamW(vae.parameters(), lr=spec.vae_lr, weight_decay=0.0)
    batches = _sampler(data.weights, spec.vae_batch_size, rng)
    losses = []
    vae.train()
    bar = tqdm(range(spec.vae_steps), desc="VAE", disable=not progress)
    log = TenthsLog("VAE step", spec.vae_steps)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = spec.vae_lr * _lr_factor(step, spec.vae_steps, spec.warmup_steps)
        idx = next(batches)
        crops, weights = [], []
        for i in idx:
            if data.has_mask[i] and rng.random() < 0.5:
                top, bottom, left, right = _bbox(data.masks[i].numpy())
                cy = (top + bottom) // 2 + int(rng.integers(-crop // 4, crop // 4 + 1))
                cx = (left + right) // 2 + int(rng.integers(-crop // 4, crop // 4 + 1))
                y0, x0 = np.clip([cy - crop // 2, cx - crop // 2], 0, size - crop)
            else:
                y0, x0 = rng.integers(0, size - crop + 1, size=2)
            patch = data.images[i, :, y0:y0 + crop, x0:x0 + crop]
            weight = 1.0 + spec.vae_object_weight * data.masks[i, y0:y0 + crop, x0:x0 + crop].float()
            if rng.random() < 0.5:
                patch, weight = patch.flip(-1), weight.flip(-1)
            crops.append(patch)
            weights.append(weight)
        x = _to_signed(torch.stack(crops))
        w = torch.stack(weights)[:, None]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        l1 = ((recon - x).abs() * w).sum() / (w.sum() * x.shape[1])
        loss = l1 + spec.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), spec.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        _show_loss(bar, log, step, losses[-50:], progress)
    vae.eval()
    return losses


class PerceptualDistance(torch.nn.Module):
    """Mean relative L1 distance between the activations of the shipped synthetic backbone
    (:data:`~raydbb.models.classifier.SYNTHETIC_BACKBONE`, frozen) after its stem and each stage,
    for images in [-1, 1]. The backbone was trained on the pretraining corpus only."""

    LAYERS = (0, 1, 3, 5)

    def __init__(self) -> None:
        super().__init__()
        from safetensors.torch import load_file

        from raydbb.models.classifier import IMAGENET_MEAN, IMAGENET_STD, SYNTHETIC_BACKBONE, small_cnn

        weights = load_file(str(SYNTHETIC_BACKBONE))
        last = max(self.LAYERS)
        self.net = small_cnn(int(weights["0.0.weight"].shape[0]))[0][: last + 1]
        self.net.load_state_dict({k: v for k, v in weights.items() if int(k.split(".")[0]) <= last})
        self.net.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[:, None, None])
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[:, None, None])

    def _activations(self, images: torch.Tensor) -> list[torch.Tensor]:
        h, out = ((images + 1) / 2 - self.mean) / self.std, []
        for i, layer in enumerate(self.net):
            h = layer(h)
            if i in self.LAYERS:
                out.append(h)
        return out

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pairs = zip(self._activations(images), self._activations(targets), strict=True)
        return sum((a - b).abs().mean() / b.abs().mean().clamp_min(1e-3) for a, b in pairs) / len(self.LAYERS)


def finetune_decoder(vae: torch.nn.Module, data: TrainingSet, spec: InpainterSpec, rng: np.random.Generator,
                     gen: torch.Generator, progress: bool = True) -> list[float]:
    """Phase 1b: the VAE decoder alone on whole images, encoder frozen; returns per-step losses.

    Object-weighted L1 (as :func:`train_vae`) + ``decoder_perceptual_weight`` x
    :class:`PerceptualDistance`. L1 alone averages texture away (the first decoder painted grass as
    a smooth green wash); the perceptual term asks for the backbone's edges and textures too.
    """
    decoder = [p for name, p in vae.named_parameters() if name.startswith(("decoder.", "post_quant_conv."))]
    vae.requires_grad_(False)
    for p in decoder:
        p.requires_grad_(True)
    perceptual = PerceptualDistance()
    opt = torch.optim.AdamW(decoder, lr=spec.decoder_lr, weight_decay=0.0)
    batches = _sampler(data.weights, spec.vae_batch_size, rng)
    losses = []
    vae.eval()
    vae.decoder.train()
    bar = tqdm(range(spec.decoder_steps), desc="decoder", disable=not progress)
    log = TenthsLog("decoder step", spec.decoder_steps)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = spec.decoder_lr * _lr_factor(step, spec.decoder_steps, spec.warmup_steps)
        idx = next(batches)
        x = _to_signed(data.images[idx])
        w = 1.0 + spec.vae_object_weight * data.masks[idx].float()[:, None]
        if rng.random() < 0.5:
            x, w = x.flip(-1), w.flip(-1)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator=gen)
        recon = vae.decode(z).sample
        l1 = ((recon - x).abs() * w).sum() / (w.sum() * x.shape[1])
        loss = l1 + spec.decoder_perceptual_weight * perceptual(recon, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder, spec.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        _show_loss(bar, log, step, losses[-50:], progress)
    vae.eval()
    vae.requires_grad_(False)
    return losses


@torch.no_grad()
def encode_all(vae: torch.nn.Module, images_u8: torch.Tensor,
               batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image (rows 0..N-1) and of its mirror image (rows N..2N-1)."""
    means, stds = [], []
    for flip in (False, True):
        for start in range(0, len(images_u8), batch):
            x = _to_signed(images_u8[start:start + batch])
            dist = vae.encode(x.flip(-1) if flip else x).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def latent_scaling_factor(means: torch.Tensor, stds: torch.Tensor, gen: torch.Generator) -> float:
    """1 / std of sampled training latents (SD's recipe for ``vae.config.scaling_factor``)."""
    sample = means + stds * torch.randn(means.shape, generator=gen)
    return float(1.0 / sample.flatten().std())


def train_denoiser(pipe: StableDiffusionInpaintPipeline, data: TrainingSet, spec: InpainterSpec,
                   rng: np.random.Generator, gen: torch.Generator,
                   posterior: tuple[torch.Tensor, torch.Tensor], progress: bool = True) -> list[float]:
    """Phase 2: SD inpainting noise-prediction training of UNet + text encoder; returns per-step losses.

    ``posterior`` = :func:`encode_all` of ``data.images`` with the trained VAE. Leaves the EMA
    weights in ``pipe.unet`` and ``pipe.text_encoder``.
    """
    vae, unet, text_encoder, tokenizer = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer
    sf = float(vae.config.scaling_factor)
    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)  # same betas as the sampler
    means, stds = posterior
    n = len(data.images)
    fillers = _filler_words(tokenizer)
    # Per class: the rows of the other classes that have a mask (partners of pair masks).
    partners = {int(c): np.flatnonzero(data.has_mask & (data.labels != c)) for c in np.unique(data.labels)}
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=1e-2)
    ema = _EMA(params, spec.ema_decay)
    batches = _sampler(data.weights, spec.batch_size, rng)
    latent_side = data.images.shape[-1] // pipe.vae_scale_factor
    losses = []
    unet.train()
    text_encoder.train()
    bar = tqdm(range(spec.unet_steps), desc="UNet", disable=not progress)
    log = TenthsLog("UNet step", spec.unet_steps)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = spec.lr * _lr_factor(step, spec.unet_steps, spec.warmup_steps)
        idx = next(batches)
        flip = rng.random(len(idx)) < 0.5
        images = torch.stack([data.images[i].flip(-1) if f else data.images[i]
                              for i, f in zip(idx, flip, strict=True)])
        masks = np.stack([training_mask(data.masks[i].numpy(), bool(data.has_mask[i]), rng, spec,
                                        _partner(data, partners, int(data.labels[i]), rng))
                          for i in idx])
        masks = torch.from_numpy(masks)
        masks = torch.where(torch.from_numpy(flip)[:, None, None], masks.flip(-1), masks)
        mask = masks[:, None].float()
        prompts = [training_prompt(data.class_names[data.labels[i]], rng, fillers, spec) for i in idx]
        rows = torch.from_numpy(idx + n * flip)
        with torch.no_grad():
            latents = (means[rows] + stds[rows] * torch.randn(means[rows].shape, generator=gen)) * sf
            # As StableDiffusionInpaintPipeline: masked pixels -> 0 in [-1, 1], nearest-downsampled mask.
            masked = _to_signed(images) * (mask < 0.5)
            masked_latents = vae.encode(masked).latent_dist.sample(generator=gen) * sf
            mask_latent = F.interpolate(mask, size=(latent_side, latent_side))
            ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (len(idx),), generator=gen)
        noisy = noise_schedule.add_noise(latents, noise, t)
        hidden = text_encoder(ids)[0]
        pred = unet(torch.cat([noisy, mask_latent, masked_latents], dim=1), t, hidden).sample
        weight = 1.0 + spec.hole_loss_weight * mask_latent
        loss = (weight * (pred - noise) ** 2).mean() / weight.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
        opt.step()
        ema.update()
        losses.append(float(loss.detach()))
        _show_loss(bar, log, step, losses[-100:], progress)
    ema.copy_to_params()
    unet.eval()
    text_encoder.eval()
    return losses


def train_inpainter(records: RecordSet | None, out_dir: str | Path, spec: InpainterSpec | None = None,
                    progress: bool = True, overwrite: bool = False, init: str | Path | None = None) -> Path:
    """Train the small inpainting pipeline and save it to ``out_dir``.

    The data is the pretraining corpus (``spec.corpus == "pretrain"``, the default; ``records``
    must then be ``None``) or ``records``' train split (``spec.corpus == "dataset"``).

    The folder loads with ``StableDiffusionInpaintPipeline.from_pretrained(out_dir)`` (safetensors
    weights) and also holds ``raydbb_small_sd.json`` (sizes) and ``raydbb_inpainter.json`` (how it
    was trained: spec, data, losses, timings). It is built next to ``out_dir`` and moved into place
    when complete; an existing non-empty ``out_dir`` is a :class:`ConfigError` unless ``overwrite``
    (then it is replaced only once the new model is complete). Returns ``out_dir``.

    ``init``: a folder this function wrote earlier, to train further. Its VAE encoder, scaling
    factor and tokenizer are kept (the latent space must not move under a trained UNet), the VAE
    phase is skipped, the decoder is fine-tuned for ``spec.decoder_steps`` steps, and the UNet +
    text encoder continue for ``spec.unet_steps`` steps (0: keep them as they are) with a fresh
    learning-rate schedule; its record is nested under ``"init"`` in the new one.
    """
    spec = spec or InpainterSpec()
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    if (spec.corpus == "dataset") != (records is not None):
        given = "given" if records is not None else "None"
        raise ConfigError(f"corpus={spec.corpus!r} with records={given}: "
                          "expected records for corpus 'dataset' and none for corpus 'pretrain'")
    if spec.unet_steps == 0 and init is None:
        raise ConfigError("unet_steps=0 without init: expected a UNet to train (--steps >= 1) or a "
                          "trained model to start from (--init)")
    sizes = spec.model_sizes
    # Checked before the corpus is drawn (minutes for 16 000 images): a wrong --init fails at once.
    init_record = _init_record(init, sizes) if init is not None else None
    if spec.corpus == "pretrain":
        data = pretrain_training_set(spec, sizes.image_size, progress=progress)
    else:
        data = load_training_set(records, sizes.image_size, spec.balance, progress=progress)
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(8,)))
    gen = torch.Generator().manual_seed(spec.seed)
    with build_folder(out) as tmp:
        t0 = time.perf_counter()
        if init_record is None:
            tokenizer = build_clip_tokenizer(tmp / "tokenizer")
            pipe = make_small_inpaint_pipeline(tokenizer, seed=spec.seed, **spec.sizes)
            vae_losses = train_vae(pipe.vae, data, spec, rng, gen, progress)
        else:
            pipe = load_inpaint_pipeline(str(init))
            vae_losses = []
        decoder_losses = (finetune_decoder(pipe.vae, data, spec, rng, gen, progress)
                          if spec.decoder_steps else [])
        pipe.vae.requires_grad_(False)
        t1 = time.perf_counter()
        unet_losses = []
        if spec.unet_steps:
            posterior = encode_all(pipe.vae, data.images)
            if init_record is None:
                pipe.vae.register_to_config(scaling_factor=latent_scaling_factor(*posterior, gen))
            unet_losses = train_denoiser(pipe, data, spec, rng, gen, posterior, progress)
        t2 = time.perf_counter()
        pipe.save_pretrained(tmp, safe_serialization=True)
        sizes_record = {"seed": spec.seed, **dataclasses.asdict(sizes)}
        (tmp / SIZES_RECORD).write_text(json.dumps(sizes_record, indent=2) + "\n")
        record = {
            "spec": dataclasses.asdict(spec),
            "data": _data_record(spec, records, data),
            "scaling_factor": float(pipe.vae.config.scaling_factor),
            "vae_loss_start_end": loss_start_end(vae_losses) if vae_losses else None,
            "decoder_loss_start_end": loss_start_end(decoder_losses) if decoder_losses else None,
            "unet_loss_start_end": loss_start_end(unet_losses) if unet_losses else None,
            "seconds": {"vae": round(t1 - t0, 1), "unet": round(t2 - t1, 1)},
            "torch_threads": torch.get_num_threads(),
            "versions": {"torch": torch.__version__, "diffusers": _version("diffusers"),
                         "transformers": _version("transformers"), "python": platform.python_version()},
        }
        if init_record is not None:
            record["init"] = {"model": str(init), "record": init_record}
        (tmp / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return out


def _init_record(init: str | Path, sizes: Any) -> dict[str, Any]:
    """The training record of ``init``, after checking it is a model of the same sizes."""
    folder = Path(init)
    try:
        record = json.loads((folder / TRAINING_RECORD).read_text())
        built = json.loads((folder / SIZES_RECORD).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"--init {init}: expected a folder written by train-inpainter "
                          f"({type(err).__name__}: {err})") from err
    built.pop("seed", None)  # the seed that drew the first weights is not a size
    # Through JSON, so that tuples compare equal to the lists read back.
    wanted = json.loads(json.dumps(dataclasses.asdict(sizes)))
    if built != wanted:
        differ = sorted(k for k in set(built) | set(wanted) if built.get(k) != wanted.get(k))
        raise ConfigError(f"--init {init}: its model sizes differ from this spec's in {', '.join(differ)}")
    return record


def loss_start_end(losses: list[float]) -> list[float]:
    """Mean loss over the first and over the last tenth of the steps (at least one step each)."""
    k = max(1, len(losses) // 10)
    return [float(np.mean(losses[:k])), float(np.mean(losses[-k:]))]


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)

