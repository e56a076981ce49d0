"""Which repaints enter retraining, and the retraining frame they form with the originals.

The candidates are the rows the prune stage decided (``kept``/``prob``/``ig``) that have an image;
of those, the ones the manifest marked kept (``retrain.prune_from=manifest``) or the ones that pass
``prune.delta``/``prune.prob_rule`` re-applied to the stored scores (``config``, what ``raydbb tune``
writes); then, per target class, the ``retrain.keep_fraction`` share with the highest IG score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from raydbb.config import RaydbbConfig
from raydbb.ddb.prune_rules import KEPT, RULE_REASONS, decide
from raydbb.ddb.retrain.loss import per_class_values
from raydbb.errors import ConfigError, DataError

REPAINT = "repaint"
"""Column of the retraining frame: True for a generated repaint, False for an original image."""


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
    :func:`~raydbb.ddb.prune_rules.decide` on the stored ``p_source``/``tau``/``ig_score`` with
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
