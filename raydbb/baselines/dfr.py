"""Deep Feature Reweighting (Kirichenko et al. 2023, Sec. 4 "DFR^Val_Tr").

The ERM model's features are frozen; only the last layer is refit, on the *validation* split:

1. Split the validation rows in two halves (seeded): the first to fit, the second to choose C.
2. For each C of the grid, fit an ℓ1-regularised logistic regression (sklearn's objective,
   ‖w‖₁ + C · Σ_i ℓ_CE(w·x_i + b, y_i), on standardised features) on each of ``n_subsets``
   group-balanced subsets of the first half (every group subsampled to the smallest group's
   size), average the weights over the subsets, and score WGA on the second half.
3. With the chosen C, refit on ``n_subsets`` group-balanced subsets of the *whole* validation
   split and average the weights: the new head.

Uses validation group labels twice (balancing and choosing C: ✓✓); no train group labels. The
reported validation metrics of DFR are on rows it was fitted on (optimistic); compare on test.
The regression is multinomial (one weight vector per class), solved by proximal gradient.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raydbb.baselines.common import (
    MethodContext,
    MethodResult,
    erm_checkpoint,
    grid_points,
    grid_search,
    head_val_metrics,
    load_features,
    publish_head,
)


def balanced_subsets(groups: np.ndarray, n_subsets: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n_subsets`` arrays of row positions: each group present in ``groups`` contributes exactly
    min_g n_g rows (drawn without replacement); rows of unknown group (-1) never enter."""
    groups = np.asarray(groups)
    present = [g for g in np.unique(groups) if g >= 0]
    if not present:
        raise ValueError("DFR needs validation group labels")
    size = min(int((groups == g).sum()) for g in present)
    return [np.sort(np.concatenate([rng.choice(np.flatnonzero(groups == g), size, replace=False)
                                    for g in present])) for _ in range(n_subsets)]


def halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Step 1: a seeded split of ``n`` validation rows into the half that fits and the half that chooses C."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


def fit_l1_logreg(x: np.ndarray, y: np.ndarray, num_classes: int, C: float,
                  steps: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression minimising ‖W‖₁ + C · Σ_i CE_i (bias unpenalised), by proximal
    gradient descent (step 1/L with L the smooth part's Lipschitz bound). Returns (W (K,D), b (K,))."""
    X = torch.as_tensor(x, dtype=torch.float64)
    Y = torch.as_tensor(y, dtype=torch.int64)
    n, d = X.shape
    # Objective / (C n): mean CE + ‖W‖₁ / (C n). Hessian of mean CE ≤ ½ λ_max(X̃ᵀX̃)/n (X̃ = [X, 1]).
    Xt = torch.cat([X, torch.ones(n, 1, dtype=X.dtype)], 1)
    lipschitz = 0.5 * torch.linalg.matrix_norm(Xt, ord=2) ** 2 / n + 1e-12
    step, thresh = 1.0 / float(lipschitz), 1.0 / (C * n)
    W = torch.zeros(num_classes, d, dtype=X.dtype, requires_grad=True)
    b = torch.zeros(num_classes, dtype=X.dtype, requires_grad=True)
    for _ in range(steps):
        loss = F.cross_entropy(X @ W.T + b, Y)
        gw, gb = torch.autograd.grad(loss, (W, b))
        with torch.no_grad():
            w = W - step * gw
            W.copy_(torch.sign(w) * (w.abs() - step * thresh).clamp(min=0))  # prox of the ℓ1 term
            b.sub_(step * gb)
    return W.detach().numpy(), b.detach().numpy()


def fit_on_subsets(x: np.ndarray, y: np.ndarray, g: np.ndarray, num_classes: int, C: float,
                   n_subsets: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Standardise with the rows' mean/std, fit on each balanced subset, average; the scaler is
    folded into the returned head so it applies to raw features."""
    mean, std = x.mean(0), x.std(0) + 1e-8
    z = (x - mean) / std
    fits = [fit_l1_logreg(z[idx], y[idx], num_classes, C) for idx in balanced_subsets(g, n_subsets, rng)]
    W = np.mean([f[0] for f in fits], axis=0)
    b = np.mean([f[1] for f in fits], axis=0)
    return W / std, b - (W / std) @ mean


def run(ctx: MethodContext, grid: dict[str, list[Any]]) -> MethodResult:
    ckpt = erm_checkpoint(ctx)
    val = ctx.records.split("val")
    feats = load_features(ctx, ckpt, {"val": val})
    x, y, g = feats["val"], val["label"].to_numpy(), val["group"].to_numpy()
    k = ctx.records.num_classes
    n_subsets = int(grid.get("n_subsets", [10])[0])
    fit_rows, choose_rows = halves(len(val), ctx.cfg.seed)

    def one(i: int, hp: dict[str, Any]):
        W, b = fit_on_subsets(x[fit_rows], y[fit_rows], g[fit_rows], k, float(hp["C"]), n_subsets,
                              np.random.default_rng(ctx.cfg.seed))
        return head_val_metrics(W, b, x[choose_rows], y[choose_rows], g[choose_rows], ctx.group_names,
                                ctx.train_group_fraction), None

    best, trials, _ = grid_search(grid_points({"C": list(grid["C"])}), one)
    C = float(trials[best]["hparams"]["C"])
    W, b = fit_on_subsets(x, y, g, k, C, n_subsets, np.random.default_rng(ctx.cfg.seed + 1))
    hp = {"C": C, "n_subsets": n_subsets}
    metrics = publish_head(ctx, ckpt, W, b, ctx.out_dir / "model", {"method": "dfr", "hparams": hp})
    return MethodResult(metrics, hp, trials, ctx.out_dir / "model",
                        selection="WGA on the held-out half of val (DFR fits on val)",
                        notes="val metrics are on the rows DFR was fitted on")
