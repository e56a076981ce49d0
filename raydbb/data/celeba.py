"""CelebA, Blond_Hair vs not, with Male as the spurious attribute.

Two accepted layouts (the first one found wins)::

    ROOT/                                   ROOT/
      list_attr_celeba.txt                    metadata.csv   (data.csv_file)
      list_eval_partition.txt                   columns image_id, Blond_Hair, Male, split
      img_align_celeba/000001.jpg ...         img_align_celeba/000001.jpg ...

``list_attr_celeba.txt`` is the official file: a line with the image count, a line with the 40
attribute names, then ``<image_id> <40 values of -1/1>``. ``list_eval_partition.txt`` holds
``<image_id> <0|1|2>`` (train/val/test). In the CSV variant attribute values may be -1/1 or 0/1
and ``split`` may be 0/1/2 or train/val/test.

Classes ``not_blond, blond``; spurious ``female, male``; group = 2*Blond_Hair + Male.
``balanced_train`` keeps a seeded class-balanced subsample of train (as DFR and others train on);
val and test are never subsampled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from raydbb.data.records import (
    RecordSet,
    check_images_exist,
    ids_from_paths,
    make_frame,
    parse_splits,
    read_metadata_csv,
    require_columns,
    require_files,
)
from raydbb.errors import DataError

CLASS_NAMES = ["not_blond", "blond"]
SPURIOUS_NAMES = ["female", "male"]
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_DIR = "img_align_celeba"


def _read_official(root: Path) -> pd.DataFrame:
    """``image_id, Blond_Hair, Male, split`` from the official txt files (all as strings)."""
    require_files(root, [ATTR_FILE, PARTITION_FILE], "celeba")
    attr_path = root / ATTR_FILE
    with open(attr_path) as handle:
        count_line = handle.readline().strip()
        names = handle.readline().split()
    if not count_line.isdigit() or not names:
        raise DataError(
            f"celeba {attr_path}: expected a first line with the image count and a second with the "
            f"attribute names; got {count_line[:40]!r}"
        )
    attrs = pd.read_csv(attr_path, sep=r"\s+", skiprows=2, header=None, dtype=str)
    if attrs.shape[1] != len(names) + 1:
        raise DataError(
            f"celeba {attr_path}: rows have {attrs.shape[1]} fields; expected image id + {len(names)} "
            "attribute values"
        )
    attrs.columns = ["image_id", *names]
    if len(attrs) != int(count_line):
        raise DataError(f"celeba {attr_path}: header says {count_line} images but {len(attrs)} rows follow")
    require_columns(attrs, ["Blond_Hair", "Male"], f"celeba {attr_path}")
    part = pd.read_csv(root / PARTITION_FILE, sep=r"\s+", header=None, names=["image_id", "split"], dtype=str)
    merged = attrs[["image_id", "Blond_Hair", "Male"]].merge(part, on="image_id", how="left")
    missing = merged["split"].isna()
    if missing.any():
        raise DataError(
            f"celeba {root / PARTITION_FILE}: no partition for image "
            f"{merged.loc[missing, 'image_id'].iloc[0]} "
            f"({int(missing.sum())} images missing); expected one '<image_id> <0|1|2>' line per image"
        )
    return merged


def _binary(values: pd.Series, column: str, source: str) -> np.ndarray:
    """-1/1 or 0/1 attribute values to 0/1."""
    text = values.astype(str).str.strip()
    bad = ~text.isin(["-1", "0", "1"])
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{source}: column {column!r} has value {text.iloc[pos]!r} (row {pos + 1}); expected -1/1 or 0/1"
        )
    return (text == "1").to_numpy().astype(np.int64)


def balanced_subsample(label: np.ndarray, is_train: np.ndarray, seed: int) -> np.ndarray:
    """Boolean keep-mask: every non-train row, plus an equal seeded draw of train rows per class.

    Each class keeps as many train rows as the rarest class has; which rows is drawn with
    ``numpy.random.default_rng(seed)``, so the subsample is the same on every machine.
    """
    keep = ~is_train
    classes = np.unique(label[is_train])
    if len(classes) == 0:
        return keep
    per_class = [np.flatnonzero(is_train & (label == c)) for c in classes]
    n_keep = min(len(idx) for idx in per_class)
    rng = np.random.default_rng(seed)
    for idx in per_class:
        keep[rng.choice(idx, size=n_keep, replace=False)] = True
    return keep


def read_celeba(
    root: str | Path, csv_file: str = "metadata.csv", balanced_train: bool = False, split_seed: int = 0
) -> RecordSet:
    """Read CelebA (official txt files or the CSV variant) into a :class:`RecordSet`."""
    root = Path(root).expanduser().absolute()
    require_files(root, [], "celeba")
    if (root / ATTR_FILE).exists() or (root / PARTITION_FILE).exists():
        meta = _read_official(root)
        source = f"celeba {root / ATTR_FILE}"
    elif (root / csv_file).exists():
        source = f"celeba {root / csv_file}"
        meta = read_metadata_csv(root / csv_file, source)
        require_columns(meta, ["image_id", "Blond_Hair", "Male", "split"], source)
    else:
        raise DataError(
            f"celeba: {root} has neither {ATTR_FILE} + {PARTITION_FILE} nor {csv_file}; expected the "
            "official CelebA files or a CSV with columns image_id,Blond_Hair,Male,split"
        )
    if meta.empty:
        raise DataError(f"{source}: no rows; expected one row per image")
    label = _binary(meta["Blond_Hair"], "Blond_Hair", source)
    male = _binary(meta["Male"], "Male", source)
    split = np.asarray(parse_splits(meta["split"], source))
    image_ids = list(meta["image_id"].astype(str))
    frame = make_frame(
        sample_id=ids_from_paths(image_ids),
        path=[str(root / IMAGE_DIR / i) for i in image_ids],
        label=label,
        split=list(split),
        spurious=male,
        n_spurious=len(SPURIOUS_NAMES),
    )
    if balanced_train:
        frame = frame[balanced_subsample(label, split == "train", split_seed)]
    check_images_exist(frame["path"], source)
    return RecordSet("celeba", frame, list(CLASS_NAMES), list(SPURIOUS_NAMES))
