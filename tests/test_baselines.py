"""Each baseline's defining rule against a hand-built case (raydbb.baselines)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from raydbb.baselines import afr, dac, dfr, groupdro, jtt, lisa, masktune
from raydbb.baselines.common import grid_points, grid_search
from raydbb.baselines.registry import METHODS, get_method, resolve_grid
from raydbb.errors import ConfigError

LN2, LN3 = math.log(2.0), math.log(3.0)
pytestmark = pytest.mark.usefixtures("torch_one_thread")


# ---------------------------------------------------------------- JTT
def test_jtt_error_set_is_exactly_the_misclassified_examples():
    pred = np.array([0, 1, 1, 0, 2, 2])
    labels = np.array([0, 0, 1, 1, 2, 1])
    errors = jtt.error_set(pred, labels)
    # rows 1, 3, 5 are wrong; an .eq/.ne inversion would give rows 0, 2, 4
    assert errors.tolist() == [False, True, False, True, False, True]
    assert jtt.error_set(labels, labels).sum() == 0


def test_jtt_upsamples_the_error_set_lambda_up_times():
    frame = pd.DataFrame({"sample_id": list("abcd"), "label": [0, 1, 0, 1]})
    up = jtt.upsample(frame, np.array([False, True, False, True]), 3)
    assert up["sample_id"].tolist() == ["a", "b", "b", "b", "c", "d", "d", "d"]
    assert jtt.upsample(frame, np.zeros(4, bool), 100)["sample_id"].tolist() == list("abcd")
    with pytest.raises(ValueError):
        jtt.upsample(frame, np.zeros(4, bool), 0)


# ---------------------------------------------------------------- GroupDRO
def test_groupdro_weight_update_two_steps_by_hand():
    q = torch.tensor([0.5, 0.5], dtype=torch.float64)
    # step 1: losses (1, 0), η = 1 -> q ∝ (e/2, 1/2) = (0.731059, 0.268941)
    q = groupdro.update_weights(q, torch.tensor([1.0, 0.0], dtype=torch.float64), 1.0)
    torch.testing.assert_close(q, torch.tensor([0.731059, 0.268941], dtype=torch.float64), atol=1e-6, rtol=0)
    # step 2: losses (0, 2) -> q ∝ (0.731059, 0.268941·e²) = (0.731059, 1.987223) -> (0.268941, 0.731059)
    q = groupdro.update_weights(q, torch.tensor([0.0, 2.0], dtype=torch.float64), 1.0)
    torch.testing.assert_close(q, torch.tensor([0.268941, 0.731059], dtype=torch.float64), atol=1e-6, rtol=0)


def test_groupdro_loss_updates_q_then_weights_group_losses():
    # training rows 0, 1 in group 0 / group 1; row 2 in group 1
    loss_fn = groupdro.GroupDROLoss(np.array([0, 1, 1]), num_groups=2, eta=1.0)
    # batch 1: row 0 CE([0,0], 0) = ln 2 (group 0); row 1 CE([ln3,0], 0) = ln 4/3 (group 1)
    # q ∝ (½·2, ½·4/3) -> (0.6, 0.4); loss = 0.6 ln 2 + 0.4 ln 4/3 = 0.530961
    logits = torch.tensor([[0.0, 0.0], [LN3, 0.0]], dtype=torch.float64)
    loss = loss_fn(logits, torch.tensor([0, 0]), torch.tensor([0, 1]))
    torch.testing.assert_close(loss_fn.q, torch.tensor([0.6, 0.4], dtype=torch.float64))
    assert loss.item() == pytest.approx(0.530961, abs=1e-6)
    # batch 2: only row 2, CE([ln3,0], 1) = ln 4 (group 1); group 0 absent (loss 0, factor 1)
    # q ∝ (0.6, 0.4·4) -> (0.272727, 0.727273); loss = 0.727273·ln 4 = 1.008214
    loss = loss_fn(torch.tensor([[LN3, 0.0]], dtype=torch.float64), torch.tensor([1]), torch.tensor([2]))
    torch.testing.assert_close(loss_fn.q, torch.tensor([0.6 / 2.2, 1.6 / 2.2], dtype=torch.float64))
    assert loss.item() == pytest.approx(1.008214, abs=1e-6)


# ---------------------------------------------------------------- DFR
def test_dfr_subsets_are_group_balanced_and_known_groups_only():
    groups = np.array([0] * 5 + [1] * 2 + [2] * 3 + [3] * 4 + [-1] * 3)
    subsets = dfr.balanced_subsets(groups, 4, np.random.default_rng(0))
    assert len(subsets) == 4
    for idx in subsets:
        assert len(set(idx.tolist())) == len(idx) == 8  # 2 per group: the smallest group's size
        assert np.bincount(groups[idx], minlength=4).tolist() == [2, 2, 2, 2]
    assert any(not np.array_equal(subsets[0], s) for s in subsets[1:])  # different draws


def test_dfr_halves_split_validation_in_two():
    fit_rows, choose_rows = dfr.halves(11, seed=3)
    assert len(fit_rows) == 5 and len(choose_rows) == 6
    assert sorted(np.r_[fit_rows, choose_rows].tolist()) == list(range(11))


def test_dfr_l1_logistic_regression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = (x[:, 0] > 0).astype(int)  # only feature 0 matters
    W, b = dfr.fit_l1_logreg(x, y, 2, C=10.0, steps=500)
    assert ((x @ W.T + b).argmax(1) == y).mean() == 1.0
    assert np.abs(W[:, 0]).min() > np.abs(W[:, 1:]).max()
    W0, _ = dfr.fit_l1_logreg(x, y, 2, C=1e-4, steps=200)  # strong ℓ1: every weight is exactly 0
    assert np.count_nonzero(W0) == 0


def test_dfr_fits_on_validation_rows_only(monkeypatch, tmp_path):
    """run() asks for features of the val split only, and balances with val groups."""
    from types import SimpleNamespace

    from raydbb.baselines.common import MethodContext
    from raydbb.data.records import RecordSet, make_frame

    splits = ["train"] * 6 + ["val"] * 8 + ["test"] * 4
    labels = [0, 1] * 9
    spurious = [0, 0, 1, 1] * 4 + [0, 1]
    frame = make_frame([f"s{i}" for i in range(18)], [f"/x/{i}.png" for i in range(18)], labels, splits,
                       spurious, n_spurious=2)
    records = RecordSet("toy", frame, ["a", "b"], ["u", "v"])
    seen: dict[str, list] = {"frames": [], "groups": []}

    def fake_features(ctx, ckpt, frames):
        seen["frames"] += [f["sample_id"].tolist() for f in frames.values()]
        feats = {k: np.eye(len(f), 4, dtype=np.float32) + f["label"].to_numpy()[:, None]
                 for k, f in frames.items()}
        return {**feats, "head_weight": np.zeros((2, 4)), "head_bias": np.zeros(2)}

    real_subsets = dfr.balanced_subsets

    def spy_subsets(groups, n, rng):
        seen["groups"].append(np.asarray(groups).tolist())
        return real_subsets(groups, n, rng)

    monkeypatch.setattr(dfr, "load_features", fake_features)
    monkeypatch.setattr(dfr, "balanced_subsets", spy_subsets)
    monkeypatch.setattr(dfr, "erm_checkpoint", lambda ctx: tmp_path)
    monkeypatch.setattr(dfr, "publish_head", lambda *a, **k: {"val": {}, "test": {}})
    cfg = SimpleNamespace(seed=0)
    result = dfr.run(MethodContext(cfg, records, tmp_path), {"C": [1.0, 0.1], "n_subsets": [2]})
    val_ids = set(records.split("val")["sample_id"])
    assert seen["frames"] and all(set(ids) <= val_ids for ids in seen["frames"])
    val_groups = records.split("val")["group"].tolist()
    assert seen["groups"][-1] == val_groups  # the final fit balances all of val
    assert all(set(g) <= set(val_groups) for g in seen["groups"])
    assert result.hparams["C"] in (1.0, 0.1) and len(result.trials) == 2
    assert sum(t["chosen"] for t in result.trials) == 1


# ---------------------------------------------------------------- AFR
def test_afr_weights_match_the_formula():
    w = afr.weights(np.array([0.9, 0.5, 0.1]), gamma=2.0)
    # exp(−1.8), exp(−1), exp(−0.2) = 0.165299, 0.367879, 0.818731; sum 1.351909
    np.testing.assert_allclose(w, [0.122271, 0.272118, 0.605611], atol=1e-6)
    np.testing.assert_allclose(afr.weights(np.array([0.2, 0.7]), 0.0), [0.5, 0.5])
    assert w.sum() == pytest.approx(1.0)


def test_afr_loss_is_weighted_ce_plus_pull_to_erm_head():
    W0 = torch.zeros(2, 1, dtype=torch.float64)
    W = torch.tensor([[LN3], [0.0]], dtype=torch.float64)
    x = torch.tensor([[1.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    w = torch.tensor([0.25, 0.75], dtype=torch.float64)
    # CE row 0 = ln 4/3, row 1 = ln 4; pull = 0.5 · (ln 3)²
    expected = 0.25 * math.log(4 / 3) + 0.75 * math.log(4) + 0.5 * LN3 ** 2
    b = torch.zeros(2, dtype=torch.float64)
    assert afr.afr_loss(W, b, x, y, w, W0, 0.5).item() == pytest.approx(expected)
    p = afr.true_class_probability(x.numpy(), y.numpy(), W.numpy(), np.zeros(2))
    np.testing.assert_allclose(p, [0.75, 0.25])


# ---------------------------------------------------------------- LISA
def test_lisa_pairs_satisfy_the_selective_conditions():
    labels = torch.tensor([0, 0, 1, 1, 0, 1, 2])
    spurious = torch.tensor([0, 1, 0, 1, 0, 1, 0])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        intra = torch.rand(7, generator=g) < 0.5
        partner = lisa.pairs(labels, spurious, intra, g)
        for i, j in enumerate(partner.tolist()):
            if intra[i]:
                if labels[i] == 2:  # class 2 has a single spurious value: no intra-label partner
                    assert j == -1
                    continue
                assert labels[j] == labels[i] and spurious[j] != spurious[i]
            else:
                assert j >= 0 and spurious[j] == spurious[i] and labels[j] != labels[i]


def test_lisa_mix_by_hand():
    images = torch.tensor([[1.0], [3.0], [5.0]])
    targets = torch.eye(2)[[0, 1, 1]]
    mixed, soft = lisa.mix(images, targets, torch.tensor([1, 0, -1]), torch.tensor([0.25, 0.5, 0.1]))
    torch.testing.assert_close(mixed, torch.tensor([[2.5], [2.0], [5.0]]))  # row 2 has no partner
    torch.testing.assert_close(soft, torch.tensor([[0.25, 0.75], [0.5, 0.5], [0.0, 1.0]]))


def test_lisa_batch_hook_returns_soft_targets_from_spurious_of_the_rows():
    torch.manual_seed(0)
    hook = lisa.LisaBatch(np.array([0, 1, 0, 1]), num_classes=2, p_sel=1.0, alpha=2.0)
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1)
    x, y = hook(images, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 2, 3]))
    assert y.shape == (4, 2) and torch.allclose(y.sum(1), torch.ones(4))
    # intra-label only: labels never mix, so the targets stay one-hot
    torch.testing.assert_close(y, torch.eye(2)[[0, 0, 1, 1]])
    assert not torch.equal(x, images)


# ---------------------------------------------------------------- MaskTune
def test_masktune_masks_exactly_the_top_saliency_fraction():
    sal = torch.tensor([[[0.1, 0.9, 0.3, 0.0],
                         [0.8, 0.2, 0.7, 0.4],
                         [0.05, 0.6, 0.5, 0.15],
                         [0.25, 0.35, 0.45, 0.55]]])
    mask = masktune.mask_top_saliency(sal, 0.25)  # 4 of 16 pixels: 0.9, 0.8, 0.7, 0.6
    expected = torch.zeros(1, 4, 4, dtype=torch.bool)
    expected[0, 0, 1] = expected[0, 1, 0] = expected[0, 1, 2] = expected[0, 2, 1] = True
    assert torch.equal(mask, expected)
    assert masktune.mask_top_saliency(sal, 0.0).sum() == 0
    ties = masktune.mask_top_saliency(torch.ones(1, 2, 2), 0.5)  # ties: row-major order, still exactly k
    assert ties.sum() == 2 and ties[0, 0].all()
    images = torch.ones(1, 3, 4, 4)
    masked = masktune.apply_mask(images, mask)
    assert (masked[:, :, mask[0]] == 0).all() and (masked[:, :, ~mask[0]] == 1).all()


def test_gradcam_saliency_through_captum():
    from raydbb.baselines.saliency import gradcam, gradcam_layer
    from raydbb.config import ClassifierConfig
    from raydbb.models.classifier import build_classifier

    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig(arch="small_cnn", pretrained=False, image_size=16, width=4), 2)
    assert isinstance(gradcam_layer(model)[0], torch.nn.Conv2d)
    maps = gradcam(model, torch.rand(3, 3, 16, 16), torch.tensor([0, 1, 0]))
    assert maps.shape == (3, 16, 16) and (maps >= 0).all()


# ---------------------------------------------------------------- DaC
def test_dac_composed_image_keeps_causal_pixels_of_one_and_the_rest_of_the_other():
    a = np.full((3, 4, 3), 200, dtype=np.uint8)
    b = np.full((3, 4, 3), 10, dtype=np.uint8)
    b[0, 0] = (1, 2, 3)
    m = np.zeros((3, 4), dtype=bool)
    m[1, 1:3] = True
    mb = np.zeros((3, 4), dtype=bool)
    mb[1:, 2:] = True  # the partner's object: overlaps a's causal part at (1, 2)
    fill = np.array([7, 8, 9])
    out = dac.compose(a, b, m, mb, fill)
    assert (out[m] == 200).all()  # a's causal part wins, also where it overlaps b's
    blank = mb & ~m
    assert blank.sum() == 3 and (out[blank] == fill).all()  # b's own object is blanked
    rest = ~m & ~mb
    np.testing.assert_array_equal(out[rest], b[rest])  # b's background, its odd pixel included
    with pytest.raises(ValueError):
        dac.compose(a, b, m[:2], mb, fill)
    with pytest.raises(ValueError):
        dac.compose(a, b, m, mb[:2], fill)


def test_dac_low_loss_rows_and_partners_of_another_proxy():
    losses = np.array([0.9, 0.1, 0.5, 0.2, 0.05, 0.7])
    labels = np.array([0, 0, 0, 1, 1, 1])
    rows = dac.low_loss_rows(losses, labels, 1 / 3)  # one lowest-loss row per class
    assert rows.tolist() == [1, 4]
    proxy = np.array([0, 0, 1, 1, 2])
    pair = dac.partners(proxy, np.random.default_rng(0))
    assert all(proxy[j] != proxy[i] for i, j in enumerate(pair))
    assert dac.partners(np.array([3, 3]), np.random.default_rng(0)).tolist() == [-1, -1]


# ---------------------------------------------------------------- registry / grid search
def test_registry_labels_and_grids():
    labels = {n: (m.train_labels, m.val_labels) for n, m in METHODS.items()}
    assert labels == {"erm": ("✗", "✓"), "groupdro": ("✓", "✓"), "jtt": ("✗", "✓"), "dfr": ("✗", "✓✓"),
                      "afr": ("✗", "✓"), "lisa": ("✓", "✓"), "masktune": ("✗", "✗"), "dac": ("✗", "✓"),
                      "ddb": ("✗", "✓"), "oracle": ("✗", "✓")}
    assert METHODS["groupdro"].reference and "reference upper bound" in METHODS["groupdro"].label
    assert not any(m.reference for n, m in METHODS.items() if n != "groupdro")
    assert resolve_grid(get_method("jtt"), {"T": [1]}) == {"T": [1], "lambda_up": [20, 100]}
    with pytest.raises(ConfigError, match="unknown hyper-parameter"):
        resolve_grid(get_method("jtt"), {"eta": [1]})
    with pytest.raises(ConfigError, match="unknown method"):
        get_method("nope")


def test_grid_search_picks_best_val_wga_then_average():
    assert grid_points({"a": [1, 2], "b": [3]}) == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]
    vals = [{"worst_group_accuracy": 0.5, "average_accuracy": 0.9},
            {"worst_group_accuracy": 0.7, "average_accuracy": 0.6},
            {"worst_group_accuracy": 0.7, "average_accuracy": 0.8}]
    best, trials, _ = grid_search([{"i": i} for i in range(3)], lambda i, hp: (vals[i], None))
    assert best == 2 and [t["chosen"] for t in trials] == [False, False, True]
    best, _, _ = grid_search([{"i": i} for i in range(3)], lambda i, hp: (vals[i], None), val_groups=False)
    assert best == 0  # without group labels: the best average accuracy
