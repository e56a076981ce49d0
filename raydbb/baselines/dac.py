"""Decompose-and-Compose, DaC (Noohdani et al. 2024, Sec. 3).

1. Decompose: among the training images the ERM model fits best (the lowest-loss ``low_loss``
   share of each class — majority-group proxies), an attribution map (Grad-CAM via captum)
   splits each image into a causal part M (the top-``mask_fraction`` pixels) and the rest.
2. Compose: each low-loss image a gets a partner b from a *different group proxy* (here: another
   class among the low-loss images, whose background is that class's majority context), and

       x_new = M_a ⊙ x_a + (1 − M_a) ⊙ [(1 − M_b) ⊙ x_b + M_b ⊙ μ],   y_new = y_a

   where μ is the mean colour of the training images: the partner's own causal part (its object,
   of the other class) is blanked, so the composite does not show two objects with one label.

3. Retrain: fine-tune the ERM model (``retrain.epochs``/``retrain.lr``) on the training split plus
   the composed images, selecting the epoch by validation WGA.

No train group labels; validation group labels choose the grid values and the epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raydbb.baselines.common import (
    MethodContext,
    MethodResult,
    erm_checkpoint,
    finetune_config,
    fit,
    grid_points,
    grid_search,
    method_spec,
)
from raydbb.baselines.masktune import mask_top_saliency


def compose(causal_source: np.ndarray, other: np.ndarray, causal_mask: np.ndarray,
            other_mask: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """The causal pixels (``causal_mask``, H×W) of ``causal_source``; elsewhere ``other``'s pixels,
    except where ``other_mask`` (the partner's causal part) is set: there the ``fill`` colour (C,).
    Images are H×W×C."""
    if (causal_source.shape != other.shape or causal_mask.shape != causal_source.shape[:2]
            or other_mask.shape != causal_mask.shape):
        raise ValueError("compose: images and masks must have the same height and width")
    background = np.where(np.asarray(other_mask, dtype=bool)[..., None],
                          np.asarray(fill, dtype=other.dtype), other)
    return np.where(np.asarray(causal_mask, dtype=bool)[..., None], causal_source, background)


def low_loss_rows(losses: np.ndarray, labels: np.ndarray, share: float) -> np.ndarray:
    """Positions of the lowest-loss ``share`` of each class (at least one row per class)."""
    keep = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        k = max(1, int(round(share * len(rows))))
        keep.append(rows[np.argsort(losses[rows], kind="stable")[:k]])
    return np.sort(np.concatenate(keep))


def partners(proxy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each row, a uniformly drawn row of another group proxy (-1 when there is none)."""
    out = np.full(len(proxy), -1, dtype=np.int64)
    for i, p in enumerate(proxy):
        other = np.flatnonzero(proxy != p)
        if len(other):
            out[i] = rng.choice(other)
    return out


def composed_set(ctx: MethodContext, ckpt, low_loss: float, mask_fraction: float,
                 out_dir: Path) -> pd.DataFrame:
    """Write the composed images (model resolution PNGs) and return their record frame."""
    from raydbb.baselines.saliency import saliency_batches, to_uint8, write_png
    from raydbb.models.checkpoint import load_classifier

    train = ctx.records.split("train")
    model, meta = load_classifier(ckpt, device=ctx.cfg.device)
    images, losses, masks = [], [], []
    for _, batch, loss, sal in saliency_batches(model, train, int(meta["image_size"]), ctx.cfg.device,
                                                ctx.cfg.train.batch_size):
        images += [to_uint8(im) for im in batch]
        losses.append(loss.numpy())
        masks.append(mask_top_saliency(sal, mask_fraction).numpy())
    losses_arr, masks_arr = np.concatenate(losses), np.concatenate(masks)
    labels = train["label"].to_numpy()
    rows = low_loss_rows(losses_arr, labels, low_loss)
    pair = partners(labels[rows], np.random.default_rng(ctx.cfg.seed))
    fill = np.rint(np.mean([im.reshape(-1, im.shape[-1]).mean(0) for im in images], axis=0))
    ids, records = train["sample_id"].tolist(), []
    for a, j in zip(rows, pair, strict=True):
        if j < 0:
            continue
        b = rows[j]
        image = compose(images[a], images[b], masks_arr[a], masks_arr[b], fill)
        path = write_png(image, out_dir / f"{ids[a]}__{ids[b]}.png")
        records.append({"sample_id": f"dac_{ids[a]}__{ids[b]}", "path": path, "label": int(labels[a]),
                        "spurious": -1, "group": -1, "split": "train", "mask": None})
    return pd.DataFrame(records, columns=list(train.columns))


def run(ctx: MethodContext, grid: dict[str, list[Any]]) -> MethodResult:
    ckpt = erm_checkpoint(ctx)
    train = ctx.records.split("train")

    def one(i: int, hp: dict[str, Any]):
        extra = composed_set(ctx, ckpt, float(hp["low_loss"]), float(hp["mask_fraction"]),
                             ctx.out_dir / f"composed_{i}")
        frame = pd.concat([train, extra], ignore_index=True)
        spec = method_spec(ctx, "dac", classifier=None, init_checkpoint=str(Path(ckpt).resolve()),
                           train=finetune_config(ctx), meta={"hparams": hp, "composed": len(extra)})
        result = fit(ctx, spec, frame, ctx.out_dir / f"trial_{i}")
        return result.metrics["val"], result

    best, trials, results = grid_search(grid_points(grid), one)
    chosen = results[best]
    return MethodResult(chosen.metrics, dict(trials[best]["hparams"]), trials, chosen.checkpoint_dir)
