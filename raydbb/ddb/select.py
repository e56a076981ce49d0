"""Majority proxies, token pool and τ from per-sample ERM scores (DDB steps 1, 2 and the τ of
Eq. 3; docs/method.md).

Input is a frame of per-sample scores of the *training* split — ``sample_id, label, loss,
p_true`` (NaN for images that could not be read) — as produced by the score stage.

* Selection is per sample: within each class, the lowest-loss α_y share (or k_y count). The
  public DDB script ranks by a batch-mean loss, which selects whole batches; this does not.
* τ_y is the mean of softmax(f(x))_y over *all* scored training images of class y.
* The token pool is what textual inversion learns each class token from: images that show the
  class without its usual context (highest-loss training images, or minority-group validation
  images when group labels exist).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from raydbb.config import SelectConfig
from raydbb.data.records import UNKNOWN, RecordSet
from raydbb.errors import ConfigError, DataError
from raydbb.rundir import RunDir


def class_quota(cfg: SelectConfig, class_names: list[str], n_scored: list[int]) -> list[int]:
    """How many sources to select per class.

    Precedence: ``per_class_fraction[name]`` (α_y by class name) > ``count`` (k_y) > ``fraction``.
    A fraction selects ``ceil(α·n_y)`` (so any α > 0 selects at least one image), capped at n_y.
    """
    unknown = sorted(set(cfg.per_class_fraction or {}) - set(class_names))
    if unknown:
        raise ConfigError(f"select.per_class_fraction: unknown class {unknown[0]!r}; "
                          f"expected one of {class_names}")
    quota = []
    for name, n in zip(class_names, n_scored, strict=True):
        if cfg.per_class_fraction and name in cfg.per_class_fraction:
            k = math.ceil(cfg.per_class_fraction[name] * n - 1e-9)
        elif cfg.count is not None:
            k = cfg.count
        else:
            k = math.ceil(float(cfg.fraction) * n - 1e-9)
        quota.append(min(int(k), n))
    return quota


def _scored(scores: pd.DataFrame) -> pd.DataFrame:
    return scores[np.isfinite(scores["loss"].to_numpy(dtype=np.float64))]


def select_majority(scores: pd.DataFrame, class_names: list[str], cfg: SelectConfig) -> pd.DataFrame:
    """The lowest-loss samples of each class (per sample; ties broken by sample_id).

    Returns the selected rows of ``scores`` (sorted by class, then loss), unreadable rows excluded.
    """
    scored = _scored(scores)
    by_class = [scored[scored["label"] == y] for y in range(len(class_names))]
    quota = class_quota(cfg, class_names, [len(f) for f in by_class])
    picked = [f.sort_values(["loss", "sample_id"], kind="stable").head(k) for f, k in zip(by_class, quota,
                                                                                          strict=True)]
    return pd.concat(picked, ignore_index=True) if picked else scores.iloc[:0]


def class_tau(scores: pd.DataFrame, num_classes: int) -> np.ndarray:
    """τ_y = mean softmax(f(x))_y over all scored training images of class y (NaN if none)."""
    scored = _scored(scores)
    means = scored.groupby("label")["p_true"].mean()
    return np.array([float(means.get(y, np.nan)) for y in range(num_classes)], dtype=np.float64)


def minority_spurious(records: RecordSet, label: int) -> int:
    """The spurious value of class ``label``'s rarest *training* group (needs spurious labels)."""
    train = records.split("train")
    train = train[(train["label"] == label) & (train["spurious"] != UNKNOWN)]
    if train.empty:
        raise DataError(f"select.token_pool_source=val_minority: class {records.class_names[label]!r} has no "
                        "spurious labels on the training split; use token_pool_source=high_loss")
    counts = train["spurious"].value_counts()
    counts = counts.reindex(range(max(len(records.spurious_names), 1)), fill_value=0)
    return int(counts.idxmin())


def token_pool(scores: pd.DataFrame, records: RecordSet, cfg: SelectConfig,
               seed: int = 0) -> dict[str, pd.DataFrame]:
    """Per class name, up to ``token_pool_size`` images (``sample_id, path, label, mask, loss``).

    ``high_loss``: the highest-loss training images of the class (no group labels needed).
    ``val_minority``: validation images of the class's rarest training group, in a seeded order.
    """
    frame = records.frame.set_index("sample_id")
    pools: dict[str, pd.DataFrame] = {}
    for y, name in enumerate(records.class_names):
        if cfg.token_pool_source == "high_loss":
            scored = _scored(scores)
            top = scored[scored["label"] == y].sort_values(["loss", "sample_id"], ascending=[False, True])
            ids, losses = top["sample_id"].head(cfg.token_pool_size).tolist(), top["loss"].head(
                cfg.token_pool_size).to_numpy()
        else:
            s = minority_spurious(records, y)
            val = records.split("val")
            val = val[(val["label"] == y) & (val["spurious"] == s)]
            order = np.random.default_rng(seed).permutation(len(val))[: cfg.token_pool_size]
            ids, losses = val["sample_id"].to_numpy()[order].tolist(), np.full(len(order), np.nan)
        if not ids:
            raise DataError(f"token pool for class {name!r} is empty ({cfg.token_pool_source}); "
                            "expected at least one image")
        rows = frame.loc[ids]
        pools[name] = pd.DataFrame({"sample_id": ids, "path": rows["path"].to_numpy(), "label": y,
                                    "mask": rows["mask"].fillna("").to_numpy(), "loss": losses})
    return pools


def write_token_pool(out: str | Path, pools: dict[str, pd.DataFrame]) -> dict[str, Path]:
    """``OUT/token_pool/<class>.csv`` per class (the input of ``raydbb invert``)."""
    paths = {}
    for name, pool in pools.items():
        path = RunDir(out).token_pool_csv(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        pool.to_csv(path, index=False)
        paths[name] = path
    return paths


def write_tau(out: str | Path, class_names: list[str], tau: np.ndarray, classifier: str) -> Path:
    """``OUT/tau.json``: τ per class (by index and by name) and the classifier it came from."""
    path = RunDir(out).tau
    path.parent.mkdir(parents=True, exist_ok=True)
    values = [None if np.isnan(t) else float(t) for t in tau]
    doc = {"classifier": classifier, "class_names": list(class_names), "tau": values,
           "by_class": dict(zip(class_names, values, strict=True))}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def read_tau(out: str | Path) -> np.ndarray:
    """τ per class index from ``OUT/tau.json`` (NaN where a class had no scored image)."""
    path = RunDir(out).tau
    if not path.is_file():
        raise DataError(f"{path} not found; run raydbb generate (it scores the training set first)")
    values = json.loads(path.read_text())["tau"]
    return np.array([np.nan if t is None else t for t in values], dtype=np.float64)
