"""Write stage: generated images and masks to PNG, then only the manifest columns travel on.

Runs as plain Ray tasks next to the data; the driver collects the (small, scalar) rows and writes
the Parquet manifest (:class:`raydbb.engine.manifest.ManifestWriter`). A row reaches the manifest
only after its PNGs are complete on disk, which is what makes resuming safe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from raydbb.config import StageResources
from raydbb.data.images import write_png_atomic
from raydbb.engine.manifest import manifest_columns
from raydbb.engine.names import IMAGES_DIR, MASKS_DIR
from raydbb.engine.stage import TELEMETRY_PREFIXES, Batch, Stage, is_empty, num_rows
from raydbb.ids import safe_join, sanitize_id


class WriteStage(Stage):
    """Writes ``image`` to ``OUT/images/<sample_id>.png`` and ``mask`` to ``OUT/masks/<source_id>.png``.

    Returns the manifest columns (``image_path``/``mask_path`` relative to ``OUT``; run-wide
    ``constants`` such as the classifier id fill columns the stages did not set) plus the
    per-stage timing and telemetry columns (``t_<stage>``, ``node_<stage>``, ...), which the driver
    sums into the run summary.
    """

    name = "write"
    stateful = False

    def __init__(self, out: str | Path, constants: dict[str, Any] | None = None,
                 resources: StageResources | None = None) -> None:
        super().__init__(resources)
        self.out = str(out)
        self.constants = dict(constants or {})

    def __call__(self, batch: Batch) -> Batch:
        n = num_rows(batch)
        image_paths = np.full(n, "", dtype=object)
        mask_paths = np.full(n, "", dtype=object)
        written_masks: dict[str, str] = {}
        for i in range(n):
            if "image" in batch and not is_empty(batch["image"][i]):
                rel = f"{IMAGES_DIR}/{sanitize_id(str(batch['sample_id'][i]))}.png"
                write_png_atomic(safe_join(self.out, rel), np.asarray(batch["image"][i]))
                image_paths[i] = rel
            if "mask" in batch and not is_empty(batch["mask"][i]):
                source_id = str(batch["source_id"][i])
                if source_id not in written_masks:
                    rel = f"{MASKS_DIR}/{sanitize_id(source_id)}.png"
                    path = safe_join(self.out, rel)
                    # Masks are deterministic per source; a finished file (atomic write) is reused.
                    if not path.exists():
                        write_png_atomic(path, np.asarray(batch["mask"][i]) > 0)
                    written_masks[source_id] = rel
                mask_paths[i] = written_masks[source_id]
        out = manifest_columns({**batch, "image_path": image_paths, "mask_path": mask_paths}, self.constants)
        out.update({k: v for k, v in batch.items() if k.startswith(TELEMETRY_PREFIXES)})
        return out
