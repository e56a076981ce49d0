"""Penultimate features of a classifier over a record frame (for head-only fits on cached features).

Used by DDB's fast retraining (:mod:`raydbb.ddb.retrain.head`) and by the last-layer baselines
(DFR, AFR in :mod:`raydbb.baselines`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch


@torch.no_grad()
def extract_features(model: torch.nn.Module, frame: pd.DataFrame, image_size: int,
                     device: str | torch.device = "cpu", batch_size: int = 128, desc: str = "features",
                     progress: bool = False) -> np.ndarray:
    """``model.features`` of every row of ``frame`` (evaluation transform, eval mode), float32 (N, D)."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from raydbb.data.torch_dataset import ImageRecords
    from raydbb.models.transforms import EvalTransform

    model.eval()
    loader = DataLoader(ImageRecords(frame, EvalTransform(image_size)), batch_size=batch_size, shuffle=False)
    chunks = [model.features(images.to(device)).float().cpu().numpy()
              for images, *_ in tqdm(loader, desc=desc, disable=not progress, leave=False)]
    dim = model.head.in_features
    return np.concatenate(chunks) if chunks else np.zeros((0, dim), dtype=np.float32)
