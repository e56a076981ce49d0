"""Just Train Twice (Liu et al. 2021, Algorithm 1).

1. Identification: ERM for T epochs (the model after epoch T, not a selected one).
2. Error set E = {i : f_id(x_i) ≠ y_i} over the training split (predictions with the evaluation
   transform).
3. Retrain from the start weights (same initialisation) on the training split with every example
   of E repeated λ_up times (the upsampled set), selecting the epoch by validation WGA.

No train group labels; validation group labels choose T, λ_up and the epoch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from raydbb.baselines.common import (
    MethodContext,
    MethodResult,
    fit,
    grid_points,
    grid_search,
    method_spec,
    selected_fit,
)


def error_set(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Boolean mask of the misclassified examples: ``pred != labels``."""
    pred, labels = np.asarray(pred).reshape(-1), np.asarray(labels).reshape(-1)
    if pred.shape != labels.shape:
        raise ValueError(f"pred and labels differ in length: {pred.shape} vs {labels.shape}")
    return pred != labels


def upsample(frame: pd.DataFrame, errors: np.ndarray, lambda_up: int) -> pd.DataFrame:
    """``frame`` with each row of the error set present ``lambda_up`` times in total."""
    if lambda_up < 1:
        raise ValueError(f"lambda_up={lambda_up}: expected >= 1")
    repeats = np.where(np.asarray(errors, dtype=bool), int(lambda_up), 1)
    return frame.loc[frame.index.repeat(repeats)].reset_index(drop=True)


def identification_errors(ctx: MethodContext, epochs: int) -> np.ndarray:
    """Train the identification model for ``epochs`` epochs and return its training error set."""
    from raydbb.models.checkpoint import load_classifier
    from raydbb.training.evaluate import predict

    out = ctx.out_dir / f"identify_T{epochs}"
    train = ctx.records.split("train")
    spec = method_spec(ctx, "jtt-identify", select_last=True,
                       train=ctx.cfg.train.model_copy(update={"epochs": int(epochs)}))
    fit(ctx, spec, train, out)
    model, meta = load_classifier(out, device=ctx.cfg.device)
    pred, labels, _ = predict(model, train, int(meta["image_size"]), ctx.cfg.device, ctx.cfg.train.batch_size)
    return error_set(pred, labels)


def run(ctx: MethodContext, grid: dict[str, list[Any]]) -> MethodResult:
    train = ctx.records.split("train")
    errors: dict[int, np.ndarray] = {}

    def one(i: int, hp: dict[str, Any]):
        T = int(hp["T"])
        if T not in errors:
            errors[T] = identification_errors(ctx, T)
        frame = upsample(train, errors[T], int(hp["lambda_up"]))
        spec = method_spec(ctx, "jtt", meta={"hparams": hp, "error_set_size": int(errors[T].sum())})
        result = fit(ctx, spec, frame, ctx.out_dir / f"trial_{i}")
        return result.metrics["val"], result

    best, trials, results = grid_search(grid_points(grid), one)
    for row in trials:
        row["error_set_size"] = int(errors[int(row["hparams"]["T"])].sum())
    return selected_fit(best, trials, results)
