"""MaskTune (Asgari et al. 2022, Sec. 3).

After ERM, every training image's saliency map (Grad-CAM, via captum) marks what the model relies
on; the most salient region is masked out (set to 0):

    x̂ = x ⊙ (1 − M),   M = the top-``fraction`` pixels of the saliency map

and the ERM model is fine-tuned for *one epoch* on the masked training set {(x̂_i, y_i)}
(learning rate ``retrain.lr``). The paper thresholds the map at mean + 2σ; here the masked share
is a fixed fraction (a grid value), so every image loses the same area. No group labels in
training, and none for selection either: the fraction and the epoch are chosen by validation
*average* accuracy (group labels ✗/✗). The starting ERM model is the shared one (its epoch
was chosen by validation WGA).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from raydbb.baselines.common import (
    SELECTION_NO_GROUPS,
    MethodContext,
    MethodResult,
    erm_checkpoint,
    finetune_config,
    fit,
    grid_points,
    grid_search,
    method_spec,
)


def mask_top_saliency(saliency: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean mask (same shape, (..., H, W)) of exactly round(fraction·H·W) pixels per map: the most
    salient ones (ties: the earlier pixel in row-major order)."""
    *lead, h, w = saliency.shape
    flat = saliency.reshape(-1, h * w)
    k = int(round(float(fraction) * h * w))
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :k]
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)
    return mask.reshape(*lead, h, w)


def apply_mask(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``images ⊙ (1 − mask)`` for (N,3,H,W) images and (N,H,W) masks."""
    return images * (~mask)[:, None].to(images.dtype)


def masked_training_set(ctx: MethodContext, ckpt, fraction: float, out_dir) -> pd.DataFrame:
    """Write the masked training images (model resolution PNGs) and return their record frame."""
    from raydbb.baselines.saliency import saliency_batches, to_uint8, write_png
    from raydbb.models.checkpoint import load_classifier

    train = ctx.records.split("train")
    model, meta = load_classifier(ckpt, device=ctx.cfg.device)
    paths = [""] * len(train)
    ids = train["sample_id"].tolist()
    for rows, images, _, sal in saliency_batches(model, train, int(meta["image_size"]), ctx.cfg.device,
                                                 ctx.cfg.train.batch_size):
        masked = apply_mask(images, mask_top_saliency(sal, fraction))
        for r, image in zip(rows, masked, strict=True):
            paths[r] = write_png(to_uint8(image), out_dir / f"{ids[r]}.png")
    frame = train.copy()
    frame["path"] = paths
    return frame


def run(ctx: MethodContext, grid: dict[str, list[Any]]) -> MethodResult:
    ckpt = erm_checkpoint(ctx)

    def one(i: int, hp: dict[str, Any]):
        frame = masked_training_set(ctx, ckpt, float(hp["fraction"]), ctx.out_dir / f"masked_{i}")
        spec = method_spec(ctx, "masktune", classifier=None, init_checkpoint=str(Path(ckpt).resolve()),
                           train=finetune_config(ctx, epochs=1), meta={"hparams": hp})
        result = fit(ctx, spec, frame, ctx.out_dir / f"trial_{i}", val_groups=False)
        return result.metrics["val"], result

    best, trials, results = grid_search(grid_points(grid), one, val_groups=False)
    chosen = results[best]
    return MethodResult(chosen.metrics, dict(trials[best]["hparams"]), trials, chosen.checkpoint_dir,
                        selection=SELECTION_NO_GROUPS)

