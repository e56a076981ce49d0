"""Group metrics: per-group accuracy, worst-group accuracy and the two averages.

Two different "average accuracies" are in use in the literature, and raydbb always says which:

* ``average_accuracy`` — the plain accuracy over all samples of the split;
* ``weighted_average_accuracy`` — per-group accuracies weighted by the group proportions of the
  *training* split (the Waterbirds convention of GroupDRO, JTT, DFR: the test split is
  group-balanced on Waterbirds, so the plain average over-weights the minority groups).

Everything is computed from per-group (correct, count) sums, so distributed workers can add their
shards' counts (an all-reduce) and get exactly the numbers of one pass over the whole split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

AVERAGE_LABEL = "average (all samples)"
WEIGHTED_LABEL = "weighted average (train group proportions)"
WORST_LABEL = "worst-group"


def count_correct(preds: np.ndarray, labels: np.ndarray, groups: np.ndarray, num_groups: int) -> np.ndarray:
    """Sums needed for the metrics: array (2, num_groups + 1) of [correct; count].

    Column g < num_groups counts the samples of group g; the last column counts every sample
    (including those with an unknown group, -1).
    """
    preds, labels, groups = (np.asarray(a).reshape(-1) for a in (preds, labels, groups))
    if not (len(preds) == len(labels) == len(groups)):
        raise ValueError(f"preds/labels/groups lengths differ: {len(preds)}/{len(labels)}/{len(groups)}")
    correct = (preds == labels).astype(np.int64)
    known = (groups >= 0) & (groups < num_groups)
    counts = np.zeros((2, num_groups + 1), dtype=np.int64)
    counts[0, :num_groups] = np.bincount(groups[known], weights=correct[known], minlength=num_groups)
    counts[1, :num_groups] = np.bincount(groups[known], minlength=num_groups)
    counts[:, num_groups] = correct.sum(), len(correct)
    return counts


def train_group_fractions(train_groups: np.ndarray, num_groups: int) -> list[float] | None:
    """Share of each group in the training split (None when the split has no group labels)."""
    train_groups = np.asarray(train_groups).reshape(-1)
    known = train_groups[(train_groups >= 0) & (train_groups < num_groups)]
    if num_groups == 0 or len(known) == 0:
        return None
    return (np.bincount(known, minlength=num_groups) / len(known)).tolist()


def metrics_from_counts(
    counts: np.ndarray,
    group_names: Sequence[str],
    train_group_fraction: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Metrics from the (2, G + 1) sums of :func:`count_correct`.

    Groups absent from the split get accuracy ``None`` and are left out of the worst group. The
    weighted average renormalises the training proportions over the groups present in the split
    (on the standard benchmarks every group is present, and then this is exactly
    Σ_g p_train(g)·acc(g)). Fields that cannot be computed (no samples, no group labels, no
    training proportions) are ``None``.
    """
    counts = np.asarray(counts)
    num_groups = len(group_names)
    if counts.shape != (2, num_groups + 1):
        raise ValueError(f"counts of shape {counts.shape}; expected (2, {num_groups + 1})")
    correct, count = counts[0, :num_groups], counts[1, :num_groups]
    present = count > 0
    acc = np.where(present, correct / np.maximum(count, 1), np.nan)
    group_accuracy = {name: (float(acc[g]) if present[g] else None) for g, name in enumerate(group_names)}
    worst = float(acc[present].min()) if present.any() else None
    worst_group = group_names[int(np.nanargmin(acc))] if present.any() else None
    total = int(counts[1, num_groups])
    average = float(counts[0, num_groups] / total) if total else None
    weighted = None
    if train_group_fraction is not None and present.any():
        frac = np.asarray(train_group_fraction, dtype=np.float64)
        if frac.shape != (num_groups,):
            raise ValueError(f"train_group_fraction has {frac.size} entries; expected {num_groups}")
        w = np.where(present, frac, 0.0)
        if w.sum() > 0:
            weighted = float((w * np.nan_to_num(acc)).sum() / w.sum())
    return {
        "worst_group_accuracy": worst,
        "worst_group": worst_group,
        "average_accuracy": average,
        "weighted_average_accuracy": weighted,
        "group_accuracy": group_accuracy,
        "group_count": {name: int(count[g]) for g, name in enumerate(group_names)},
        "num_samples": total,
    }


def group_metrics(
    preds: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    group_names: Sequence[str],
    train_group_fraction: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Per-group accuracy, worst-group accuracy, plain and train-proportion-weighted averages.

    ``groups`` holds group indices into ``group_names`` (-1 = unknown: counted in the plain
    average only); ``train_group_fraction[g]`` is group g's share of the training split (see
    :func:`train_group_fractions`). Returns ``worst_group_accuracy, worst_group,
    average_accuracy, weighted_average_accuracy, group_accuracy{name: acc}, group_count{name: n},
    num_samples``.
    """
    return metrics_from_counts(count_correct(preds, labels, groups, len(group_names)), group_names,
                               train_group_fraction)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def format_group_table(metrics_by_split: Mapping[str, Mapping[str, Any]], title: str | None = None) -> str:
    """A text table: one row per group (accuracy % and count), then worst-group and both averages.

    ``metrics_by_split`` maps a split name (``val``, ``test``) to a :func:`group_metrics` dict.
    The two averages are labelled by what they average, so they cannot be confused.
    """
    splits = list(metrics_by_split)
    names: list[str] = []
    for m in metrics_by_split.values():
        names += [n for n in m["group_accuracy"] if n not in names]
    rows = [["group"] + [f"{s} acc %" for s in splits] + [f"{s} n" for s in splits]]
    for name in names:
        rows.append([name]
                    + [_pct(metrics_by_split[s]["group_accuracy"].get(name)) for s in splits]
                    + [str(metrics_by_split[s]["group_count"].get(name, 0)) for s in splits])
    rows.append(None)  # separator
    for label, key in ((WORST_LABEL, "worst_group_accuracy"), (AVERAGE_LABEL, "average_accuracy"),
                       (WEIGHTED_LABEL, "weighted_average_accuracy")):
        rows.append([label] + [_pct(metrics_by_split[s][key]) for s in splits]
                    + [str(metrics_by_split[s]["num_samples"]) if key == "average_accuracy" else ""
                       for s in splits])
    widths = [max(len(r[i]) for r in rows if r is not None) for i in range(len(rows[0]))]
    lines = [title] if title else []
    for row in rows:
        if row is None:
            lines.append("-" * (sum(widths) + 2 * (len(widths) - 1)))
            continue
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
