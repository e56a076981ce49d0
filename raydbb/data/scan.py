"""Find the images of a record frame that cannot be decoded, before training spends time on them.

A zero-byte, corrupt, truncated or oversized file among thousands would otherwise stop a training
run in the middle of an epoch. Every image is decoded once (``read_image``, the loader's own
reader) in a thread pool: PIL releases the GIL while decoding, so the scan runs on all cores.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from raydbb.data.images import read_image
from raydbb.errors import DataError

SKIPPED_FILE = "skipped_images.csv"
"""Where a training run lists the images it left out (``split,path,reason``)."""


def _problem(path: str) -> str | None:
    try:
        read_image(path)
    except DataError as err:
        return str(err)
    return None


def unreadable_images(paths: Iterable[str], progress: bool = True,
                      threads: int | None = None) -> dict[str, str]:
    """``{path: one-line reason}`` for every path that :func:`read_image` refuses (empty when all read)."""
    unique = sorted({str(p) for p in paths})
    threads = threads or min(16, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        # disable=None: no bar when stderr is not a terminal (a job log would keep every redraw).
        reasons = list(tqdm(pool.map(_problem, unique), total=len(unique), desc="check images",
                            disable=True if not progress or len(unique) < 2000 else None, leave=False))
    return {p: r for p, r in zip(unique, reasons, strict=True) if r is not None}


def drop_unreadable(frames: dict[str, pd.DataFrame], policy: str, progress: bool = True,
                    ) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Decode every image of ``frames`` (``{split: frame}``) and apply ``policy`` to the bad ones.

    ``policy="skip"`` returns the frames without those rows and a table ``split,path,reason`` of
    what was left out; ``"refuse"`` raises a one-line :class:`DataError` naming the first bad image
    and the count.
    """
    bad = unreadable_images((p for f in frames.values() for p in f["path"].astype(str)), progress)
    rows = [{"split": split, "path": p, "reason": bad[p]}
            for split, frame in frames.items() for p in frame["path"].astype(str) if p in bad]
    skipped = pd.DataFrame(rows, columns=["split", "path", "reason"])
    if skipped.empty:
        return frames, skipped
    if policy == "refuse":
        raise DataError(f"{len(skipped)} image(s) cannot be read, e.g. {skipped['reason'].iloc[0]}; "
                        "fix or remove them, or set train.bad_images=skip to train without them")
    kept = {split: frame[~frame["path"].astype(str).isin(bad)] for split, frame in frames.items()}
    return kept, skipped


def write_skipped(skipped: pd.DataFrame, folder: str | Path) -> Path | None:
    """Write the skip table into ``folder`` (nothing when empty); returns the file's path."""
    if skipped.empty:
        return None
    path = Path(folder) / SKIPPED_FILE
    skipped.to_csv(path, index=False)
    return path
