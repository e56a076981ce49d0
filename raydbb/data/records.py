"""The one record schema every dataset reader produces.

A :class:`RecordSet` is a pandas frame with the columns in :data:`COLUMNS` plus the class and
spurious-attribute names. The same frame feeds Ray Data (``ray.data.from_pandas``) for generation
and :class:`raydbb.data.torch_dataset.ImageRecords` for training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from raydbb.errors import DataError
from raydbb.ids import sanitize_id

SPLITS = ("train", "val", "test")
COLUMNS = ("sample_id", "path", "label", "spurious", "group", "split", "mask")
UNKNOWN = -1  # spurious/group value when the dataset has no attribute labels


@dataclass
class RecordSet:
    """Samples of one dataset in the common schema.

    Columns: ``sample_id`` (stable, filesystem-safe, unique), ``path`` (absolute image path),
    ``label`` (0..C-1), ``spurious`` (0..S-1 or -1), ``group`` (``label * S + spurious`` or -1),
    ``split`` (train/val/test), ``mask`` (absolute mask path or None).
    """

    name: str
    frame: pd.DataFrame
    class_names: list[str]
    spurious_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        missing = [c for c in COLUMNS if c not in self.frame.columns]
        if missing:
            raise DataError(f"{self.name}: record frame lacks columns {missing}")
        self.frame = self.frame.loc[:, list(COLUMNS)].reset_index(drop=True)
        if self.frame["sample_id"].duplicated().any():
            dup = self.frame.loc[self.frame["sample_id"].duplicated(), "sample_id"].iloc[0]
            raise DataError(f"{self.name}: duplicate sample_id {dup!r}; ids must be unique")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_groups(self) -> int:
        return len(self.class_names) * max(len(self.spurious_names), 1)

    def group_name(self, group: int) -> str:
        """``"<class>/<spurious>"`` for a group index, e.g. ``"waterbird/land"``."""
        if group == UNKNOWN or not self.spurious_names:
            return "unknown"
        s = len(self.spurious_names)
        return f"{self.class_names[group // s]}/{self.spurious_names[group % s]}"

    def group_names(self) -> list[str]:
        return [self.group_name(g) for g in range(self.num_groups)] if self.spurious_names else []

    def split(self, name: str) -> pd.DataFrame:
        """Rows of one split (a copy with a fresh index)."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {list(SPLITS)}")
        return self.frame[self.frame["split"] == name].reset_index(drop=True)

    def counts(self) -> pd.DataFrame:
        """Number of samples per (split, group) with readable group names."""
        table = self.frame.groupby(["split", "group"]).size().rename("count").reset_index()
        table["group_name"] = [self.group_name(int(g)) for g in table["group"]]
        order = {s: i for i, s in enumerate(SPLITS)}
        table = table.sort_values(
            by=["split", "group"], key=lambda c: c.map(order) if c.name == "split" else c
        )
        return table.reset_index(drop=True)

    def split_group_counts(self) -> dict[str, dict[str, int]]:
        """``{split: {group name: count}}`` for every split present, listing empty groups as 0.

        Rows without a spurious label are counted under ``"unknown"``.
        """
        result: dict[str, dict[str, int]] = {}
        for split in SPLITS:
            rows = self.frame[self.frame["split"] == split]
            if rows.empty:
                continue
            per_group = rows["group"].value_counts()
            counts = {name: int(per_group.get(g, 0)) for g, name in enumerate(self.group_names())}
            n_unknown = int(per_group.get(UNKNOWN, 0))
            if n_unknown:
                counts["unknown"] = n_unknown
            result[split] = counts
        return result


def make_frame(
    sample_id: list[str],
    path: list[str],
    label: np.ndarray | list[int],
    split: list[str],
    spurious: np.ndarray | list[int] | None = None,
    n_spurious: int = 0,
    mask: list[str | None] | None = None,
) -> pd.DataFrame:
    """Build a frame in the common schema, deriving ``group`` from label and spurious value."""
    label_arr = np.asarray(label, dtype=np.int64)
    if spurious is None:
        spur_arr = np.full(len(label_arr), UNKNOWN, dtype=np.int64)
        group = np.full(len(label_arr), UNKNOWN, dtype=np.int64)
    else:
        spur_arr = np.asarray(spurious, dtype=np.int64)
        group = np.where(spur_arr == UNKNOWN, UNKNOWN, label_arr * max(n_spurious, 1) + spur_arr)
    return pd.DataFrame(
        {
            "sample_id": list(sample_id),
            "path": [str(p) for p in path],
            "label": label_arr,
            "spurious": spur_arr,
            "group": group.astype(np.int64),
            "split": list(split),
            # object dtype keeps None for "no mask" (pandas 3 would turn a str column's None into NaN)
            "mask": pd.Series(list(mask) if mask is not None else [None] * len(label_arr), dtype=object),
        }
    )


def read_metadata_csv(path: Path, source: str) -> pd.DataFrame:
    """A metadata CSV as strings (empty cells stay ""); one line for an empty or non-UTF-8 file."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise DataError(f"{source}: the file is empty; expected a header and one row per image") from None
    except UnicodeDecodeError:
        # pandas decodes in chunks, so its offset is not the file's: find the first bad byte here.
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{source}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
        raise
    except pd.errors.ParserError as err:
        raise DataError(f"{source}: not a CSV table ({str(err).strip().splitlines()[-1]})") from None


def require_files(root: Path, names: list[str], dataset: str) -> None:
    """Fail with one line if any of ``names`` is missing under ``root``."""
    if not root.is_dir():
        raise DataError(f"{dataset}: dataset root {root} is not a folder")
    for name in names:
        if not (root / name).exists():
            # A common slip: pointing at the folder above the dataset (the archive's parent).
            below = [sub for sub in sorted(root.iterdir())
                     if sub.is_dir() and all((sub / n).exists() for n in names)]
            hint = f"; did you mean {below[0]}?" if below else ""
            raise DataError(f"{dataset}: missing {root / name}; expected the dataset's {name}{hint}")


def require_columns(frame: pd.DataFrame, columns: list[str], source: str) -> None:
    """Fail with one line naming the first missing column."""
    for col in columns:
        if col not in frame.columns:
            raise DataError(f"{source}: missing column {col!r}; found {list(frame.columns)}")


def check_images_exist(paths: pd.Series, source: str, what: str = "image") -> None:
    """Fail with one line naming the first file that does not exist (and how many are missing)."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise DataError(f"{source}: {what} {missing[0]} not found ({len(missing)} missing in total)")


# Split codes used by WILDS Waterbirds, CelebA's list_eval_partition.txt and the generic CSV.
SPLIT_CODES = {"0": "train", "1": "val", "2": "test"}


def parse_splits(values: pd.Series, source: str, allow_names: bool = True) -> list[str]:
    """Map split cells (``0/1/2`` or, if ``allow_names``, ``train/val/test``) to split names.

    Fails with one line naming the first unknown value, its row and the accepted values.
    """
    accepted = dict(SPLIT_CODES)
    if allow_names:
        accepted.update({s: s for s in SPLITS})
    text = values.astype(str).str.strip()
    bad = ~text.isin(list(accepted))
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{source}: unknown split value {text.iloc[pos]!r} (row {pos + 1}); expected one of "
            f"{sorted(accepted)}"
        )
    return [accepted[t] for t in text]


def parse_codes(values: pd.Series, names: list[str], column: str, source: str) -> np.ndarray:
    """Integer codes ``0..len(names)-1`` from a column of ints; fails on anything else.

    Used for datasets whose attributes are stored as integers (Waterbirds ``y``/``place``).
    """
    codes = pd.to_numeric(values, errors="coerce")
    bad = codes.isna() | ~codes.isin(range(len(names)))
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{source}: column {column!r} has value {values.iloc[pos]!r} (row {pos + 1}); expected "
            f"an integer in 0..{len(names) - 1} ({', '.join(f'{i}={n}' for i, n in enumerate(names))})"
        )
    return codes.to_numpy(dtype=np.int64)


def ids_from_paths(rel_paths: list[str]) -> list[str]:
    """Stable, filesystem-safe sample ids from image paths relative to the dataset root.

    The id is the relative path without its extension, sanitised (``sanitize_id`` appends a short
    hash whenever characters had to be replaced, so ``a/b`` and ``a_b`` stay distinct).
    """
    ids = []
    for rel in rel_paths:
        posix = PurePosixPath(str(rel).replace("\\", "/"))
        ids.append(sanitize_id(str(posix.with_suffix(""))))
    return ids
