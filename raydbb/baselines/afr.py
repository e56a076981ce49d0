"""Automatic Feature Reweighting (Qiu et al. 2023, Eq. 2-3).

1. ERM on the first part of the training split (``erm_fraction``, seeded split).
2. On the held-out part, per-example weights from the ERM model's probability of the true class

       w_i = exp(−γ · p̂_{y_i}(x_i)) / Σ_j exp(−γ · p̂_{y_j}(x_j))          (Eq. 2)

3. Retrain only the last layer (features frozen), from the ERM head (W₀, b₀), minimising

       Σ_i w_i · ℓ_CE(W x_i + b, y_i) + λ · ‖W − W₀‖²                      (Eq. 3)

γ and λ are chosen by validation WGA. No train group labels; validation group labels for
choosing γ, λ and the ERM epoch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raydbb.baselines.common import (
    MethodContext,
    MethodResult,
    grid_points,
    grid_search,
    head_val_metrics,
    load_features,
    publish_head,
    train_erm_into,
)


def weights(p_true: np.ndarray, gamma: float) -> np.ndarray:
    """Eq. 2: ``exp(−γ p) / Σ exp(−γ p)`` (computed stably)."""
    logits = -float(gamma) * np.asarray(p_true, dtype=np.float64)
    w = np.exp(logits - logits.max())
    return w / w.sum()


def true_class_probability(x: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """p̂_{y_i}(x_i) of the linear head on features ``x``."""
    logits = torch.as_tensor(x @ weight.T + bias, dtype=torch.float64)
    return logits.softmax(1)[torch.arange(len(y)), torch.as_tensor(np.array(y, dtype=np.int64))].numpy()


def afr_loss(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
             W0: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 3: weighted CE plus the ℓ2 pull of the head towards the ERM head."""
    ce = F.cross_entropy(x @ W.T + b, y, reduction="none")
    return (w * ce).sum() + lam * ((W - W0) ** 2).sum()


def fit_head(x: np.ndarray, y: np.ndarray, w: np.ndarray, W0: np.ndarray, b0: np.ndarray, lam: float,
             steps: int = 200, lr: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Full-batch Adam on Eq. 3, starting from the ERM head."""
    # torch.tensor copies: feature arrays may be read-only views (torch warns about those)
    X, Y = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.int64)
    wt = torch.as_tensor(w, dtype=torch.float64)
    W0t = torch.as_tensor(W0, dtype=torch.float64)
    W = W0t.clone().requires_grad_(True)
    b = torch.as_tensor(b0, dtype=torch.float64).clone().requires_grad_(True)
    opt = torch.optim.Adam([W, b], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        afr_loss(W, b, X, Y, wt, W0t, lam).backward()
        opt.step()
    return W.detach().numpy(), b.detach().numpy()


def run(ctx: MethodContext, grid: dict[str, list[Any]]) -> MethodResult:
    train = ctx.records.split("train")
    fraction = float(grid.get("erm_fraction", [0.8])[0])
    order = np.random.default_rng(ctx.cfg.seed).permutation(len(train))
    cut = int(round(fraction * len(train)))
    erm_rows, held_rows = np.sort(order[:cut]), np.sort(order[cut:])
    ckpt = ctx.out_dir / "erm_part"
    train_erm_into(ctx, ckpt, train.iloc[erm_rows].reset_index(drop=True), name="afr-erm")
    held, val = train.iloc[held_rows].reset_index(drop=True), ctx.records.split("val")
    feats = load_features(ctx, ckpt, {"held": held, "val": val})
    W0, b0 = feats["head_weight"], feats["head_bias"]
    hy = held["label"].to_numpy()
    p_true = true_class_probability(feats["held"], hy, W0, b0)
    vy, vg = val["label"].to_numpy(), val["group"].to_numpy()
    heads = {}

    def one(i: int, hp: dict[str, Any]):
        W, b = fit_head(feats["held"], hy, weights(p_true, hp["gamma"]), W0, b0, float(hp["lambda"]))
        heads[i] = (W, b)
        return head_val_metrics(W, b, feats["val"], vy, vg, ctx.group_names, ctx.train_group_fraction), i

    search = {k: v for k, v in grid.items() if k != "erm_fraction"}
    best, trials, _ = grid_search(grid_points(search), one)
    hp = {**trials[best]["hparams"], "erm_fraction": fraction}
    metrics = publish_head(ctx, ckpt, *heads[best], ctx.out_dir / "model", {"method": "afr", "hparams": hp})
    return MethodResult(metrics, hp, trials, ctx.out_dir / "model")
