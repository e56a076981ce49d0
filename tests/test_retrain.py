"""DDB retraining: the loss against hand computations, repaint choice, and `raydbb retrain` end to end."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from ddb_run import CLASSES, base_overrides, build_tiny_run, oracle_generate

from raydbb.cli import main
from raydbb.ddb.retrain.loss import RepaintWeightedLoss, per_class_values
from raydbb.ddb.retrain.repaints import RepaintChoice, candidate_repaints, select_repaints
from raydbb.engine.manifest import read_manifest
from raydbb.errors import ConfigError

# ---------------------------------------------------------------- the loss, by hand
# Two classes. Logits [0, 0] give p = (1/2, 1/2); logits [ln 3, 0] give p = (3/4, 1/4). So
#   CE([0, 0], y)    = ln 2   = 0.693147
#   CE([ln3, 0], 0)  = ln 4/3 = 0.287682
#   CE([ln3, 0], 1)  = ln 4   = 1.386294
LN3 = math.log(3.0)
LOGITS = torch.tensor([[0.0, 0.0], [LN3, 0.0], [LN3, 0.0], [0.0, 0.0], [LN3, 0.0]], dtype=torch.float64)
LABELS = torch.tensor([0, 0, 1, 1, 0])
IS_REPAINT = np.array([False, False, True, True, True])  # rows 0-1 originals, 2-4 repaints
LAMBDAS = (2.0, 5.0)  # λ_landbird (class 0), λ_waterbird (class 1)
# rows:   0: orig, ln 2    1: orig, ln 4/3    2: repaint labelled 1, ln 4    3: repaint labelled 1, ln 2
#         4: repaint labelled 0, ln 4/3
ORIGINALS = (0.693147 + 0.287682) / 2          # mean CE of the originals      = 0.4904145
REPAINTS_1 = 5.0 * (1.386294 + 0.693147) / 2   # λ_1 · mean CE, class-1 repaints = 5.1986025
REPAINTS_0 = 2.0 * 0.287682                    # λ_0 · mean CE, class-0 repaints = 0.575364


@pytest.mark.parametrize(("rows", "expected"), [
    ([0, 1], ORIGINALS),                                    # all originals: plain mean CE
    ([2, 3, 4], REPAINTS_1 + REPAINTS_0),                   # all repaints, no originals: 5.7739665
    ([0, 1, 2, 3, 4], ORIGINALS + REPAINTS_1 + REPAINTS_0),  # mixed: 6.264381
    ([0, 1, 2, 3], ORIGINALS + REPAINTS_1),                 # class-0 repaints absent: 5.689017
    ([4, 0], 0.693147 + REPAINTS_0),                        # one original, one class-0 repaint: 1.268511
    ([], 0.0),                                              # an empty batch
])
def test_loss_matches_hand_computation(rows, expected):
    loss_fn = RepaintWeightedLoss(IS_REPAINT, LAMBDAS)
    index = torch.tensor(rows, dtype=torch.int64)
    loss = loss_fn(LOGITS[index], LABELS[index], index)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_loss_index_is_the_row_of_the_training_frame():
    # The same logits/labels are weighted as originals or repaints depending only on the index.
    loss_fn = RepaintWeightedLoss(np.array([False, True]), (10.0, 10.0))
    logits, labels = torch.zeros(1, 2), torch.tensor([1])
    assert loss_fn(logits, labels, torch.tensor([0])).item() == pytest.approx(0.693147, abs=1e-6)
    assert loss_fn(logits, labels, torch.tensor([1])).item() == pytest.approx(6.93147, abs=1e-5)


def test_lambda_scales_the_gradient_of_repaint_rows():
    """dL/dlogits of a repaint row labelled c is λ_c / n_c · (softmax − onehot); originals keep 1/n."""
    def grads(lambdas):
        logits = LOGITS.clone().requires_grad_(True)
        RepaintWeightedLoss(IS_REPAINT, lambdas)(logits, LABELS, torch.arange(5)).backward()
        return logits.grad

    base, scaled = grads((2.0, 5.0)), grads((2.0, 15.0))
    torch.testing.assert_close(scaled[2:4], 3 * base[2:4])  # λ_1 tripled: class-1 repaint rows x3
    torch.testing.assert_close(scaled[[0, 1, 4]], base[[0, 1, 4]])  # everything else unchanged
    # Row 2 by hand: λ_1 / n_1 · (p − onehot(1)) = 5/2 · (3/4, 1/4 − 1) = (1.875, −1.875).
    torch.testing.assert_close(base[2], torch.tensor([1.875, -1.875], dtype=torch.float64))
    zero = grads((2.0, 0.0))
    assert torch.count_nonzero(zero[2:4]) == 0  # λ = 0 switches the class's repaints off


def test_loss_survives_pickling_for_ray_workers():
    loss_fn = RepaintWeightedLoss(IS_REPAINT, LAMBDAS)
    loss_fn(LOGITS, LABELS, torch.arange(5))  # fills the per-device cache
    clone = pickle.loads(pickle.dumps(loss_fn))
    assert clone(LOGITS, LABELS, torch.arange(5)).item() == pytest.approx(ORIGINALS + REPAINTS_1 + REPAINTS_0,
                                                                          abs=1e-5)


def test_per_class_values_name_every_class():
    np.testing.assert_array_equal(per_class_values(6.0, CLASSES, "retrain.lambdas"), [6.0, 6.0])
    np.testing.assert_array_equal(per_class_values({"waterbird": 8, "landbird": 6}, CLASSES, "x"), [6.0, 8.0])
    with pytest.raises(ConfigError, match=r"^retrain.lambdas: unknown class 'seabird'; expected one of "
                                          r"\['landbird', 'waterbird'\]$"):
        per_class_values({"landbird": 6, "seabird": 8}, CLASSES, "retrain.lambdas")
    with pytest.raises(ConfigError, match="no value for class 'waterbird'"):
        per_class_values({"landbird": 6}, CLASSES, "retrain.lambdas")


# ---------------------------------------------------------------- which repaints enter

def _candidates():
    return pd.DataFrame({
        "sample_id": ["a", "b", "c", "d", "e", "f", "g", "h"],
        "target_label": [1, 1, 1, 1, 1, 0, 0, 1],
        "p_source": [0.1, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1, np.nan],
        "tau": [0.5] * 8,
        "ig_score": [0.3, 0.9, 0.5, 0.8, -0.2, 0.4, 0.4, np.nan],
        "kept": [True, True, True, False, False, True, True, False],
        "prune_reason": ["kept", "kept", "kept", "prob", "ig", "kept", "kept", "no_mask"],
        "image_path": ["x"] * 7 + [""],
    })


def test_select_repaints_rules_then_top_ig_share_per_class():
    cand = candidate_repaints(_candidates())
    assert cand["sample_id"].tolist() == list("abcdefg")  # the no_mask row never enters
    pick = lambda choice: cand["sample_id"][select_repaints(cand, choice)].tolist()  # noqa: E731
    assert pick(RepaintChoice("manifest", 0.0, True, (1.0, 1.0))) == list("abcfg")
    # Re-decided with δ = 0.4: c (0.5) passes, a (0.3) and f/g (0.4 = δ, boundary drops) do not.
    assert pick(RepaintChoice("config", 0.4, True, (1.0, 1.0))) == ["b", "c"]
    assert pick(RepaintChoice("config", -math.inf, False, (1.0, 1.0))) == list("abcdefg")
    # Shares: class 1 passing = b .9, d .8, c .5, a .3, e -.2 -> ceil(0.5·5) = 3 best; class 0: f, g tie
    # at 0.4 -> ceil(0.5·2) = 1, the tie broken by sample_id.
    assert pick(RepaintChoice("config", -math.inf, False, (0.5, 0.5))) == ["b", "c", "d", "f"]
    # Kept in the manifest: a, b, c (class 1) and f, g (class 0); a share of 0.34 of class 1 keeps
    # ceil(0.34·3) = 2 of them, the highest scores b and c.
    assert pick(RepaintChoice("manifest", 0.0, True, (1.0, 0.34))) == ["b", "c", "f", "g"]


def test_delta_on_the_manifest_equals_pruning_at_generation_time(tmp_path_factory, tmp_path):
    """The tiny run's manifest was generated with every rule off; re-applying (δ, prob rule) to its
    stored scores keeps exactly what a generate run with those thresholds keeps."""
    run = build_tiny_run(tmp_path_factory.getbasetemp())
    cand = candidate_repaints(read_manifest(run.out))
    assert len(cand) == 48 and cand["kept"].all()
    delta = float(np.median(cand["ig_score"]))
    out = tmp_path / "gen"
    oracle_generate(run, out, delta, prob_rule=False)
    generated = read_manifest(out)
    kept_then = set(generated["sample_id"][generated["kept"]])
    assert 0 < len(kept_then) < len(cand) and set(generated["prune_reason"]) == {"kept", "ig"}
    chosen = select_repaints(cand, RepaintChoice("config", delta, False, (1.0, 1.0)))
    assert set(cand["sample_id"][chosen]) == kept_then
    # The probability rule re-applied to the stored p_source/τ: the ERM still sees the source class in
    # these perfect repaints of its most confident images, so it drops every one of them.
    assert not select_repaints(cand, RepaintChoice("config", -math.inf, True, (1.0, 1.0))).any()
    assert (cand["p_source"] >= cand["tau"]).all()


# ---------------------------------------------------------------- `raydbb retrain` end to end

def test_retrain_cli_improves_or_holds_val_wga_and_evaluate_reads_it(ray_local, tmp_path_factory, tmp_path,
                                                                    capsys):
    run = build_tiny_run(tmp_path_factory.getbasetemp())
    out = tmp_path / "run"
    # train.num_workers=0: Ray Train's local mode (no worker process to start); the loss's trip to a
    # worker is the pickling test above, the worker path itself is test_erm's.
    args = ["retrain", "--manifest", str(run.out), "--no-progress", *base_overrides(run, out),
            "retrain.epochs=6", "retrain.lr=0.001", "retrain.lambdas=1", "train.num_workers=0"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "val ERM acc %" in printed and "val DDB acc %" in printed and "waterbird/land" in printed
    assert "48 of 48 scored" in printed

    ddb = out / "ddb"
    metrics = json.loads((ddb / "metrics.json").read_text())
    assert set(metrics) == {"val", "test", "run"}
    start = metrics["run"]["start_metrics"]
    assert metrics["val"]["worst_group_accuracy"] >= start["val"]["worst_group_accuracy"]
    assert metrics["run"]["repaints"] == {"landbird": 12, "waterbird": 36}
    assert metrics["run"]["lambdas"] == {"landbird": 1.0, "waterbird": 1.0}
    history = metrics["run"]["history"]
    assert len(history) == 6 and all(np.isfinite(h["train_loss"]) for h in history)
    best = max(h["val_worst_group_accuracy"] for h in history)
    assert metrics["val"]["worst_group_accuracy"] == best

    meta = json.loads((ddb / "classifier.json").read_text())
    assert meta["method"] == "ddb" and meta["init_checkpoint"] == str(run.erm.resolve())
    assert not meta["head_only"] and meta["lambdas"] == [1.0, 1.0]

    # `raydbb evaluate` reads the checkpoint and gets the numbers the retraining recorded.
    evaluated = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(ddb), "--dataset", "synthetic", "--root", str(run.data),
                 "--out", str(evaluated)]) == 0
    again = json.loads(evaluated.read_text())
    assert again["val"] == metrics["val"] and again["test"] == metrics["test"]


def test_retrain_unknown_lambda_class_is_a_one_line_error(tmp_path_factory, tmp_path, capsys):
    run = build_tiny_run(tmp_path_factory.getbasetemp())
    rc = main(["retrain", "--manifest", str(run.out), *base_overrides(run, tmp_path),
               "retrain.lambdas={landbird: 6, seabird: 8}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err == ("raydbb: error: retrain.lambdas: unknown class 'seabird'; expected one of "
                   "['landbird', 'waterbird']")
    assert not (tmp_path / "ddb").exists()
