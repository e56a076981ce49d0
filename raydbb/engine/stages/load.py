"""Load stage: read each source image; an unreadable file becomes a recorded skip, never a crash."""

from __future__ import annotations

import numpy as np
import pandas as pd

from raydbb.data.images import ImageTooLarge, read_image
from raydbb.engine.stage import Batch, Stage, empty_image, num_rows, object_column
from raydbb.errors import DataError

#: Columns a source row must carry into the pipeline (see :func:`source_rows`).
SOURCE_COLUMNS = ("source_id", "source_path", "source_label", "split", "dataset_mask_path")


def source_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Record rows (the readers' common schema) as pipeline source rows (:data:`SOURCE_COLUMNS`)."""
    return pd.DataFrame({
        "source_id": frame["sample_id"].astype(str).to_numpy(dtype=object),
        "source_path": frame["path"].astype(str).to_numpy(dtype=object),
        "source_label": frame["label"].to_numpy(dtype=np.int64),
        "split": frame["split"].astype(str).to_numpy(dtype=object),
        "dataset_mask_path": np.array(["" if m is None or pd.isna(m) else str(m) for m in frame["mask"]],
                                      dtype=object),
    })


class LoadStage(Stage):
    """Adds ``source_image`` (uint8 HxWx3), ``prune_reason`` and ``error`` to source rows.

    A missing or corrupt file gets an empty placeholder image, ``prune_reason="error:image_read"``
    (``"error:image_too_large"`` for an image over :data:`raydbb.data.images.MAX_PIXELS`)
    and the reader's one-line message in ``error``; later stages pass such rows through.
    """

    name = "load"
    stateful = False

    def __call__(self, batch: Batch) -> Batch:
        n = num_rows(batch)
        reasons = np.array(batch["prune_reason"], dtype=object) if "prune_reason" in batch else np.full(
            n, "", dtype=object)
        errors = np.array(batch["error"], dtype=object) if "error" in batch else np.full(n, "", dtype=object)
        images = []
        for i, path in enumerate(batch["source_path"]):
            try:
                images.append(read_image(path))
            except DataError as err:
                images.append(empty_image())
                reasons[i] = "error:image_too_large" if isinstance(err, ImageTooLarge) else "error:image_read"
                errors[i] = str(err)
        return {**batch, "source_image": object_column(images), "prune_reason": reasons, "error": errors}
