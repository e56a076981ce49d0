"""``raydbb retrain``: DDB's reweighted retraining under Ray Train, from the ERM weights.

Training starts from the ERM checkpoint, runs the loss of :mod:`raydbb.ddb.retrain.loss` under
Ray Train (:func:`raydbb.training.erm.fit_classifier`: the same code on CPU and GPU workers) and
selects the epoch with the best validation worst-group accuracy. The repaints that enter are
chosen by :mod:`raydbb.ddb.retrain.repaints`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raydbb.config import RaydbbConfig, TrainConfig
from raydbb.ddb.redecide import run_folder
from raydbb.ddb.retrain.loss import RepaintWeightedLoss, per_class_values
from raydbb.ddb.retrain.originals import training_originals
from raydbb.ddb.retrain.repaints import (
    REPAINT,
    RepaintChoice,
    candidate_repaints,
    repaint_counts,
    repaint_records,
    retrain_frame,
    select_repaints,
)
from raydbb.errors import DataError
from raydbb.rundir import RunDir

CONFIG_FILE = "retrain_config.yaml"


@dataclass
class RetrainInputs:
    """Everything a retraining run reads, resolved and checked once."""

    records: Any  # RecordSet
    checkpoint: Path | None  # None when only the repaint choice was loaded (choose_repaints)
    manifest_dir: Path
    candidates: pd.DataFrame
    chosen: np.ndarray
    choice: RepaintChoice
    lambdas: np.ndarray

    @property
    def class_names(self) -> list[str]:
        return list(self.records.class_names)

    def repaint_rows(self) -> pd.DataFrame:
        return self.candidates[self.chosen].reset_index(drop=True)


def start_checkpoint(cfg: RaydbbConfig) -> Path:
    """The weights retraining starts from: ``retrain.checkpoint`` or ``OUT/erm``."""
    from raydbb.ddb.generate import classifier_dir

    return classifier_dir(cfg, cfg.retrain.checkpoint, "retrain.checkpoint")


def load_inputs(cfg: RaydbbConfig, manifest_dir: str | Path | None = None) -> RetrainInputs:
    """Records, start checkpoint, manifest candidates and the chosen repaints for ``cfg``.

    ``manifest_dir`` is the run folder of ``raydbb generate`` (or its ``manifest/``); default ``OUT``.
    """
    from raydbb.data.registry import load_records
    from raydbb.models.checkpoint import read_classifier_meta
    from raydbb.training.evaluate import check_classes

    records = load_records(cfg.data)
    ckpt = start_checkpoint(cfg)
    check_classes(read_classifier_meta(ckpt), records, ckpt)
    return choose_repaints(cfg, records, ckpt, manifest_dir)


def choose_repaints(cfg: RaydbbConfig, records: Any, checkpoint: Path | None = None,
                    manifest_dir: str | Path | None = None) -> RetrainInputs:
    """The repaints of a generate run that enter retraining for ``cfg``, and their λ per class.

    The part of :func:`load_inputs` that needs no checkpoint (``raydbb export`` uses it alone);
    ``checkpoint`` (the start model, when known) is only recorded.
    """
    from raydbb.engine.manifest import read_manifest

    folder = run_folder(manifest_dir if manifest_dir is not None else cfg.out)
    candidates = candidate_repaints(read_manifest(folder))
    lambdas = per_class_values(cfg.retrain.lambdas, records.class_names, "retrain.lambdas")
    choice = RepaintChoice.from_config(cfg, records.class_names)
    chosen = select_repaints(candidates, choice)
    missing = [p for p in candidates.loc[chosen, "image_path"] if not Path(p).is_file()]
    if missing:
        raise DataError(f"{len(missing)} chosen repaints are missing on disk, e.g. {missing[0]}")
    return RetrainInputs(records, checkpoint, folder, candidates, chosen, choice, lambdas)


def describe_inputs(inputs: RetrainInputs) -> str:
    """One line: how many repaints per class enter, out of how many candidates, under which rule."""
    counts = repaint_counts(inputs.repaint_rows()["target_label"], inputs.class_names)
    c = inputs.choice
    rule = ("manifest's kept column" if c.prune_from == "manifest"
            else f"delta={c.delta:g}, prob_rule={'on' if c.prob_rule else 'off'}")
    per_class = ", ".join(f"{name} {n} (λ={lam:g}, share {share:g})" for (name, n), lam, share
                          in zip(counts.items(), inputs.lambdas, c.keep_fraction, strict=True))
    return (f"repaints from {inputs.manifest_dir}: {int(inputs.chosen.sum())} of {len(inputs.candidates)} "
            f"scored ({rule}) -> {per_class}; originals {len(inputs.records.split('train'))}")


def format_comparison(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]],
                      before_name: str = "ERM", after_name: str = "DDB", title: str | None = None) -> str:
    """The group table of two models side by side, per split (columns ``<split> <model>``)."""
    from raydbb.training.metrics import format_group_table

    columns = {f"{split} {name}": metrics[split] for split in ("val", "test")
               for name, metrics in ((before_name, before), (after_name, after)) if split in metrics}
    return format_group_table(columns, title=title)


@dataclass
class RetrainResult:
    """The written checkpoint folder, its metrics per split, the start model's, and run facts."""

    checkpoint_dir: Path
    metrics: dict[str, dict[str, Any]]
    start_metrics: dict[str, dict[str, Any]]
    run: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        title = (f"before (ERM: {self.run['start_checkpoint']}) vs after (DDB retrain: "
                 f"{self.checkpoint_dir}); accuracy in %")
        return format_comparison(self.start_metrics, self.metrics, title=title)


def finish_run(cfg: RaydbbConfig, inputs: RetrainInputs, out_dir: Path, metrics: dict[str, dict[str, Any]],
               run: dict[str, Any], progress: bool) -> RetrainResult:
    """Evaluate the start checkpoint, write ``metrics.json`` and the resolved config next to the model."""
    from raydbb.training.evaluate import evaluate_checkpoint, write_metrics

    start = evaluate_checkpoint(inputs.checkpoint, inputs.records, tuple(metrics), device=cfg.device,
                                progress=progress)
    run = {
        "checkpoint": str(out_dir), "dataset": inputs.records.name, "data_root": str(cfg.data.root),
        "start_checkpoint": str(inputs.checkpoint), "manifest": str(inputs.manifest_dir),
        "repaints": repaint_counts(inputs.repaint_rows()["target_label"], inputs.class_names),
        "lambdas": dict(zip(inputs.class_names, inputs.lambdas.tolist(), strict=True)),
        "selection": "val worst_group_accuracy", **run, "start_metrics": start,
    }
    write_metrics(out_dir / "metrics.json", metrics, run=run)
    cfg.to_yaml(out_dir / CONFIG_FILE)
    return RetrainResult(out_dir, metrics, start, run)


def run_meta(inputs: RetrainInputs, mode: str) -> dict[str, Any]:
    """The checkpoint metadata of a retraining run (method, mode, repaint choice, dataset)."""
    c = inputs.choice
    meta = {"method": "ddb", "retrain_mode": mode, "manifest": str(inputs.manifest_dir),
            "spurious_names": list(inputs.records.spurious_names), "dataset": inputs.records.name,
            "repaints": repaint_counts(inputs.repaint_rows()["target_label"], inputs.class_names),
            "lambdas": inputs.lambdas.tolist(), "keep_fraction": list(c.keep_fraction),
            "prune_from": c.prune_from}
    if c.prune_from == "config":  # thresholds only mean something when they were applied
        # -inf (IG rule off) as a string: classifier.json stays standard JSON
        meta.update(delta=c.delta if math.isfinite(c.delta) else str(c.delta), prob_rule=c.prob_rule)
    return meta


def retrain_train_config(cfg: RaydbbConfig) -> TrainConfig:
    """The train section with the retrain section's epochs, learning rate, its schedule and weight
    average."""
    r = cfg.retrain
    return cfg.train.model_copy(update={"epochs": r.epochs, "lr": r.lr, "lr_schedule": r.lr_schedule,
                                        "ema_decay": r.ema_decay})


def run_retrain(cfg: RaydbbConfig, manifest_dir: str | Path | None = None,
                progress: bool = True) -> RetrainResult:
    """``raydbb retrain``: reweighted retraining from the ERM weights into ``OUT/ddb``.

    Runs under Ray Train with ``cfg.train``'s workers (epochs and lr from ``cfg.retrain``);
    ``retrain.last_layer_only`` trains the head alone (``retrain.head_on_features`` is the other
    branch of :func:`~raydbb.ddb.retrain.head.retrain`). Writes the selected checkpoint,
    ``metrics.json`` (val, test; the evaluate layout, plus the start model's metrics under
    ``run.start_metrics``) and ``retrain_config.yaml`` to ``OUT/ddb``.
    """
    from raydbb.ray_utils import init_ray
    from raydbb.training.erm import erm_spec, fit_classifier

    inputs = load_inputs(cfg, manifest_dir)
    print(describe_inputs(inputs))
    records = inputs.records
    originals = training_originals(cfg, records.split("train"), progress)
    frame = retrain_frame(originals, repaint_records(inputs.repaint_rows()))
    spec = replace(
        erm_spec(cfg, records), train=retrain_train_config(cfg), classifier=None,
        init_checkpoint=str(inputs.checkpoint.resolve()), head_only=cfg.retrain.last_layer_only,
        loss_fn=RepaintWeightedLoss(frame[REPAINT].to_numpy(), inputs.lambdas), name="ddb",
        meta=run_meta(inputs, "last_layer" if cfg.retrain.last_layer_only else "full"),
    )
    init_ray(cfg.ray)
    out_dir = RunDir(cfg.out).ddb
    result = fit_classifier(spec, frame, records.split("val"), out_dir,
                            final_frames={"test": records.split("test")})
    return finish_run(cfg, inputs, result.checkpoint_dir, result.metrics,
                   {"mode": spec.meta["retrain_mode"], "best_epoch": result.best_epoch,
                    "history": result.history}, progress)
