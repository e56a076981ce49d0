"""Group metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from raydbb.training.metrics import (
    AVERAGE_LABEL,
    WEIGHTED_LABEL,
    count_correct,
    format_group_table,
    group_metrics,
    metrics_from_counts,
    train_group_fractions,
)

NAMES = ["a/x", "a/y", "b/x", "b/y"]


def _case():
    # group 0: 3 of 4 right; group 1: 1 of 2; group 2: 1 of 1; group 3: 0 of 3.
    groups = np.array([0, 0, 0, 0, 1, 1, 2, 3, 3, 3])
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    preds = np.array([0, 0, 0, 1, 0, 1, 1, 0, 0, 0])
    return preds, labels, groups


def test_group_metrics_hand_computed():
    preds, labels, groups = _case()
    m = group_metrics(preds, labels, groups, NAMES, train_group_fraction=[0.5, 0.1, 0.1, 0.3])
    assert m["group_accuracy"] == {"a/x": 0.75, "a/y": 0.5, "b/x": 1.0, "b/y": 0.0}
    assert m["group_count"] == {"a/x": 4, "a/y": 2, "b/x": 1, "b/y": 3}
    assert m["worst_group_accuracy"] == 0.0 and m["worst_group"] == "b/y"
    assert m["average_accuracy"] == pytest.approx(5 / 10)
    # Σ p_train(g)·acc(g) = 0.5·0.75 + 0.1·0.5 + 0.1·1 + 0.3·0
    assert m["weighted_average_accuracy"] == pytest.approx(0.525)
    assert m["num_samples"] == 10


def test_group_absent_from_split_is_none_and_weights_renormalise():
    preds, labels, groups = (a[:7] for a in _case())  # drop every b/y sample
    m = group_metrics(preds, labels, groups, NAMES, train_group_fraction=[0.5, 0.1, 0.1, 0.3])
    assert m["group_accuracy"]["b/y"] is None and m["group_count"]["b/y"] == 0
    assert m["worst_group_accuracy"] == 0.5 and m["worst_group"] == "a/y"
    assert m["average_accuracy"] == pytest.approx(5 / 7)
    assert m["weighted_average_accuracy"] == pytest.approx((0.375 + 0.05 + 0.1) / 0.7)


def test_unknown_group_counts_in_average_only_and_missing_fractions():
    preds = np.array([1, 0, 1])
    labels = np.array([1, 1, 1])
    groups = np.array([3, -1, -1])
    m = group_metrics(preds, labels, groups, NAMES)
    assert m["average_accuracy"] == pytest.approx(2 / 3)
    assert m["worst_group_accuracy"] == 1.0
    assert m["weighted_average_accuracy"] is None
    empty = group_metrics(np.zeros(0), np.zeros(0), np.zeros(0, dtype=int), [])
    assert empty["average_accuracy"] is None and empty["worst_group_accuracy"] is None


def test_shard_counts_add_up_to_the_whole():
    preds, labels, groups = _case()
    whole = group_metrics(preds, labels, groups, NAMES, [0.25] * 4)
    counts = sum(count_correct(preds[i::3], labels[i::3], groups[i::3], 4) for i in range(3))
    assert metrics_from_counts(counts, NAMES, [0.25] * 4) == whole


def test_train_group_fractions():
    assert train_group_fractions(np.array([0, 0, 0, 1, 3, -1]), 4) == [0.6, 0.2, 0.0, 0.2]
    assert train_group_fractions(np.array([-1, -1]), 4) is None


def test_table_names_both_averages():
    preds, labels, groups = _case()
    val = group_metrics(preds, labels, groups, NAMES, [0.5, 0.1, 0.1, 0.3])
    test = group_metrics(preds[:7], labels[:7], groups[:7], NAMES, [0.5, 0.1, 0.1, 0.3])
    table = format_group_table({"val": val, "test": test}, title="t")
    lines = table.splitlines()
    assert lines[0] == "t"
    assert lines[1].split() == ["group", "val", "acc", "%", "test", "acc", "%", "val", "n", "test", "n"]
    row = next(line for line in lines if line.startswith("b/y"))
    assert row.split() == ["b/y", "0.0", "n/a", "3", "0"]
    avg = next(line for line in lines if line.startswith(AVERAGE_LABEL))
    assert avg[len(AVERAGE_LABEL):].split() == ["50.0", "71.4", "10", "7"]
    weighted = next(line for line in lines if line.startswith(WEIGHTED_LABEL))
    assert weighted[len(WEIGHTED_LABEL):].split() == ["52.5", "75.0"]
    assert next(line for line in lines if line.startswith("worst-group")).split()[1:] == ["0.0", "50.0"]
