"""Reweighted retraining on the originals plus the kept repaints (DESIGN §2 step 7, paper Eq. 6-8).

The training set is the original training split ∪ the manifest's kept repaints, each repaint
labelled with its target class y'. Every batch is scored with

    L = CE(original rows of the batch) + Σ_c λ_c · CE(repaint rows of the batch labelled c)

where each CE is the *mean* over its subset of the batch and a subset that is empty in a batch
contributes exactly 0 (:class:`RepaintWeightedLoss`). Training starts from the ERM weights, runs
under Ray Train (:func:`raydbb.training.erm.fit_classifier`: the same code on CPU workers and on
GPU workers) and selects the epoch with the best validation worst-group accuracy.

Which repaints enter: the rows the prune stage decided (``kept``/``prob``/``ig``) that have an
image; of those, the ones the manifest marked kept (``retrain.prune_from=manifest``) or the ones
that pass ``prune.delta``/``prune.prob_rule`` re-applied to the stored scores (``config``, what
``raydbb tune`` writes); then, per target class, the ``retrain.keep_fraction`` share with the
highest IG score (:func:`select_repaints`).

Fast mode (:func:`fast_retrain`, and every ``raydbb tune`` trial): the ERM backbone's penultimate
features are computed once for originals, repaints and validation images
(:func:`build_feature_cache`) and only the linear head is trained on them with the same loss
(:func:`fit_head`): no augmentation, seconds per run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from raydbb.config import RaydbbConfig, TrainConfig
from raydbb.engine.prune_rules import KEPT, RULE_REASONS, decide
from raydbb.errors import ConfigError, DataError, RaydbbError
from raydbb.models.threads import torch_threads

DDB_DIR = "ddb"
REPAINT = "repaint"
"""Column of the retraining frame: True for a generated repaint, False for an original image."""
CONFIG_FILE = "retrain_config.yaml"


# ---------------------------------------------------------------------------------------------
# The loss (Eq. 6-8).


class RepaintWeightedLoss:
    """``loss_fn(logits, labels, index)`` of DDB retraining, a :data:`~raydbb.training.erm.BatchLoss`.

    ``is_repaint[i]`` tells whether row ``i`` of the training frame is a repaint; ``index`` holds
    the batch rows' positions in that frame. Each row falls in a bucket — originals, or repaints
    labelled c — and gets weight ``coef(bucket) / n(bucket in this batch)`` with coef 1 for
    originals and λ_c for repaints labelled c, so each bucket contributes its mean CE times its
    coefficient. A bucket absent from the batch has no rows, hence contributes exactly 0 (no
    0/0), and an empty batch gives 0.
    """

    def __init__(self, is_repaint: np.ndarray, lambdas: Sequence[float]) -> None:
        self.is_repaint = torch.from_numpy(np.array(is_repaint, dtype=bool))  # a private copy
        self.coef = torch.tensor([1.0, *[float(v) for v in lambdas]], dtype=torch.float64)
        self._on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Shipped to Ray workers: the per-device copies are rebuilt there.
        return {**self.__dict__, "_on_device": {}}

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._on_device:  # copy the lookup table once per device, not per batch
            self._on_device[key] = (self.is_repaint.to(device), self.coef.to(device))
        return self._on_device[key]

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        num_classes = self.coef.numel() - 1
        if logits.shape[1] != num_classes:
            raise RaydbbError(f"logits have {logits.shape[1]} classes but {num_classes} λ values were given")
        ce = F.cross_entropy(logits, labels, reduction="none")
        is_repaint, coef = self._tables(logits.device)
        bucket = torch.where(is_repaint[index.long()], labels + 1, torch.zeros_like(labels))
        counts = torch.bincount(bucket, minlength=num_classes + 1)
        weights = coef.to(ce.dtype)[bucket] / counts[bucket].to(ce.dtype)  # counts[bucket] >= 1
        return (weights * ce).sum()


def per_class_values(value: dict[str, float] | float, class_names: Sequence[str],
                     field_name: str) -> np.ndarray:
    """One value per class from ``{class name: value}`` (every class named) or a single number."""
    if not isinstance(value, dict):
        return np.full(len(class_names), float(value))
    unknown = [k for k in value if k not in class_names]
    if unknown:
        raise ConfigError(f"{field_name}: unknown class {unknown[0]!r}; expected one of {list(class_names)}")
    missing = [c for c in class_names if c not in value]
    if missing:
        raise ConfigError(f"{field_name}: no value for class {missing[0]!r}; give every class "
                          f"{list(class_names)} or one number for all")
    return np.array([float(value[c]) for c in class_names])


# ---------------------------------------------------------------------------------------------
# Which repaints enter.


def candidate_repaints(manifest: pd.DataFrame) -> pd.DataFrame:
    """Manifest rows the prune rules decided (kept/prob/ig) and that have an image, fresh index.

    Rows skipped upstream (``no_mask``, ``error:...``) never enter, whatever the thresholds.
    """
    rows = manifest[manifest["prune_reason"].isin(RULE_REASONS) & (manifest["image_path"] != "")]
    return rows.reset_index(drop=True)


@dataclass(frozen=True)
class RepaintChoice:
    """What picks repaints from the candidates: the rule source, thresholds and per-class shares."""

    prune_from: str
    delta: float
    prob_rule: bool
    keep_fraction: tuple[float, ...]

    @classmethod
    def from_config(cls, cfg: RaydbbConfig, class_names: Sequence[str]) -> RepaintChoice:
        shares = per_class_values(cfg.retrain.keep_fraction, class_names, "retrain.keep_fraction")
        return cls(cfg.retrain.prune_from, float(cfg.prune.delta), bool(cfg.prune.prob_rule), tuple(shares))


def select_repaints(candidates: pd.DataFrame, choice: RepaintChoice) -> np.ndarray:
    """Boolean mask over ``candidates`` (see :func:`candidate_repaints`) of the repaints to train on.

    First the rules: the manifest's ``kept`` column (``prune_from="manifest"``) or
    :func:`~raydbb.engine.prune_rules.decide` on the stored ``p_source``/``tau``/``ig_score`` with
    ``delta``/``prob_rule`` (``"config"``; the same function the prune stage applies during
    generation). Then, per target class c, the ``ceil(keep_fraction[c] · n_c)`` passing rows with
    the highest IG score (NaN scores last, ties by ``sample_id``).
    """
    if choice.prune_from == "manifest":
        passed = candidates["kept"].to_numpy(dtype=bool).copy()
    elif choice.prune_from == "config":
        reasons = decide(candidates["p_source"].to_numpy(), candidates["tau"].to_numpy(),
                         candidates["ig_score"].to_numpy(), choice.delta, choice.prob_rule)
        passed = reasons == KEPT
    else:
        raise ConfigError(f"retrain.prune_from={choice.prune_from!r}: expected 'manifest' or 'config'")
    targets = candidates["target_label"].to_numpy(dtype=np.int64)
    if len(targets) and (targets.min() < 0 or targets.max() >= len(choice.keep_fraction)):
        raise DataError(f"manifest has target_label {int(targets.max())} but the classifier has "
                        f"{len(choice.keep_fraction)} classes")
    score = np.nan_to_num(candidates["ig_score"].to_numpy(dtype=np.float64), nan=-np.inf)
    order = np.lexsort((candidates["sample_id"].to_numpy(dtype=str), -score))  # score desc, then id
    chosen = np.zeros(len(candidates), dtype=bool)
    for c, share in enumerate(choice.keep_fraction):
        rows = order[passed[order] & (targets[order] == c)]
        chosen[rows[:math.ceil(round(share * len(rows), 9))]] = True
    return chosen


def repaint_records(rows: pd.DataFrame) -> pd.DataFrame:
    """Manifest rows as training records: path = the repaint, label = y', group unknown (-1)."""
    return pd.DataFrame({
        "sample_id": rows["sample_id"].astype(str).to_numpy(),
        "path": rows["image_path"].astype(str).to_numpy(),
        "label": rows["target_label"].to_numpy(dtype=np.int64),
        "spurious": np.full(len(rows), -1, dtype=np.int64),
        "group": np.full(len(rows), -1, dtype=np.int64),
        "split": "train",
        "mask": None,
        REPAINT: True,
    })


def retrain_frame(train: pd.DataFrame, repaints: pd.DataFrame) -> pd.DataFrame:
    """Originals (``repaint=False``) then repaint records (``repaint=True``), index 0..n-1."""
    frame = pd.concat([train.assign(**{REPAINT: False}), repaints], ignore_index=True)
    if frame["sample_id"].duplicated().any():
        dup = frame.loc[frame["sample_id"].duplicated(), "sample_id"].iloc[0]
        raise DataError(f"repaint sample_id {dup!r} is also a training image id; expected distinct ids")
    return frame


def repaint_counts(labels: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    """Number of repaints per target class name."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    return {name: int(n) for name, n in zip(class_names, counts, strict=True)}


# ---------------------------------------------------------------------------------------------
# Shared set-up of a retraining run.


@dataclass
class RetrainInputs:
    """Everything a retraining run reads, resolved and checked once."""

    records: Any  # RecordSet
    checkpoint: Path
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
    path = Path(cfg.retrain.checkpoint) if cfg.retrain.checkpoint else Path(cfg.out) / "erm"
    if not (path / "classifier.json").is_file():
        raise RaydbbError(f"start checkpoint {path} not found (no classifier.json); run raydbb train-erm "
                          "or set retrain.checkpoint=DIR")
    return path


def load_inputs(cfg: RaydbbConfig, manifest_dir: str | Path | None = None) -> RetrainInputs:
    """Records, start checkpoint, manifest candidates and the chosen repaints for ``cfg``.

    ``manifest_dir`` is the run folder of ``raydbb generate`` (or its ``manifest/``); default ``OUT``.
    """
    from raydbb.commands.prune import run_folder
    from raydbb.data.registry import load_records
    from raydbb.engine.manifest import read_manifest
    from raydbb.models.checkpoint import read_classifier_meta
    from raydbb.training.evaluate import check_classes

    records = load_records(cfg.data)
    ckpt = start_checkpoint(cfg)
    check_classes(read_classifier_meta(ckpt), records, ckpt)
    folder = run_folder(manifest_dir if manifest_dir is not None else cfg.out)
    candidates = candidate_repaints(read_manifest(folder))
    lambdas = per_class_values(cfg.retrain.lambdas, records.class_names, "retrain.lambdas")
    choice = RepaintChoice.from_config(cfg, records.class_names)
    chosen = select_repaints(candidates, choice)
    missing = [p for p in candidates.loc[chosen, "image_path"] if not Path(p).is_file()]
    if missing:
        raise DataError(f"{len(missing)} chosen repaints are missing on disk, e.g. {missing[0]}")
    return RetrainInputs(records, ckpt, folder, candidates, chosen, choice, lambdas)


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


def _finish(cfg: RaydbbConfig, inputs: RetrainInputs, out_dir: Path, metrics: dict[str, dict[str, Any]],
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


def _meta(inputs: RetrainInputs, mode: str) -> dict[str, Any]:
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


# ---------------------------------------------------------------------------------------------
# Full retraining under Ray Train.


def retrain_train_config(cfg: RaydbbConfig) -> TrainConfig:
    """The train section with the retrain section's epochs and learning rate."""
    return cfg.train.model_copy(update={"epochs": cfg.retrain.epochs, "lr": cfg.retrain.lr})


def run_retrain(cfg: RaydbbConfig, manifest_dir: str | Path | None = None,
                progress: bool = True) -> RetrainResult:
    """``raydbb retrain``: reweighted retraining from the ERM weights into ``OUT/ddb``.

    Runs under Ray Train with ``cfg.train``'s workers (epochs and lr from ``cfg.retrain``);
    ``retrain.last_layer_only`` trains the head alone. Writes the selected checkpoint,
    ``metrics.json`` (val, test; the evaluate layout, plus the start model's metrics under
    ``run.start_metrics``) and ``retrain_config.yaml`` to ``OUT/ddb``.
    """
    from raydbb.ray_utils import init_ray
    from raydbb.training.erm import erm_spec, fit_classifier

    inputs = load_inputs(cfg, manifest_dir)
    print(describe_inputs(inputs))
    records = inputs.records
    frame = retrain_frame(records.split("train"), repaint_records(inputs.repaint_rows()))
    spec = replace(
        erm_spec(cfg, records), train=retrain_train_config(cfg), classifier=None,
        init_checkpoint=str(inputs.checkpoint.resolve()), head_only=cfg.retrain.last_layer_only,
        loss_fn=RepaintWeightedLoss(frame[REPAINT].to_numpy(), inputs.lambdas), name="ddb",
        meta=_meta(inputs, "last_layer" if cfg.retrain.last_layer_only else "full"),
    )
    init_ray(cfg.ray)
    out_dir = Path(cfg.out) / DDB_DIR
    result = fit_classifier(spec, frame, records.split("val"), out_dir,
                            final_frames={"test": records.split("test")})
    return _finish(cfg, inputs, result.checkpoint_dir, result.metrics,
                   {"mode": spec.meta["retrain_mode"], "best_epoch": result.best_epoch,
                    "history": result.history}, progress)


# ---------------------------------------------------------------------------------------------
# Fast mode: the linear head on cached backbone features.


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


@torch.no_grad()
def extract_features(model: torch.nn.Module, frame: pd.DataFrame, image_size: int,
                     device: str | torch.device = "cpu", batch_size: int = 128, desc: str = "features",
                     progress: bool = False) -> np.ndarray:
    """``model.features`` of every row of ``frame`` (evaluation transform, eval mode), float32 (N, D)."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from raydbb.data.torch_dataset import ImageRecords
    from raydbb.models.transforms import EvalTransform

    model.eval()
    loader = DataLoader(ImageRecords(frame, EvalTransform(image_size)), batch_size=batch_size, shuffle=False)
    chunks = [model.features(images.to(device)).float().cpu().numpy()
              for images, *_ in tqdm(loader, desc=desc, disable=not progress, leave=False)]
    dim = model.head.in_features
    return np.concatenate(chunks) if chunks else np.zeros((0, dim), dtype=np.float32)


SCORE_COLUMNS = ("sample_id", "target_label", "p_source", "tau", "ig_score", "kept", "prune_reason")


def build_feature_cache(cfg: RaydbbConfig, inputs: RetrainInputs, progress: bool = True) -> FeatureCache:
    """Run the start model's backbone once over originals, every candidate repaint and validation."""
    from raydbb.models.checkpoint import load_classifier
    from raydbb.training.metrics import train_group_fractions

    records = inputs.records
    train, val = records.split("train"), records.split("val")
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
    from raydbb.training.erm import _optimizer, _selection_key
    from raydbb.training.metrics import count_correct, metrics_from_counts

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
        optimizer = _optimizer(head.parameters(), train.model_copy(update={"lr": params.lr}))
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
            key = _selection_key(val)
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
    from raydbb.training.erm import publish_checkpoint
    from raydbb.training.evaluate import evaluate_model

    inputs = load_inputs(cfg, manifest_dir)
    print(describe_inputs(inputs))
    cache = build_feature_cache(cfg, inputs, progress)
    fit = fit_head(cache, HeadParams.from_config(cfg, inputs.class_names), cfg.train, cfg.retrain.fast_epochs)
    model, meta = load_classifier(inputs.checkpoint, device=cfg.device)
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(fit.weight))
        model.head.bias.copy_(torch.from_numpy(fit.bias))
    out_dir = (Path(cfg.out) / DDB_DIR).resolve()
    keep = {k: v for k, v in meta.items() if k in ("class_names", "group_names")}
    publish_checkpoint(model, out_dir, {**keep, **_meta(inputs, "fast"), "epoch": fit.best_epoch,
                                        "init_checkpoint": str(inputs.checkpoint), "head_only": True,
                                        "val_metrics": fit.val})
    metrics = evaluate_model(model, inputs.records, int(meta["image_size"]), ("val", "test"),
                             device=cfg.device, progress=progress)
    return _finish(cfg, inputs, out_dir, metrics,
                   {"mode": "fast", "best_epoch": fit.best_epoch, "fast_objective": fit.objective,
                    "history": fit.history}, progress)

