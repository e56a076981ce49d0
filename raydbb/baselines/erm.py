"""ERM: minimise the mean cross-entropy over the training split, (1/n) Σ_i ℓ(f(x_i), y_i); the
epoch is chosen by validation worst-group accuracy (the shared selection rule). No train group
labels; validation group labels for model selection only."""

from __future__ import annotations

from raydbb.baselines.common import MethodContext, MethodResult, train_erm_into


def run(ctx: MethodContext, grid: dict) -> MethodResult:
    result = train_erm_into(ctx, ctx.out_dir / "model")
    return MethodResult(result.metrics, {"best_epoch": result.best_epoch}, [], result.checkpoint_dir)
