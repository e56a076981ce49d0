"""The two prune rules of DDB (paper Eq. 3 and Eq. 4-5; docs/method.md, step 6) as pure numpy
functions, plus reading τ files.

* Probability rule (Eq. 3): τ_y = mean over **all** training images of class y of p_y(x). A repaint
  x' of a class-y source is dropped (reason ``"prob"``) when p_y(x') >= τ_y: the classifier still
  sees the source class, so nothing causal changed.
* Attribution rule (Eq. 4-5): dropped (reason ``"ig"``) when its mask-summed IG score <= δ.

Both comparisons include the boundary (p == τ drops, score == δ drops). When both rules fire, the
reason is ``"prob"``: the probability rule is checked first (it is the cheaper, coarser test, and
the order is fixed so that counts by reason are reproducible). Everything else is ``"kept"``.
Scores are stored for every sample, so :func:`decide` can be re-applied later with other
thresholds (``raydbb prune --manifest``) without regenerating.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from raydbb.errors import DataError

KEPT, PROB, IG = "kept", "prob", "ig"
# Reasons the prune rules assign; any other reason (no_mask, error:...) was decided upstream.
RULE_REASONS = (KEPT, PROB, IG)


def compute_tau(probs_true: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """τ_y = mean of p_y(x) over all training images x of class y.

    ``probs_true[i]`` is the softmax probability of image i's own label ``labels[i]``. Returns a
    float64 array of length ``num_classes``; every class needs at least one image.
    """
    probs = np.asarray(probs_true, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.shape != labels.shape or probs.ndim != 1:
        raise DataError(f"probs_true {probs.shape} and labels {labels.shape}: expected equal 1-D shapes")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"labels outside 0..{num_classes - 1}: got {labels.min()}..{labels.max()}")
    counts = np.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0).tolist()
        raise DataError(f"classes {missing} have no training images: cannot compute tau for them")
    return np.bincount(labels, weights=probs, minlength=num_classes) / counts


def decide(
    p_source: np.ndarray,
    tau: np.ndarray,
    ig_score: np.ndarray,
    delta: float,
    prob_rule: bool = True,
) -> np.ndarray:
    """Vectorised prune decision per row: ``"prob"``, ``"ig"`` or ``"kept"`` (object array).

    ``p_source`` is p_y(x') for the source class y, ``tau`` is τ_y per row (already indexed by the
    row's source class), ``ig_score`` the mask-summed IG score. ``prob_rule=False`` disables Eq. 3;
    ``delta=-inf`` disables Eq. 4-5. A NaN in a score an enabled rule needs is an error, never a
    silent keep.
    """
    p = np.asarray(p_source, dtype=np.float64)
    t = np.asarray(tau, dtype=np.float64)
    s = np.asarray(ig_score, dtype=np.float64)
    if not (p.shape == t.shape == s.shape) or p.ndim != 1:
        raise DataError(f"p_source {p.shape}, tau {t.shape}, ig_score {s.shape}: expected equal 1-D shapes")
    if math.isnan(delta):
        raise DataError("delta=nan: expected a number (use -inf to disable the IG rule)")
    if prob_rule and (np.isnan(p).any() or np.isnan(t).any()):
        raise DataError(f"{int(np.isnan(p).sum() + np.isnan(t).sum())} rows have NaN p_source/tau: "
                        "cannot apply the probability rule")
    if delta > -math.inf and np.isnan(s).any():
        raise DataError(f"{int(np.isnan(s).sum())} rows have NaN ig_score: cannot apply the IG rule")
    reasons = np.full(p.shape, KEPT, dtype=object)
    reasons[s <= delta] = IG
    if prob_rule:
        reasons[p >= t] = PROB  # checked first: overrides "ig" when both fire
    return reasons


def load_tau(path: str | Path) -> np.ndarray:
    """τ per class index from a JSON file: ``OUT/tau.json`` as ``raydbb generate`` writes it
    (``{"tau": [...], ...}``; ``null`` = class without scored images -> NaN) or a bare list."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tau file {path} not found; expected JSON {{\"tau\": [...]}}")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"tau file {path}: not valid JSON ({err.msg})") from None
    values = payload.get("tau") if isinstance(payload, dict) else payload
    numbers = isinstance(values, list) and all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values)
    if not numbers or not values:
        raise DataError(f"tau file {path}: expected a non-empty list of numbers under \"tau\"")
    tau = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    if ((tau < 0) | (tau > 1)).any():
        raise DataError(f"tau file {path}: values {tau.tolist()} must lie in [0, 1]")
    return tau
