"""Expand stage: fan each source row out to one generation row per (target class y' != y, variant)."""

from __future__ import annotations

import numpy as np

from raydbb.config import StageResources
from raydbb.engine.seeds import derive_seed
from raydbb.engine.stage import Batch, Stage, num_rows
from raydbb.ids import sanitize_id


def make_sample_id(source_id: str, target_class: str, variant: int) -> str:
    """The id of one generated sample; also its file name under ``OUT/images/``."""
    return sanitize_id(f"{source_id}__to-{target_class}__v{variant}")


def all_pairs(source_label: int, num_classes: int, n_variants: int) -> list[tuple[int, int]]:
    """Every (target, variant) a source of class ``source_label`` is repainted into."""
    return [(t, v) for t in range(num_classes) if t != source_label for v in range(n_variants)]


def encode_todo(pairs: list[tuple[int, int]]) -> str:
    """``[(1, 0), (2, 1)] -> "1:0;2:1"`` — the ``todo`` column a resumed run passes to expand."""
    return ";".join(f"{t}:{v}" for t, v in pairs)


def decode_todo(text: str) -> list[tuple[int, int]]:
    return [(int(t), int(v)) for t, v in (item.split(":") for item in text.split(";") if item)]


class ExpandStage(Stage):
    """Adds ``sample_id, target_label, variant, seed`` and repeats every other column per target.

    When the batch has a ``todo`` column (written by the driver on resume), only those
    (target, variant) pairs are produced; otherwise all of them. Rows already decided upstream
    (``no_mask``, ``error:...``) are expanded too, so every expected sample gets a manifest row.
    """

    name = "expand"
    stateful = False

    def __init__(self, class_names: list[str], n_variants: int, run_seed: int,
                 resources: StageResources | None = None) -> None:
        super().__init__(resources)
        self.class_names = list(class_names)
        self.n_variants = int(n_variants)
        self.run_seed = int(run_seed)

    def __call__(self, batch: Batch) -> Batch:
        n = num_rows(batch)
        labels = np.asarray(batch["source_label"], dtype=np.int64)
        todo = batch.get("todo")
        rep, targets, variants, seeds, ids = [], [], [], [], []
        for i in range(n):
            source_id = str(batch["source_id"][i])
            pairs = (decode_todo(str(todo[i])) if todo is not None
                     else all_pairs(int(labels[i]), len(self.class_names), self.n_variants))
            for t, v in pairs:
                rep.append(i)
                targets.append(t)
                variants.append(v)
                seeds.append(derive_seed(self.run_seed, source_id, t, v))
                ids.append(make_sample_id(source_id, self.class_names[t], v))
        index = np.asarray(rep, dtype=np.int64)
        out = {key: np.asarray(col)[index] for key, col in batch.items() if key != "todo"}
        out["sample_id"] = np.array(ids, dtype=object)
        out["target_label"] = np.asarray(targets, dtype=np.int64)
        out["variant"] = np.asarray(variants, dtype=np.int64)
        out["seed"] = np.asarray(seeds, dtype=np.int64)
        return out
