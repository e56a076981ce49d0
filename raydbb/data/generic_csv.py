"""Your own dataset (and the synthetic benchmark) from one CSV file.

Accepted layout::

    ROOT/
      metadata.csv          (data.csv_file) columns path,label[,spurious][,split][,mask][,sample_id]
      classes.json          optional: {"class_names": [...], "spurious_names": [...]}
      images/..., masks/... (anywhere; paths are relative to the CSV's folder or absolute)

- ``label``: a class name or an integer index. Class names come from ``data.class_names``, else
  ``classes.json``, else the sorted unique label strings; integer labels without names become
  ``class_0, class_1, ...``.
- ``spurious`` (optional): the attribute that defines groups (group = label * S + spurious), given
  the same way (``data.spurious_names`` / ``classes.json`` / sorted names / ``spurious_0, ...``).
  Empty cells mean "unknown" (DDB needs no group labels on train; WGA needs them on val/test).
- ``split`` (optional): ``train/val/test`` or ``0/1/2``; without the column every row is train.
- ``mask`` (optional): a foreground mask per image (nonzero = the causal object); empty = none.
- ``sample_id`` (optional): your ids (sanitised); by default the id is the image path without
  its extension.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from raydbb.data.records import (
    UNKNOWN,
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
from raydbb.ids import sanitize_id

SIDECAR = "classes.json"


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _read_sidecar(path: Path) -> dict[str, list[str]]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected an object with class_names and optional spurious_names")
    out = {}
    for key in ("class_names", "spurious_names"):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
            raise DataError(f"{path}: {key} must be a non-empty list of strings; got {value!r}")
        out[key] = value
    return out


RARE_NAME_ROWS = 3
"""A name found in this many rows or fewer, beside a name found in 100 times as many, is warned about."""


def _warn_rare_names(present: pd.Series, column: str, source: str) -> None:
    """One stderr line per name so rare that it is more likely a typo than a class of its own."""
    counts = present.value_counts()
    for name, n in counts.items():
        if n <= RARE_NAME_ROWS and counts.max() >= 100 * n:
            print(f"warning: {source}: {column} {name!r} appears in only {n} row(s) (the most common in "
                  f"{counts.max()}) and is kept as a name of its own; if it is a typo, fix it, or list the "
                  f"names in {SIDECAR} so that unknown values are refused", file=sys.stderr)


def encode_column(
    values: pd.Series, names: list[str] | None, column: str, prefix: str, source: str, allow_empty: bool
) -> tuple[np.ndarray, list[str]]:
    """Integer codes and the name list for a column of names or integer indices.

    With ``names`` a cell must be one of them or an index into them; without, the names are the
    sorted unique strings, or ``<prefix>_0..`` when every cell is an integer. Empty cells become
    -1 when ``allow_empty``, else they are an error.
    """
    text = values.astype(str).str.strip()
    empty = (text == "").to_numpy()
    if empty.any() and not allow_empty:
        pos = int(np.flatnonzero(empty)[0])
        raise DataError(
            f"{source}: column {column!r} is empty in row {pos + 1}; expected a value in every row"
        )
    present = text[~empty]
    if names is None:
        is_int = present.map(_is_int)
        if len(present) and is_int.all():
            ints = present.astype(int)
            if (ints < 0).any():
                raise DataError(f"{source}: column {column!r} has negative value {int(ints.min())}")
            names = [f"{prefix}_{i}" for i in range(int(ints.max()) + 1)]
        elif is_int.any():
            raise DataError(
                f"{source}: column {column!r} mixes names and integers (e.g. {present[is_int].iloc[0]!r}); "
                f"give the names in {SIDECAR} or the config"
            )
        else:
            names = sorted(present.unique())
            _warn_rare_names(present, column, source)
    lookup = {n: i for i, n in enumerate(names)}
    lookup.update({str(i): i for i in range(len(names)) if str(i) not in lookup})
    codes = np.full(len(text), UNKNOWN, dtype=np.int64)
    for pos, cell in enumerate(text):
        if empty[pos]:
            continue
        if cell not in lookup:
            raise DataError(
                f"{source}: {column} {cell!r} in row {pos + 1} is not one of {names} "
                f"(or an index 0..{len(names) - 1})"
            )
        codes[pos] = lookup[cell]
    return codes, list(names)


def read_generic_csv(
    root: str | Path,
    csv_file: str = "metadata.csv",
    class_names: list[str] | None = None,
    spurious_names: list[str] | None = None,
    name: str = "csv",
) -> RecordSet:
    """Read a ``path,label[,spurious][,split][,mask]`` CSV into a :class:`RecordSet`."""
    root = Path(root).expanduser().absolute()
    require_files(root, [csv_file], name)
    csv_path = root / csv_file
    base = csv_path.parent
    source = f"{name} {csv_path}"
    meta = read_metadata_csv(csv_path, source)
    require_columns(meta, ["path", "label"], source)
    if meta.empty:
        raise DataError(f"{source}: no rows; expected one row per image")
    sidecar = _read_sidecar(base / SIDECAR)
    label, class_names = encode_column(
        meta["label"], class_names or sidecar.get("class_names"), "label", "class", source, allow_empty=False
    )
    spurious, spur_names = None, []
    if "spurious" in meta.columns and (meta["spurious"].str.strip() != "").any():
        spurious, spur_names = encode_column(
            meta["spurious"], spurious_names or sidecar.get("spurious_names"), "spurious", "spurious",
            source, allow_empty=True,
        )
    split = parse_splits(meta["split"], source) if "split" in meta.columns else ["train"] * len(meta)
    rel_paths = list(meta["path"].str.strip())
    if "" in rel_paths:
        row = rel_paths.index("") + 1
        raise DataError(f"{source}: column 'path' is empty in row {row}; expected an image path")
    mask = None
    if "mask" in meta.columns:
        mask = [str(base / m) if m else None for m in meta["mask"].str.strip()]
    if "sample_id" in meta.columns:
        sample_ids = [sanitize_id(s) for s in meta["sample_id"]]
    else:
        sample_ids = ids_from_paths(rel_paths)
    frame = make_frame(
        sample_id=sample_ids,
        path=[str(base / p) for p in rel_paths],
        label=label,
        split=split,
        spurious=spurious,
        n_spurious=len(spur_names),
        mask=mask,
    )
    check_images_exist(frame["path"], source)
    check_images_exist(frame["mask"].dropna(), source, what="mask")
    return RecordSet(name, frame, class_names, spur_names)
