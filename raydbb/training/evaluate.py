"""Evaluate a classifier on the splits of a dataset: group metrics for val and test.

:func:`predict` is the one inference path (evaluation transform, eval mode, no gradients) used
both here and by the training loop's per-epoch validation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from raydbb.data.records import RecordSet
from raydbb.errors import DataError
from raydbb.models.transforms import EvalTransform
from raydbb.training.metrics import group_metrics, train_group_fractions


@torch.no_grad()
def predict(
    model: nn.Module,
    frame: pd.DataFrame,
    image_size: int,
    device: str | torch.device = "cpu",
    batch_size: int = 128,
    indices: Sequence[int] | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predicted class, label and group of the rows of ``frame`` (or of ``indices`` into it).

    The model is put in eval mode (and left there). Returns three int64 arrays in row order.
    """
    from raydbb.data.torch_dataset import ImageRecords

    dataset = ImageRecords(frame, EvalTransform(image_size))
    if indices is not None:
        dataset = Subset(dataset, list(indices))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=torch.device(device).type == "cuda")
    model.eval()
    preds, labels, groups = [], [], []
    for images, label, group, _ in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        preds.append(model(images.to(device, non_blocking=True)).argmax(dim=1).cpu())
        labels.append(label)
        groups.append(group)
    if not preds:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return tuple(torch.cat(t).numpy().astype(np.int64) for t in (preds, labels, groups))


def check_classes(meta: dict[str, Any], records: RecordSet, ckpt_dir: str | Path) -> None:
    """Refuse to evaluate a checkpoint on a dataset with other classes (one-line error)."""
    names = meta.get("class_names")
    if names is not None and list(names) != list(records.class_names):
        raise DataError(f"checkpoint {ckpt_dir} was trained on classes {names}, but dataset "
                        f"{records.name} has classes {records.class_names}")
    if int(meta["num_classes"]) != records.num_classes:
        raise DataError(f"checkpoint {ckpt_dir} has {meta['num_classes']} classes, dataset "
                        f"{records.name} has {records.num_classes}")


def evaluate_model(
    model: nn.Module,
    records: RecordSet,
    image_size: int,
    splits: Sequence[str] = ("val", "test"),
    device: str | torch.device = "cpu",
    batch_size: int = 128,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Group metrics (see :func:`~raydbb.training.metrics.group_metrics`) of ``model`` per split.

    The weighted average uses the group proportions of the records' training split. Splits
    with no rows are left out.
    """
    group_names = records.group_names()
    fractions = train_group_fractions(records.split("train")["group"].to_numpy(), len(group_names))
    out: dict[str, dict[str, Any]] = {}
    for split in splits:
        frame = records.split(split)
        if frame.empty:
            continue
        preds, labels, groups = predict(model, frame, image_size, device, batch_size, progress=progress)
        out[split] = group_metrics(preds, labels, groups, group_names, fractions)
    return out


def evaluate_checkpoint(
    ckpt_dir: str | Path,
    records: RecordSet,
    splits: Sequence[str] = ("val", "test"),
    device: str | torch.device = "cpu",
    batch_size: int = 128,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Load a checkpoint folder and return ``{split: group metrics}`` on ``records``."""
    from raydbb.models.checkpoint import load_classifier

    model, meta = load_classifier(ckpt_dir, device=device)
    check_classes(meta, records, ckpt_dir)
    return evaluate_model(model, records, int(meta["image_size"]), splits, device, batch_size, progress)


def write_metrics(path: str | Path, metrics_by_split: dict[str, dict[str, Any]],
                  run: dict[str, Any] | None = None) -> Path:
    """Write ``metrics.json``: ``{split: metrics, ..., "run": {...}}`` (``run``: what was evaluated)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {**metrics_by_split, "run": run or {}}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    return path

