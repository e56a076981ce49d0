"""LISA: selective mixup (Yao et al. 2022, Algorithm 1).

For each example i of a batch, a strategy is drawn: with probability p_sel *intra-label* (partner
j with y_j = y_i and a different spurious value, s_j ≠ s_i), otherwise *intra-domain* (partner
with s_j = s_i and y_j ≠ y_i). The pair is mixed with λ ~ Beta(α, α):

    x̃ = λ x_i + (1 − λ) x_j,   ỹ = λ onehot(y_i) + (1 − λ) onehot(y_j)

and the model is trained with the cross-entropy on (x̃, ỹ). Partners are drawn uniformly among
the batch rows that satisfy the condition; a row without one stays unmixed. Uses the *train
spurious labels* (hence train group labels ✓) and validation group labels for selection.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raydbb.baselines.common import (
    MethodContext,
    MethodResult,
    fit,
    grid_points,
    grid_search,
    method_spec,
    selected_fit,
)


def pairs(labels: torch.Tensor, spurious: torch.Tensor, intra_label: torch.Tensor,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """Partner index per row (-1: none in the batch).

    Row i with ``intra_label[i]`` pairs with a row of the same label and another spurious value;
    otherwise with a row of the same spurious value and another label; uniformly among candidates.
    """
    same_y = labels[:, None] == labels[None, :]
    same_s = spurious[:, None] == spurious[None, :]
    allowed = torch.where(intra_label[:, None], same_y & ~same_s, same_s & ~same_y)
    scores = torch.rand(allowed.shape, generator=generator).to(labels.device).masked_fill(~allowed, -1.0)
    partner = scores.argmax(1)
    return torch.where(allowed.any(1), partner, torch.full_like(partner, -1))


def mix(images: torch.Tensor, targets: torch.Tensor, partner: torch.Tensor,
        lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix rows with their partners (λ per row; rows with partner -1 unchanged)."""
    has = partner >= 0
    lam = torch.where(has, lam, torch.ones_like(lam))
    j = torch.where(has, partner, torch.arange(len(partner), device=partner.device))
    li = lam.view((-1,) + (1,) * (images.dim() - 1)).to(images.dtype)
    lt = lam[:, None].to(targets.dtype)
    mixed, mixed_targets = li * images + (1 - li) * images[j], lt * targets + (1 - lt) * targets[j]
    return mixed, mixed_targets


class LisaBatch:
    """The :data:`~raydbb.training.worker.BatchHook` of LISA: selective mixup of a training batch."""

    def __init__(self, spurious: np.ndarray, num_classes: int, p_sel: float, alpha: float) -> None:
        self.spurious = torch.from_numpy(np.array(spurious, dtype=np.int64))  # a writable copy
        self.num_classes, self.p_sel, self.alpha = num_classes, float(p_sel), float(alpha)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spurious = self.spurious.to(labels.device)[index.long()]
        intra_label = torch.rand(len(labels)) < self.p_sel
        partner = pairs(labels, spurious, intra_label.to(labels.device))
        lam = torch.distributions.Beta(self.alpha, self.alpha).sample((len(labels),)).to(labels.device)
        return mix(images, F.one_hot(labels, self.num_classes).float(), partner, lam)


def run(ctx: MethodContext, grid: dict[str, list[Any]]) -> MethodResult:
    train = ctx.records.split("train")

    def one(i: int, hp: dict[str, Any]):
        hook = LisaBatch(train["spurious"].to_numpy(), ctx.records.num_classes, hp["p_sel"], hp["alpha"])
        spec = method_spec(ctx, "lisa", batch_fn=hook, meta={"hparams": hp})
        result = fit(ctx, spec, train, ctx.out_dir / f"trial_{i}")
        return result.metrics["val"], result

    best, trials, results = grid_search(grid_points(grid), one)
    return selected_fit(best, trials, results)
