"""The reweighted retraining loss (paper Eq. 6-8).

The training set is the original training split ∪ the kept repaints, each repaint labelled with
its target class y'. Every batch is scored with

    L = CE(original rows of the batch) + Σ_c λ_c · CE(repaint rows of the batch labelled c)

where each CE is the *mean* over its subset of the batch, and a subset that is empty in a batch
contributes exactly 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raydbb.errors import ConfigError, RaydbbError


class RepaintWeightedLoss:
    """``loss_fn(logits, labels, index)`` of DDB retraining, a :data:`~raydbb.training.worker.BatchLoss`.

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
