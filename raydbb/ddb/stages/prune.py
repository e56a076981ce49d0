"""Prune stage: score every repaint with the ERM classifier and apply DDB's two rules (paper Eq. 3-5;
docs/method.md, step 6).

For each pending row (source x of class y, repaint x' for target y', mask m) it records

* ``p_source`` = softmax(f(x'))_y and ``p_target`` = softmax(f(x'))_y',
* ``tau`` = τ_y (mean p_y over all training images of class y, computed before generation),
* ``ig_score`` = integrated gradients of logit y' from x to x', summed over m
  (:func:`raydbb.ddb.ig.path_ig_scores` on the same preprocessed tensors),

and then ``prune_reason`` / ``kept`` from :func:`raydbb.ddb.prune_rules.decide`. All scores are
computed even when the probability rule already drops the row, so ``raydbb prune --manifest``
can re-apply other thresholds without regenerating. Rows decided upstream (``no_mask``,
``error:...``) pass through with NaN scores and ``kept=False``. A pending row without a usable
source/repaint/mask becomes ``error:prune_input`` instead of failing the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from raydbb.config import PruneConfig
from raydbb.ddb.prune_rules import KEPT, decide
from raydbb.engine.stage import Batch, Stage, is_empty, num_rows, pending_rows
from raydbb.errors import ConfigError

if TYPE_CHECKING:
    import torch

INPUT_ERROR = "error:prune_input"
SCORE_COLUMNS = ("p_source", "p_target", "tau", "ig_score")


def _input_problem(source: np.ndarray, image: np.ndarray, mask: np.ndarray) -> str:
    """Why a row cannot be scored ('' when it can)."""
    if is_empty(source) or is_empty(image) or is_empty(mask):
        return "prune: missing source image, repaint or mask"
    source, image, mask = np.asarray(source), np.asarray(image), np.asarray(mask)
    if source.shape != image.shape or mask.shape != source.shape[:2]:
        return (f"prune: source {source.shape}, repaint {image.shape} and mask {mask.shape} "
                "must share height and width")
    return ""


class PruneStage(Stage):
    """Adds ``p_source, p_target, tau, ig_score`` (float64), ``kept`` and decides ``prune_reason``.

    ``classifier_dir`` is the ERM checkpoint (``raydbb.models.checkpoint`` format), ``tau`` holds
    τ per class index. ``cfg.resources.model_batch_size`` is the number of images per
    forward pass and, for IG, the number of path points (images × steps) per forward/backward.
    """

    name = "prune"

    def __init__(self, cfg: PruneConfig, classifier_dir: str | Path,
                 tau: Sequence[float] | np.ndarray) -> None:
        super().__init__(cfg.resources)
        self.cfg = cfg
        self.classifier_dir = str(classifier_dir)
        self.tau = np.asarray(tau, dtype=np.float64)
        if self.tau.ndim != 1 or self.tau.size == 0:
            raise ConfigError(f"prune tau {self.tau.tolist()}: expected one value per class")
        if cfg.prob_rule and np.isnan(self.tau).any():
            missing = np.flatnonzero(np.isnan(self.tau)).tolist()
            raise ConfigError(f"prune.prob_rule=true but tau is undefined (no scored training image) for "
                              f"classes {missing}; set prune.prob_rule=false or fix the training data")
        self.model = None
        self.image_size = 0

    def setup(self) -> None:
        from raydbb.models.checkpoint import load_classifier

        self.model, meta = load_classifier(self.classifier_dir, device=self.device)
        self.model.requires_grad_(False)  # IG needs input gradients only
        self.image_size = int(meta["image_size"])
        if int(meta["num_classes"]) != self.tau.size:
            raise ConfigError(f"prune: tau has {self.tau.size} classes but classifier {self.classifier_dir} "
                              f"has {meta['num_classes']}")

    def _probs(self, inputs: torch.Tensor) -> np.ndarray:
        """softmax(f(x')) of model-ready repaints, ``model_batch_size`` per forward, float64 (N, C)."""
        import torch

        out = []
        for start in range(0, inputs.shape[0], self.model_batch_size):
            with torch.inference_mode():
                logits = self.model(inputs[start:start + self.model_batch_size].to(self.device))
            out.append(torch.softmax(logits.float(), dim=1).double().cpu().numpy())
        return np.concatenate(out)

    def __call__(self, batch: Batch) -> Batch:
        import torch

        from raydbb.ddb.ig import path_ig_scores
        from raydbb.models.transforms import mask_to_model, to_model_input

        if self.model is None:
            raise RuntimeError("PruneStage.setup() must run before the stage is called")
        n = num_rows(batch)
        reasons = (np.array(batch["prune_reason"], dtype=object) if "prune_reason" in batch
                   else np.full(n, "", dtype=object))
        errors = np.array(batch["error"], dtype=object) if "error" in batch else np.full(n, "", dtype=object)
        scores = {k: np.full(n, np.nan, dtype=np.float64) for k in SCORE_COLUMNS}

        rows = []
        for i in np.flatnonzero(pending_rows(batch)):
            problem = _input_problem(batch["source_image"][i], batch["image"][i], batch["mask"][i])
            if problem:
                reasons[i], errors[i] = INPUT_ERROR, problem
            else:
                rows.append(int(i))
        if rows:
            idx = np.asarray(rows)
            y = np.asarray(batch["source_label"], dtype=np.int64)[idx]
            y_target = np.asarray(batch["target_label"], dtype=np.int64)[idx]
            # One preprocessing per image, shared by the probabilities and IG.
            sources = to_model_input([batch["source_image"][i] for i in rows], self.image_size)
            repaints = to_model_input([batch["image"][i] for i in rows], self.image_size)
            weights = torch.stack([mask_to_model(np.asarray(batch["mask"][i]), self.image_size)
                                   for i in rows])
            probs = self._probs(repaints)
            scores["p_source"][idx] = probs[np.arange(len(rows)), y]
            scores["p_target"][idx] = probs[np.arange(len(rows)), y_target]
            scores["tau"][idx] = self.tau[y]
            scores["ig_score"][idx] = path_ig_scores(
                self.model, sources, repaints, weights, y_target, steps=self.cfg.ig_steps,
                method=self.cfg.ig_method, batch_size=self.model_batch_size,
            )
            reasons[idx] = decide(scores["p_source"][idx], scores["tau"][idx], scores["ig_score"][idx],
                                  self.cfg.delta, self.cfg.prob_rule)
        kept = np.array([r == KEPT for r in reasons], dtype=bool)
        return {**batch, **scores, "kept": kept, "prune_reason": reasons, "error": errors}
