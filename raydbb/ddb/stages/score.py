"""Score stage: per-sample cross-entropy and softmax p(true class) of the ERM classifier.

Feeds majority selection (lowest loss per class, docs/method.md, step 1) and τ_y (mean p(true
class) over all training images of class y, the threshold of the probability rule, Eq. 3) in one pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raydbb.config import StageResources
from raydbb.engine.stage import Batch, Stage, num_rows, pending_rows


class ScoreStage(Stage):
    """Adds ``loss`` (per-sample cross-entropy) and ``p_true`` (softmax of the true class).

    The model runs in eval mode on :func:`raydbb.models.transforms.to_model_input` (the one
    deterministic preprocessing, no augmentation), ``model_batch_size`` images per forward pass.
    Rows that failed to load keep NaN scores. Returns only scalar columns (the image is dropped).
    """

    name = "score"

    def __init__(self, classifier_dir: str | Path, resources: StageResources | None = None) -> None:
        super().__init__(resources)
        self.classifier_dir = str(classifier_dir)
        self.model = None
        self.image_size = 0

    def setup(self) -> None:
        from raydbb.models.checkpoint import load_classifier

        self.model, meta = load_classifier(self.classifier_dir, device=self.device)
        self.image_size = int(meta["image_size"])

    def __call__(self, batch: Batch) -> Batch:
        import torch

        from raydbb.models.transforms import to_model_input

        n = num_rows(batch)
        loss = np.full(n, np.nan, dtype=np.float64)
        p_true = np.full(n, np.nan, dtype=np.float64)
        rows = np.flatnonzero(pending_rows(batch))
        labels = np.asarray(batch["source_label"], dtype=np.int64)
        for start in range(0, len(rows), self.model_batch_size):
            idx = rows[start:start + self.model_batch_size]
            x = to_model_input([batch["source_image"][i] for i in idx], self.image_size).to(self.device)
            y = torch.as_tensor(labels[idx], device=self.device)
            with torch.inference_mode():
                log_p = torch.log_softmax(self.model(x).float(), dim=1)
            picked = log_p.gather(1, y[:, None])[:, 0].cpu().double().numpy()
            loss[idx] = -picked
            p_true[idx] = np.exp(picked)
        keep = ("source_id", "source_label", "prune_reason", "error")
        return {**{k: batch[k] for k in keep if k in batch}, "loss": loss, "p_true": p_true}
