"""`raydbb tune`: the search space, best.yaml round trip, and a real search whose winner reproduces."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from ddb_run import CLASSES, base_overrides, build_tiny_run

from raydbb.cli import main
from raydbb.config import load_config
from raydbb.ddb.retrain.head import HeadParams
from raydbb.ddb.tune import BEST_FILE, TRIALS_FILE, best_config, delta_candidates, params_from_trial


def test_delta_candidates_join_explicit_values_the_config_and_score_quantiles():
    cfg = load_config(None, ["prune.delta=0.05", "tune.deltas=[-.inf, 0.0]",
                             "tune.delta_quantiles=[0.5, 1.0]"])
    scores = np.array([0.1, 0.2, 0.3, 0.4, np.nan])  # NaN: a row without a score, ignored
    assert delta_candidates(cfg, scores) == [-math.inf, 0.0, 0.05, 0.25, 0.4]
    assert delta_candidates(cfg, np.array([np.nan])) == [-math.inf, 0.0, 0.05]


def test_best_config_round_trips_through_yaml_exactly(tmp_path):
    trial = {"delta": 0.012345678901234567, "prob_rule": False, "lr": 0.0031415926535897933,
             "keep_fraction": {"landbird": 0.25, "waterbird": 1.0},
             "lambda": {"landbird": 7.123456789012345, "waterbird": 1.5}}
    cfg = load_config(None, [f"out={tmp_path}", "retrain.lambdas=3"])
    best = best_config(cfg, trial, CLASSES, epochs=7)
    best.to_yaml(tmp_path / BEST_FILE)
    loaded = load_config(tmp_path / BEST_FILE)
    assert loaded == best
    assert loaded.retrain.prune_from == "config" and loaded.retrain.fast_epochs == 7
    assert loaded.retrain.fast_lr == 0.0031415926535897933 and loaded.retrain.lr == cfg.retrain.lr
    assert loaded.retrain.lambdas == {"landbird": 7.123456789012345, "waterbird": 1.5}
    assert HeadParams.from_config(loaded, CLASSES) == params_from_trial(trial, CLASSES)  # bit-exact floats


def test_tune_then_fast_retrain_reproduces_the_best_trial(ray_local, tmp_path_factory, tmp_path, capsys):
    run = build_tiny_run(tmp_path_factory.getbasetemp())
    out = tmp_path / "run"
    overrides = [*base_overrides(run, out), "retrain.fast_epochs=3", "tune.num_samples=4",
                 "tune.max_concurrent_trials=2", "tune.cpus_per_trial=0.5", "tune.grace_period=1",
                 "tune.time_budget_s=600", "tune.delta_quantiles=[0.25, 0.5]"]
    assert main(["tune", "--manifest", str(run.out), "--no-progress", *overrides]) == 0
    printed = capsys.readouterr().out
    assert "tune: 4 trials (0 failed)" in printed

    trials = pd.read_csv(out / "tune" / TRIALS_FILE)
    assert len(trials) == 4 and (trials["status"] == "TERMINATED").all()
    assert trials["objective"].is_monotonic_decreasing  # best first
    assert set(trials["delta"]) <= set(delta_candidates(load_config(None, overrides),
                                                        pd.read_parquet(run.out / "manifest")["ig_score"]))
    assert trials["epochs"].between(1, 3).all()
    for c in CLASSES:
        assert trials[f"keep_fraction_{c}"].isin([0.25, 0.5, 0.75, 1.0]).all()
        assert trials[f"lambda_{c}"].between(1.0, 20.0).all()

    best_path = out / "tune" / BEST_FILE
    best = load_config(best_path)  # a config raydbb retrain accepts
    top = trials.iloc[0]
    assert best.prune.delta == top["delta"] and best.prune.prob_rule == top["prob_rule"]
    assert best.retrain.prune_from == "config" and best.retrain.fast_epochs == top["epochs"]
    assert best.retrain.lambdas == {c: pytest.approx(top[f"lambda_{c}"], rel=1e-12) for c in CLASSES}

    # Retrained in fast mode from best.yaml with the same seed: the same objective and the same
    # per-epoch training losses as the trial reported.
    assert main(["retrain", "--config", str(best_path), "--manifest", str(run.out), "--fast",
                 "--no-progress"]) == 0
    metrics = json.loads((out / "ddb" / "metrics.json").read_text())
    assert metrics["run"]["mode"] == "fast"
    assert metrics["run"]["fast_objective"] == top["objective"]
    assert metrics["run"]["repaints"] == {c: int(top[f"repaints_{c}"]) for c in CLASSES}
    progress = sorted((out / "tune" / "ray").glob(f"*/*{top['trial_id']}*/progress.csv"))
    assert len(progress) == 1
    reported = pd.read_csv(progress[0])
    np.testing.assert_array_equal([h["train_loss"] for h in metrics["run"]["history"]],
                                  reported["train_loss"].to_numpy())
    # The written checkpoint evaluated from the images agrees with the fast objective on val.
    assert metrics["val"]["worst_group_accuracy"] == pytest.approx(top["objective"])

    # Through the step runner: the same search again is skipped by its marker (the retraining that
    # ran since does not make it out of date), trials untouched; another manifest would join its inputs.
    written = (out / "tune" / TRIALS_FILE).read_bytes()
    capsys.readouterr()
    assert main(["tune", "--manifest", str(run.out), "--no-progress", *overrides]) == 0
    assert "tune: already done" in capsys.readouterr().out
    assert (out / "tune" / TRIALS_FILE).read_bytes() == written
    marker = json.loads((out / ".steps" / "tune.json").read_text())
    assert marker["inputs"]["option.manifest"] == str(run.out.resolve())
    assert set(marker["upstream"]) == {"train_erm", "generate"}

    # --full-retrain: the finished search is skipped and the winning settings are retrained in full
    # (not the head on cached features the search scored), through the run folder's retrain step.
    assert main(["tune", "--manifest", str(run.out), "--no-progress", "--full-retrain", *overrides]) == 0
    printed = capsys.readouterr().out
    assert "tune: already done" in printed and "retrain: " in printed
    assert json.loads((out / "ddb" / "metrics.json").read_text())["run"]["mode"] == "full"
    assert (out / "tune" / TRIALS_FILE).read_bytes() == written
