"""A torch ``Dataset`` over a record frame, for training and evaluation loaders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from raydbb.data.images import read_image


class ImageRecords(Dataset):
    """Items ``(transform(image), label, group, index)`` for the rows of a record frame.

    ``image`` is the uint8 ``HxWx3`` RGB array of the row's ``path``; ``index`` is the row position
    in ``frame`` (0..len-1), so per-sample outputs (losses, probabilities) map back to rows.
    ``transform=None`` returns the array itself. Rows need ``path`` and ``label``; ``group`` is
    -1 when the frame has none. A missing or corrupt image raises ``DataError``.
    """

    def __init__(self, frame: pd.DataFrame, transform: Callable[[np.ndarray], Any] | None = None) -> None:
        self.paths = frame["path"].astype(str).tolist()
        self.labels = frame["label"].to_numpy(dtype=np.int64)
        self.groups = (
            frame["group"].to_numpy(dtype=np.int64) if "group" in frame.columns
            else np.full(len(frame), -1, dtype=np.int64)
        )
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, int, int, int]:
        image = read_image(self.paths[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index]), int(self.groups[index]), int(index)
