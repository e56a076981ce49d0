"""Fast mode: only the linear head, on cached backbone features (``raydbb retrain --fast``, and
every ``raydbb tune`` trial).

The ERM backbone's penultimate features are computed once for originals, candidate repaints and
validation images (:func:`build_feature_cache`); then only the head is trained on them with the
same Eq. 6-8 loss (:func:`fit_head`): no augmentation, seconds per run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from raydbb.config import RaydbbConfig, TrainConfig
from raydbb.ddb.retrain.loss import RepaintWeightedLoss, per_class_values
from raydbb.ddb.retrain.originals import training_originals
from raydbb.ddb.retrain.repaints import RepaintChoice, repaint_counts, repaint_records, select_repaints
from raydbb.ddb.retrain.run import (
    RetrainInputs,
    RetrainResult,
    describe_inputs,
    finish_run,
    load_inputs,
    run_meta,
    run_retrain,
)
from raydbb.errors import DataError, RaydbbError
from raydbb.models.threads import torch_threads
from raydbb.rundir import RunDir
from raydbb.training.features import extract_features

SCORE_COLUMNS = ("sample_id", "target_label", "p_source", "tau", "ig_score", "kept", "prune_reason")
"""Columns of the candidate repaints a :class:`FeatureCache` keeps (what re-deciding needs)."""


@dataclass
class FeatureCache:
    """Penultimate features of the start model for originals, candidate repaints and validation.

    ``head_weight``/``head_bias`` are the start model's head (every fit starts from it).
    ``candidates`` holds the score columns of :func:`candidate_repaints` rows, aligned with
    ``candidate_x``. Plain numpy, so it travels through Ray's object store.
    """

    class_names: list[str]
    group_names: list[str]
    train_group_fraction: list[float] | None
    head_weight: np.ndarray
    head_bias: np.ndarray
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    val_g: np.ndarray
    candidates: pd.DataFrame
    candidate_x: np.ndarray


def build_feature_cache(cfg: RaydbbConfig, inputs: RetrainInputs, progress: bool = True) -> FeatureCache:
    """Run the start model's backbone once over originals, every candidate repaint and validation."""
    from raydbb.models.checkpoint import load_classifier
    from raydbb.training.metrics import train_group_fractions

    records = inputs.records
    train, val = training_originals(cfg, records.split("train"), progress), records.split("val")
    if val.empty:
        raise DataError("no validation rows: model selection needs a val split")
    model, meta = load_classifier(inputs.checkpoint, device=cfg.device)
    size, bs = int(meta["image_size"]), cfg.train.batch_size
    group_names = records.group_names()
    candidates = inputs.candidates
    return FeatureCache(
        class_names=inputs.class_names,
        group_names=group_names,
        train_group_fraction=train_group_fractions(train["group"].to_numpy(), len(group_names)),
        head_weight=model.head.weight.detach().cpu().numpy().copy(),
        head_bias=model.head.bias.detach().cpu().numpy().copy(),
        train_x=extract_features(model, train, size, cfg.device, bs, "features: train", progress),
        train_y=train["label"].to_numpy(dtype=np.int64),
        val_x=extract_features(model, val, size, cfg.device, bs, "features: val", progress),
        val_y=val["label"].to_numpy(dtype=np.int64),
        val_g=val["group"].to_numpy(dtype=np.int64),
        candidates=candidates.loc[:, list(SCORE_COLUMNS)].copy(),
        candidate_x=extract_features(model, repaint_records(candidates), size, cfg.device, bs,
                                     "features: repaints", progress),
    )


@dataclass(frozen=True)
class HeadParams:
    """One fast-mode configuration: which repaints (``choice``), their weights and the lr."""

    choice: RepaintChoice
    lambdas: tuple[float, ...]
    lr: float

    @classmethod
    def from_config(cls, cfg: RaydbbConfig, class_names: Sequence[str]) -> HeadParams:
        lambdas = per_class_values(cfg.retrain.lambdas, class_names, "retrain.lambdas")
        choice = RepaintChoice.from_config(cfg, class_names)
        return cls(choice, tuple(lambdas.tolist()), float(cfg.retrain.fast_lr))


@dataclass
class HeadFit:
    """Result of :func:`fit_head`: the selected epoch's head, its validation metrics and the history."""

    weight: np.ndarray
    bias: np.ndarray
    best_epoch: int
    val: dict[str, Any]
    objective: float
    repaints: dict[str, int]
    history: list[dict[str, Any]]


def fit_head(cache: FeatureCache, params: HeadParams, train: TrainConfig, epochs: int,
             report: Callable[[dict[str, Any]], None] | None = None) -> HeadFit:
    """Train the linear head on cached features with :class:`RepaintWeightedLoss`; select on val WGA.

    Deterministic for a given cache, ``params`` and ``train.seed`` (batch order from a seeded
    generator, one torch thread). ``train`` gives batch size, optimizer and weight decay; the
    lr comes from ``params``. ``report(row)`` is called after every epoch with the epoch's and
    the selected epoch's validation numbers and the repaint counts (``repaints_<class>``; Ray
    Tune's per-epoch report for ASHA).
    """
    from raydbb.training.metrics import count_correct, metrics_from_counts
    from raydbb.training.worker import make_optimizer, selection_key

    chosen = select_repaints(cache.candidates, params.choice)
    rep_y = cache.candidates["target_label"].to_numpy(dtype=np.int64)[chosen]
    x = torch.from_numpy(np.concatenate([cache.train_x, cache.candidate_x[chosen]]).astype(np.float32))
    y = torch.from_numpy(np.concatenate([cache.train_y, rep_y]))
    loss_fn = RepaintWeightedLoss(np.r_[np.zeros(len(cache.train_y), bool), np.ones(len(rep_y), bool)],
                                  params.lambdas)
    counts = repaint_counts(rep_y, cache.class_names)
    val_x = torch.from_numpy(cache.val_x.astype(np.float32))
    num_groups = len(cache.group_names)
    # One thread: a trial on a fractional CPU, and bit-identical sums between a trial and a rerun.
    with torch_threads(1):
        head = torch.nn.Linear(x.shape[1], len(cache.class_names))
        with torch.no_grad():
            head.weight.copy_(torch.tensor(cache.head_weight))  # copies: object-store arrays are read-only
            head.bias.copy_(torch.tensor(cache.head_bias))
        optimizer = make_optimizer(head.parameters(), train.model_copy(update={"lr": params.lr}))
        generator = torch.Generator().manual_seed(train.seed)
        best: tuple[Any, ...] | None = None
        history = []
        for epoch in range(1, epochs + 1):
            total = 0.0
            order = torch.randperm(len(y), generator=generator)
            for start in range(0, len(y), train.batch_size):
                idx = order[start:start + train.batch_size]
                loss = loss_fn(head(x[idx]), y[idx], idx)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
            if not math.isfinite(total):
                raise RaydbbError(f"head training diverged in epoch {epoch}; lower the learning rate")
            with torch.no_grad():
                preds = head(val_x).argmax(1).numpy()
            val = metrics_from_counts(count_correct(preds, cache.val_y, cache.val_g, num_groups),
                                      cache.group_names, cache.train_group_fraction)
            key = selection_key(val)
            if best is None or key > best[0]:
                best = (key, epoch, val, head.weight.detach().clone().numpy(),
                        head.bias.detach().clone().numpy())
            row = {"epoch": epoch, "train_loss": total / max(len(y), 1),
                   "val_worst_group_accuracy": val["worst_group_accuracy"],
                   "val_average_accuracy": val["average_accuracy"],
                   "objective": best[0][0], "selected_epoch": best[1],
                   **{f"repaints_{name}": n for name, n in counts.items()}}
            history.append(row)
            if report is not None:
                report(row)
    key, best_epoch, best_val, weight, bias = best
    return HeadFit(weight, bias, best_epoch, best_val, key[0], counts, history)


def fast_retrain(cfg: RaydbbConfig, manifest_dir: str | Path | None = None,
                 progress: bool = True) -> RetrainResult:
    """``raydbb retrain --fast``: the head on cached features (:func:`fit_head`), written like a full run.

    The checkpoint in ``OUT/ddb`` is the start model with the fitted head; val and test metrics
    are computed from the images by the evaluation path. With the same config and seed this
    reproduces the validation score a ``raydbb tune`` trial reported for that configuration.
    """
    from raydbb.models.checkpoint import load_classifier
    from raydbb.training.evaluate import evaluate_model
    from raydbb.training.worker import publish_checkpoint

    inputs = load_inputs(cfg, manifest_dir)
    print(describe_inputs(inputs))
    cache = build_feature_cache(cfg, inputs, progress)
    fit = fit_head(cache, HeadParams.from_config(cfg, inputs.class_names), cfg.train, cfg.retrain.fast_epochs)
    model, meta = load_classifier(inputs.checkpoint, device=cfg.device)
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(fit.weight))
        model.head.bias.copy_(torch.from_numpy(fit.bias))
    out_dir = RunDir(cfg.out).ddb
    keep = {k: v for k, v in meta.items() if k in ("class_names", "group_names")}
    publish_checkpoint(model, out_dir, {**keep, **run_meta(inputs, "fast"), "epoch": fit.best_epoch,
                                        "init_checkpoint": str(inputs.checkpoint), "head_only": True,
                                        "val_metrics": fit.val})
    metrics = evaluate_model(model, inputs.records, int(meta["image_size"]), ("val", "test"),
                             device=cfg.device, progress=progress)
    return finish_run(cfg, inputs, out_dir, metrics,
                   {"mode": "fast", "best_epoch": fit.best_epoch, "fast_objective": fit.objective,
                    "history": fit.history}, progress)


def retrain(cfg: RaydbbConfig, manifest_dir: str | Path | None = None,
            progress: bool = True) -> RetrainResult:
    """The retrain step: :func:`fast_retrain` with ``retrain.head_on_features``, else
    :func:`~raydbb.ddb.retrain.run.run_retrain`."""
    return (fast_retrain if cfg.retrain.head_on_features else run_retrain)(cfg, manifest_dir, progress)
