"""GroupDRO (Sagawa et al. 2020, Algorithm 1): online group weights on the training groups.

Every batch, with ℓ_g the mean loss of group g's rows in the batch (0 for an absent group, as in
the authors' code):

    q_g ← q_g · exp(η · ℓ_g),   q ← q / Σ_g q_g          (Algorithm 1, line 5)
    loss = Σ_g q_g · ℓ_g                                   (line 6: the robust loss, q held fixed)

with strong ℓ2 regularisation (``weight_decay`` from the grid; the paper's Waterbirds setting is
λ = 1). Uses the *train group labels*: reported as the reference upper bound, not as a
group-label-free method. (The paper's generalisation adjustment C/√n_g is not used, C = 0.)
With several Ray Train workers each rank keeps its own q, updated from its own batches.
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


def update_weights(q: torch.Tensor, group_losses: torch.Tensor, eta: float) -> torch.Tensor:
    """One exponentiated-gradient step: ``q ⊙ exp(η ℓ) / Σ (q ⊙ exp(η ℓ))``."""
    q = q * torch.exp(eta * group_losses)
    return q / q.sum()


def group_mean_losses(losses: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Mean of ``losses`` per group (0 where a group has no row)."""
    sums = torch.zeros(num_groups, dtype=losses.dtype, device=losses.device).index_add(0, groups, losses)
    counts = torch.bincount(groups, minlength=num_groups).to(losses.dtype)
    return sums / counts.clamp(min=1)


class GroupDROLoss:
    """``loss_fn(logits, labels, index)`` of GroupDRO; ``groups[i]`` = group of training row i."""

    def __init__(self, groups: np.ndarray, num_groups: int, eta: float) -> None:
        groups = np.array(groups, dtype=np.int64)  # a private, writable copy
        if (groups < 0).any() or (groups >= num_groups).any():
            raise ValueError("GroupDRO needs a known group for every training row")
        self.groups = torch.from_numpy(groups)
        self.num_groups = num_groups
        self.eta = float(eta)
        self.q = torch.full((num_groups,), 1.0 / num_groups, dtype=torch.float64)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        losses = F.cross_entropy(logits, labels, reduction="none")
        groups = self.groups.to(losses.device)[index.long()]
        group_losses = group_mean_losses(losses, groups, self.num_groups)
        self.q = update_weights(self.q.to(losses.device), group_losses.detach().double(), self.eta)
        return (self.q.to(losses.dtype) * group_losses).sum()


def run(ctx: MethodContext, grid: dict[str, list[Any]]) -> MethodResult:
    train = ctx.records.split("train")
    groups = train["group"].to_numpy()

    def one(i: int, hp: dict[str, Any]):
        cfg_train = ctx.cfg.train.model_copy(update={"weight_decay": float(hp["weight_decay"])})
        spec = method_spec(ctx, "groupdro", train=cfg_train, meta={"hparams": hp},
                           loss_fn=GroupDROLoss(groups, len(ctx.group_names), hp["eta"]))
        result = fit(ctx, spec, train, ctx.out_dir / f"trial_{i}")
        return result.metrics["val"], result

    best, trials, results = grid_search(grid_points(grid), one)
    return selected_fit(best, trials, results)
