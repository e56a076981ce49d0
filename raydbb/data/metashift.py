"""MetaShift cat vs dog in the DISC / LISA folder layout (``MetaDatasetCatDog``).

Accepted layout (the folder DISC and LISA distribute; other context folders are ignored)::

    ROOT/
      train/cat/cat(sofa)/*.jpg     train/cat/cat(bed)/*.jpg
      train/dog/dog(bench)/*.jpg    train/dog/dog(bike)/*.jpg
      test/cat/cat(shelf)/*.jpg     test/dog/dog(shelf)/*.jpg

The full download also holds e.g. ``train/dog/dog(cabinet)``; the DISC setup (used by DDB) trains
on dog(bench|bike) only, so those folders are not read. Images: .jpg/.jpeg/.png/.bmp/.webp.

Splits: train = the train folders; val = a seeded ``val_fraction`` (default 15 %) of each test
folder, drawn with ``numpy.random.default_rng(split_seed)``; test = the rest of the test folders.

Groups. The spurious attribute is the context the animal is photographed in, with three values:
``indoor`` (sofa, bed), ``outdoor`` (bench, bike) and ``shelf``. Training is fully confounded —
only ``cat/indoor`` and ``dog/outdoor`` occur — and val/test contain only ``cat/shelf`` and
``dog/shelf``, a context absent from training, so test worst-group accuracy is the lower of the
cat(shelf) and dog(shelf) accuracies, as DISC reports it. Shelf images are minority-group
examples for both classes (neither occurs in train), which the ``val_minority`` token pool uses.
Note that every val/test group has zero training share, so a train-proportion-weighted average
is not defined for this dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raydbb.data.records import RecordSet, ids_from_paths, make_frame, require_files
from raydbb.errors import DataError

CLASS_NAMES = ["cat", "dog"]
SPURIOUS_NAMES = ["indoor", "outdoor", "shelf"]
# (folder split, class, context folder name, spurious index)
FOLDERS = [
    ("train", "cat", "sofa", 0),
    ("train", "cat", "bed", 0),
    ("train", "dog", "bench", 1),
    ("train", "dog", "bike", 1),
    ("test", "cat", "shelf", 2),
    ("test", "dog", "shelf", 2),
]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _images_in(folder: Path) -> list[Path]:
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise DataError(f"metashift: no images in {folder}; expected .jpg/.png files of that context")
    return files


def read_metashift(root: str | Path, val_fraction: float = 0.15, split_seed: int = 0) -> RecordSet:
    """Read the DISC MetaShift cat/dog folders into a :class:`RecordSet` (val drawn from test)."""
    root = Path(root).expanduser().absolute()
    rel_folders = [f"{part}/{cls}/{cls}({ctx})" for part, cls, ctx, _ in FOLDERS]
    require_files(root, rel_folders, "metashift")
    if not 0 < val_fraction < 1:
        raise DataError(f"metashift: val_fraction={val_fraction}; expected a number in (0, 1)")
    rng = np.random.default_rng(split_seed)
    rel_paths: list[str] = []
    labels: list[int] = []
    spurious: list[int] = []
    splits: list[str] = []
    for (part, cls, _, spur), rel_folder in zip(FOLDERS, rel_folders, strict=True):
        files = _images_in(root / rel_folder)
        folder_split = np.full(len(files), part, dtype=object)
        if part == "test":
            # Stratified per test folder, so val has the test's group proportions.
            n_val = int(round(val_fraction * len(files)))
            folder_split[rng.choice(len(files), size=n_val, replace=False)] = "val"
        rel_paths += [str(f.relative_to(root).as_posix()) for f in files]
        labels += [CLASS_NAMES.index(cls)] * len(files)
        spurious += [spur] * len(files)
        splits += list(folder_split)
    frame = make_frame(
        sample_id=ids_from_paths(rel_paths),
        path=[str(root / p) for p in rel_paths],
        label=labels,
        split=splits,
        spurious=spurious,
        n_spurious=len(SPURIOUS_NAMES),
    )
    return RecordSet("metashift", frame, list(CLASS_NAMES), list(SPURIOUS_NAMES))
