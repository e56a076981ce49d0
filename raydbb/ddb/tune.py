"""``raydbb tune``: Ray Tune over the prune thresholds, repaint shares, λ_c and lr of DDB retraining.

Every trial is a fast-mode retraining (:func:`raydbb.ddb.retrain.head.fit_head`): the linear head
trained on backbone features computed once (:func:`raydbb.ddb.retrain.head.build_feature_cache`)
and shared with all trials through Ray's object store (``tune.with_parameters``). Thresholds are
re-applied to the scores stored in the manifest (:func:`raydbb.ddb.retrain.repaints.select_repaints`),
so no trial regenerates or re-scores an image. Trials report validation numbers after every epoch
and ASHA stops the unpromising ones; the search stops after ``tune.num_samples`` trials or
``tune.time_budget_s``.

The search space, per run:

* δ (``prune.delta``): ``tune.deltas`` ∪ {the config's ``prune.delta``} ∪ the
  ``tune.delta_quantiles`` quantiles of the stored IG scores;
* probability rule on/off (``tune.prob_rule``);
* per class c, the share of its kept repaints used, highest IG score first
  (``tune.keep_fractions``; stands in for the selection fraction α without regenerating);
* per class c, λ_c log-uniform in ``tune.lambda_range``; the head lr (``retrain.fast_lr``) log-uniform
  in ``tune.lr_range``.

The objective is the validation worst-group accuracy of the epoch the trial would select (the
best so far), i.e. exactly what ``raydbb retrain --fast`` with the winning config reproduces.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raydbb.config import RaydbbConfig, TrainConfig
from raydbb.ddb.retrain.head import FeatureCache, HeadParams, build_feature_cache, fit_head
from raydbb.ddb.retrain.repaints import RepaintChoice
from raydbb.ddb.retrain.run import describe_inputs, load_inputs
from raydbb.errors import DataError, RaydbbError

TUNE_DIR = "tune"
BEST_FILE = "best.yaml"
TRIALS_FILE = "trials.csv"
OBJECTIVE = "objective"


def delta_candidates(cfg: RaydbbConfig, ig_scores: np.ndarray) -> list[float]:
    """δ values to search: ``tune.deltas``, ``prune.delta`` and quantiles of the finite IG scores."""
    values = {float(d) for d in cfg.tune.deltas} | {float(cfg.prune.delta)}
    finite = np.asarray(ig_scores, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size:
        values |= {float(q) for q in np.quantile(finite, cfg.tune.delta_quantiles)}
    return sorted(values)


def search_space(cfg: RaydbbConfig, cache: FeatureCache) -> dict[str, Any]:
    """The Ray Tune ``param_space`` (see the module docstring)."""
    from ray import tune

    def log_range(low: float, high: float) -> Any:
        return low if low == high else tune.loguniform(low, high)

    t = cfg.tune
    return {
        # -inf travels as the string "-inf" (float() reads it back): Tune's TensorBoard logger
        # rejects infinite hyper-parameter values.
        "delta": tune.choice([d if math.isfinite(d) else str(d)
                              for d in delta_candidates(cfg, cache.candidates["ig_score"].to_numpy())]),
        "prob_rule": tune.choice(list(t.prob_rule)),
        "lr": log_range(*t.lr_range),
        "keep_fraction": {c: tune.choice(list(t.keep_fractions)) for c in cache.class_names},
        "lambda": {c: log_range(*t.lambda_range) for c in cache.class_names},
    }


def params_from_trial(config: dict[str, Any], class_names: list[str]) -> HeadParams:
    """The :class:`~raydbb.ddb.retrain.head.HeadParams` of one sampled trial configuration."""
    choice = RepaintChoice("config", float(config["delta"]), bool(config["prob_rule"]),
                           tuple(float(config["keep_fraction"][c]) for c in class_names))
    return HeadParams(choice, tuple(float(config["lambda"][c]) for c in class_names), float(config["lr"]))


def _trial(config: dict[str, Any], cache: FeatureCache, train: TrainConfig, epochs: int) -> None:
    """One Ray Tune trial: fit the head, report after every epoch (ASHA decides on these)."""
    from ray import tune

    fit_head(cache, params_from_trial(config, cache.class_names), train, epochs, report=tune.report)


def best_config(cfg: RaydbbConfig, trial_config: dict[str, Any], class_names: list[str],
                epochs: int) -> RaydbbConfig:
    """``cfg`` with a trial's choices written into the prune/retrain fields ``raydbb retrain`` reads.

    ``retrain.prune_from=config`` (the thresholds are re-applied to the manifest), the head lr
    in ``retrain.fast_lr`` (``retrain.lr`` of full retraining is left alone) and
    ``retrain.fast_epochs`` = the epochs the trial ran, so ``raydbb retrain --fast`` reproduces it.
    """
    params = params_from_trial(trial_config, class_names)
    best = cfg.model_copy(deep=True)
    best.prune.delta = params.choice.delta
    best.prune.prob_rule = params.choice.prob_rule
    best.retrain.prune_from = "config"
    best.retrain.keep_fraction = dict(zip(class_names, params.choice.keep_fraction, strict=True))
    best.retrain.lambdas = dict(zip(class_names, params.lambdas, strict=True))
    best.retrain.fast_lr = params.lr
    best.retrain.fast_epochs = epochs
    return best


def trials_table(results: list[Any], class_names: list[str], max_epochs: int) -> pd.DataFrame:
    """One row per trial (Ray Tune ``Result`` objects), best objective first."""
    rows = []
    for index, res in enumerate(results):
        m, c = res.metrics or {}, res.config or {}
        epochs = int(m.get("training_iteration", 0))
        row: dict[str, Any] = {
            "trial": index, "trial_id": m.get("trial_id", ""),
            "status": "ERROR" if res.error else "TERMINATED",
            OBJECTIVE: m.get(OBJECTIVE, math.nan), "selected_epoch": m.get("selected_epoch", 0),
            "epochs": epochs, "stopped_early": bool(not res.error and epochs < max_epochs),
            "delta": float(c.get("delta", math.nan)), "prob_rule": c.get("prob_rule"), "lr": c.get("lr"),
        }
        for name in class_names:
            row[f"keep_fraction_{name}"] = c.get("keep_fraction", {}).get(name)
            row[f"lambda_{name}"] = c.get("lambda", {}).get(name)
            row[f"repaints_{name}"] = m.get(f"repaints_{name}")
        row["error"] = (str(res.error).strip().splitlines() or [""])[-1] if res.error else ""
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return frame.sort_values([OBJECTIVE, "trial"], ascending=[False, True], na_position="last",
                             kind="stable").reset_index(drop=True)


@dataclass
class TuneResult:
    """Where the search wrote its results, the winning config, its objective and per-epoch reports."""

    best_config: RaydbbConfig
    best_objective: float
    best_trial: dict[str, Any]
    best_history: list[dict[str, Any]]
    trials: pd.DataFrame
    best_path: Path
    trials_path: Path


def run_tune(cfg: RaydbbConfig, manifest_dir: str | Path | None = None, progress: bool = True) -> TuneResult:
    """``raydbb tune``: the search; writes ``OUT/tune/best.yaml`` and ``OUT/tune/trials.csv``.

    Trials get ``tune.cpus_per_trial`` logical CPUs each (fractional is fine), at most
    ``tune.max_concurrent_trials`` at a time: the driver and the object store keep CPU to run.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from raydbb.ray_utils import init_ray

    inputs = load_inputs(cfg, manifest_dir)
    if inputs.candidates.empty:
        raise DataError(f"manifest {inputs.manifest_dir} has no scored repaints to tune over")
    print(describe_inputs(inputs))
    init_ray(cfg.ray)
    cache = build_feature_cache(cfg, inputs, progress)
    class_names = cache.class_names
    epochs = cfg.retrain.fast_epochs
    out = Path(cfg.out).resolve() / TUNE_DIR
    out.mkdir(parents=True, exist_ok=True)
    seed = cfg.seed if cfg.tune.seed is None else cfg.tune.seed

    trainable = tune.with_resources(
        tune.with_parameters(_trial, cache=cache, train=cfg.train, epochs=epochs),
        {"cpu": cfg.tune.cpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(cfg, cache),
        tune_config=tune.TuneConfig(
            metric=OBJECTIVE, mode="max", num_samples=cfg.tune.num_samples,
            time_budget_s=cfg.tune.time_budget_s,
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                                    grace_period=min(cfg.tune.grace_period, epochs),
                                    reduction_factor=cfg.tune.reduction_factor),
            # The generator applies the concurrency cap itself (TuneConfig's would be ignored).
            search_alg=BasicVariantGenerator(random_state=seed,
                                             max_concurrent=cfg.tune.max_concurrent_trials),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
                                  storage_path=str(out / "ray"), verbose=1 if progress else 0),
    )
    start = time.perf_counter()
    grid = tuner.fit()
    seconds = time.perf_counter() - start
    results = [grid[i] for i in range(len(grid))]
    table = trials_table(results, class_names, epochs)
    trials_path = out / TRIALS_FILE
    table.to_csv(trials_path, index=False)
    ok = [(i, r) for i, r in enumerate(results) if not r.error and OBJECTIVE in (r.metrics or {})]
    if not ok:
        first = table["error"].iloc[0] if len(table) else "no trial ran (time budget too small?)"
        raise RaydbbError(f"every tune trial failed; first error: {first}")
    index, best = max(ok, key=lambda item: (item[1].metrics[OBJECTIVE], -item[0]))
    best_cfg = best_config(cfg, best.config, class_names, int(best.metrics["training_iteration"]))
    best_path = out / BEST_FILE
    best_cfg.to_yaml(best_path)
    print(f"tune: {len(results)} trials ({len(results) - len(ok)} failed) in {seconds:.0f} s; "
          f"best val objective {best.metrics[OBJECTIVE]:.4f} (trial {index})")
    history = best.metrics_dataframe.to_dict("records") if best.metrics_dataframe is not None else []
    return TuneResult(best_cfg, float(best.metrics[OBJECTIVE]), dict(best.config), history, table, best_path,
                      trials_path)


def format_trials(table: pd.DataFrame, top: int = 10) -> str:
    """The best ``top`` trials as text (objective, early stop, δ, rule, lr, per-class share/λ/count)."""
    if table.empty:
        return "(no trials)"
    show = table.head(top).copy()
    for col in show.columns:
        if show[col].dtype.kind == "f":
            show[col] = show[col].map(lambda v: "" if pd.isna(v) else f"{v:.4g}")
    return show.drop(columns=["trial_id", "error"]).to_string(index=False)
