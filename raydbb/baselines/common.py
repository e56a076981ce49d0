"""Glue shared by the baselines: the run context, fits through :func:`fit_classifier`, grid search
by validation worst-group accuracy, and heads refit on cached features put back into a model."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from raydbb.config import RaydbbConfig
from raydbb.training.worker import FitResult, FitSpec

SELECTION = "validation worst-group accuracy (ties: validation average accuracy)"
SELECTION_NO_GROUPS = "validation average accuracy (no group labels used)"


@dataclass
class MethodContext:
    """One method x seed: the seeded config, the records, the output folder and (when a method
    starts from it) the same seed's ERM checkpoint."""

    cfg: RaydbbConfig
    records: Any  # RecordSet
    out_dir: Path
    erm_dir: Path | None = None

    @property
    def group_names(self) -> list[str]:
        return self.records.group_names()

    @property
    def train_group_fraction(self) -> list[float] | None:
        from raydbb.training.metrics import train_group_fractions

        return train_group_fractions(self.records.split("train")["group"].to_numpy(), len(self.group_names))


@dataclass
class MethodResult:
    """The selected configuration's metrics per split, its hyper-parameters and every trial."""

    metrics: dict[str, dict[str, Any]]
    hparams: dict[str, Any]
    trials: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None
    selection: str = SELECTION
    notes: str = ""


def seeded(cfg: RaydbbConfig, seed: int) -> RaydbbConfig:
    """``cfg`` with the run, training and textual-inversion seeds set to ``seed``, as ``raydbb demo
    --seed`` sets them: DDB in ``raydbb compare`` on one seed is the demo's run of that seed."""
    return cfg.model_copy(update={"seed": seed, "train": cfg.train.model_copy(update={"seed": seed}),
                                  "invert": cfg.invert.model_copy(update={"seed": seed})})


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in a fixed order (the product of the lists)."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def val_key(metrics: dict[str, Any]) -> tuple[float, float]:
    from raydbb.training.worker import selection_key

    return selection_key(metrics)


def method_spec(ctx: MethodContext, name: str, **changes: Any) -> FitSpec:
    """ERM's :class:`FitSpec` for ``ctx`` with ``changes`` (loss, hook, start checkpoint, train config)."""
    from raydbb.training.erm import erm_spec

    spec = erm_spec(ctx.cfg, ctx.records)
    meta = {**spec.meta, "method": name, **changes.pop("meta", {})}
    return replace(spec, name=name, meta=meta, **changes)


def fit(ctx: MethodContext, spec: FitSpec, train_frame: pd.DataFrame, out_dir: Path,
        val_groups: bool = True) -> FitResult:
    """:func:`fit_classifier` on ``train_frame``, selected on the val split, evaluated on test.

    ``val_groups=False`` hides the validation group labels from selection (the epoch is chosen by
    validation average accuracy); the returned val metrics are then recomputed with the groups.
    """
    from raydbb.training.erm import fit_classifier
    from raydbb.training.evaluate import evaluate_checkpoint

    val = ctx.records.split("val")
    if not val_groups:
        val = val.assign(group=-1)
    result = fit_classifier(spec, train_frame, val, out_dir,
                            final_frames={"test": ctx.records.split("test")}, ray_config=ctx.cfg.ray)
    if not val_groups:
        result.metrics["val"] = evaluate_checkpoint(out_dir, ctx.records, ("val",), device=ctx.cfg.device,
                                                    batch_size=ctx.cfg.train.batch_size)["val"]
    return result


def grid_search(points: list[dict[str, Any]], run_one,
                val_groups: bool = True) -> tuple[int, list[dict[str, Any]], list[Any]]:
    """Run ``run_one(i, hparams) -> (val metrics, payload)`` for every point; pick by :func:`val_key`
    (by validation average accuracy alone when ``val_groups`` is False).

    Returns the chosen index, one trial row per point and the payloads.
    """
    trials, payloads, keys = [], [], []
    for i, hp in enumerate(points):
        val, payload = run_one(i, hp)
        trials.append({"hparams": hp, "val_worst_group_accuracy": val["worst_group_accuracy"],
                       "val_average_accuracy": val["average_accuracy"]})
        payloads.append(payload)
        keys.append(val_key(val) if val_groups else (val["average_accuracy"] or 0.0,))
    best = max(range(len(points)), key=lambda i: keys[i])  # first of equals: grid order
    for i, row in enumerate(trials):
        row["chosen"] = i == best
    return best, trials, payloads


def selected_fit(best: int, trials: list[dict[str, Any]], results: list[FitResult]) -> MethodResult:
    """The :class:`MethodResult` of grid point ``best`` when every point trained one model: its
    metrics and checkpoint, its hyper-parameters and the epoch validation chose."""
    chosen = results[best]
    return MethodResult(chosen.metrics, {**trials[best]["hparams"], "best_epoch": chosen.best_epoch},
                        trials, chosen.checkpoint_dir)


def train_erm_into(ctx: MethodContext, out_dir: Path, train_frame: pd.DataFrame | None = None,
                   name: str = "erm") -> FitResult:
    """Plain ERM (on the train split, or on ``train_frame``) into ``out_dir``."""
    frame = ctx.records.split("train") if train_frame is None else train_frame
    return fit(ctx, method_spec(ctx, name), frame, out_dir)


def erm_checkpoint(ctx: MethodContext) -> Path:
    """This seed's ERM checkpoint: the one compare trained, else ERM trained into ``out_dir/erm``."""
    from raydbb.models.checkpoint import META_FILE

    if ctx.erm_dir is not None and (Path(ctx.erm_dir) / META_FILE).is_file():
        return Path(ctx.erm_dir)
    out = ctx.out_dir / "erm"
    if not (out / META_FILE).is_file():
        train_erm_into(ctx, out)
    return out


def head_val_metrics(weight: np.ndarray, bias: np.ndarray, x: np.ndarray, y: np.ndarray, g: np.ndarray,
                     group_names: list[str], fractions: list[float] | None) -> dict[str, Any]:
    """Group metrics of the linear head ``x @ weight.T + bias`` on cached features."""
    from raydbb.training.metrics import group_metrics

    preds = (x @ weight.T + bias).argmax(1)
    return group_metrics(preds, y, g, group_names, fractions)


def load_features(ctx: MethodContext, ckpt: Path, frames: dict[str, pd.DataFrame]) -> dict[str, np.ndarray]:
    """Penultimate features of ``ckpt`` for each frame, plus its head (``head_weight``, ``head_bias``)."""
    from raydbb.models.checkpoint import load_classifier
    from raydbb.training.features import extract_features

    model, meta = load_classifier(ckpt, device=ctx.cfg.device)
    size, bs = int(meta["image_size"]), ctx.cfg.train.batch_size
    out = {name: extract_features(model, frame, size, ctx.cfg.device, bs) for name, frame in frames.items()}
    out["head_weight"] = model.head.weight.detach().cpu().numpy().copy()
    out["head_bias"] = model.head.bias.detach().cpu().numpy().copy()
    return out


def publish_head(ctx: MethodContext, ckpt: Path, weight: np.ndarray, bias: np.ndarray, out_dir: Path,
                 meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``ckpt`` with a new linear head, written to ``out_dir``; its val and test metrics (from images)."""
    from raydbb.models.checkpoint import load_classifier
    from raydbb.training.evaluate import evaluate_model
    from raydbb.training.worker import publish_checkpoint

    model, ckpt_meta = load_classifier(ckpt, device=ctx.cfg.device)
    with torch.no_grad():
        model.head.weight.copy_(torch.as_tensor(weight, dtype=model.head.weight.dtype))
        model.head.bias.copy_(torch.as_tensor(bias, dtype=model.head.bias.dtype))
    keep = {k: v for k, v in ckpt_meta.items() if k in ("class_names", "group_names", "spurious_names")}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    publish_checkpoint(model, out_dir, {**keep, **meta, "init_checkpoint": str(ckpt), "head_only": True})
    return evaluate_model(model, ctx.records, int(ckpt_meta["image_size"]), ("val", "test"),
                          device=ctx.cfg.device, batch_size=ctx.cfg.train.batch_size)


def finetune_config(ctx: MethodContext, epochs: int | None = None):
    """The train section for fine-tuning from the ERM weights: ``retrain.epochs``/``retrain.lr``
    (the budget DDB's retraining gets), ``epochs`` when given."""
    return ctx.cfg.train.model_copy(update={"epochs": epochs or ctx.cfg.retrain.epochs,
                                            "lr": ctx.cfg.retrain.lr})
