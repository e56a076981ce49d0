"""The generation manifest: one Parquet row per generated sample, with lineage, scores and decision.

Layout under the run folder ``OUT``::

    OUT/manifest/part-<run>-<seq>.parquet   manifest parts (explicit schema below)
    OUT/images/<sample_id>.png              every generated image, kept or pruned
    OUT/masks/<source_id>.png               the mask each source was repainted under

Parts are written under a hidden temporary name and moved into place with ``os.replace``, so a
reader (or a resumed run) sees whole parts only; hidden files are ignored by pyarrow's dataset
reader. Paths in ``image_path``/``mask_path`` are relative to ``OUT`` (the folder can be moved or
synced to object storage); :func:`read_manifest` resolves them. Only plain Arrow types are used
(no Ray tensor extension types), so pandas, pyarrow and DuckDB read the parts without Ray.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raydbb import storage
from raydbb.engine.names import IMAGES_DIR, MANIFEST_DIR, MASKS_DIR
from raydbb.engine.stage import Batch, num_rows
from raydbb.errors import DataError

_NAN = float("nan")

#: (name, Arrow type, default for a row no stage filled in, meaning) — documented in docs/manifest.md
#: (tests/test_docs.py keeps the two in step).
FIELDS: tuple[tuple[str, pa.DataType, Any, str], ...] = (
    ("sample_id", pa.string(), "", "unique id of the generated sample (filesystem-safe)"),
    ("source_id", pa.string(), "", "sample_id of the training image it was repainted from"),
    ("source_path", pa.string(), "", "absolute path of the source image"),
    ("source_label", pa.int64(), -1, "class index y of the source"),
    ("target_label", pa.int64(), -1, "class index y' the repaint should show"),
    ("mask_source", pa.string(), "", "text | dataset | attribution"),
    ("mask_path", pa.string(), "", "mask PNG relative to OUT ('' when none)"),
    ("image_path", pa.string(), "", "generated PNG relative to OUT ('' when not generated)"),
    ("prompt", pa.string(), "", "inpainting prompt"),
    ("token", pa.string(), "", "learned class token used in the prompt ('' when none)"),
    ("seed", pa.int64(), -1, "per-sample seed (run seed, source, target, variant)"),
    ("variant", pa.int64(), -1, "variant index for this (source, target)"),
    ("p_source", pa.float64(), _NAN, "softmax(f(x'))_y of the repaint"),
    ("p_target", pa.float64(), _NAN, "softmax(f(x'))_y' of the repaint"),
    ("tau", pa.float64(), _NAN, "τ_y: mean softmax(f(x))_y over the training images of class y"),
    ("ig_score", pa.float64(), _NAN, "integrated gradients of y' from x to x', summed over the mask"),
    ("kept", pa.bool_(), False, "the sample passed every pruning rule"),
    ("prune_reason", pa.string(), "", "kept | prob | ig | no_mask | error:<kind>"),
    ("classifier", pa.string(), "", "ERM checkpoint used for scores"),
    ("mask_model", pa.string(), "", "mask model id ('' for dataset masks)"),
    ("inpaint_model", pa.string(), "", "inpainting model id or folder"),
    ("t_mask", pa.float64(), _NAN, "mask stage seconds per row"),
    ("t_inpaint", pa.float64(), _NAN, "inpaint stage seconds per row"),
    ("t_prune", pa.float64(), _NAN, "prune stage seconds per row"),
    ("error", pa.string(), "", "error message ('' when none)"),
)
SCHEMA = pa.schema([pa.field(name, dtype, nullable=False) for name, dtype, _, _ in FIELDS])
COLUMNS = tuple(SCHEMA.names)
_DEFAULTS = {name: default for name, _, default, _ in FIELDS}
_NUMPY = {pa.string(): object, pa.int64(): np.int64, pa.float64(): np.float64, pa.bool_(): bool}


def manifest_columns(batch: Batch, constants: Mapping[str, Any] | None = None) -> Batch:
    """The manifest columns of a batch, typed, with defaults for columns no stage filled in.

    ``constants`` fills columns that are the same for the whole run (e.g. ``classifier``) where
    the batch lacks them. Extra columns are dropped.
    """
    n = num_rows(batch)
    out: Batch = {}
    for name, dtype, default, _ in FIELDS:
        if name in batch:
            values = np.asarray(batch[name])
        else:
            value = (constants or {}).get(name, default)
            values = np.full(n, value, dtype=_NUMPY[dtype])
        if dtype == pa.string():
            values = np.array(["" if v is None else str(v) for v in values], dtype=object)
        else:
            values = values.astype(_NUMPY[dtype], copy=False)
        out[name] = values
    return out


def manifest_table(batches: list[Batch]) -> pa.Table:
    """One Arrow table in :data:`SCHEMA` from batches that hold (at least) the manifest columns."""
    tables = [pa.Table.from_pydict({c: b[c] for c in COLUMNS}, schema=SCHEMA) for b in batches if num_rows(b)]
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


def write_part_atomic(path: Path, table: pa.Table) -> Path:
    """Write one Parquet part under a hidden temporary name, then ``os.replace`` it into place."""
    with storage.build_file(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


class ManifestWriter:
    """Buffers manifest rows on the driver and writes them as atomic Parquet parts.

    A part is written every ``rows_per_part`` rows or ``flush_seconds`` seconds, and on
    :meth:`close` (also when the run fails: rows that reached the driver have their PNGs on disk,
    so writing them keeps that work for the resumed run). Part names carry a per-run prefix, so
    a resumed run never overwrites an earlier run's parts.
    """

    def __init__(self, out: str | Path, rows_per_part: int = 2000, flush_seconds: float = 60.0) -> None:
        self.dir = Path(out) / MANIFEST_DIR
        self.rows_per_part = rows_per_part
        self.flush_seconds = flush_seconds
        self.run_tag = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.parts: list[Path] = []
        self.rows_written = 0
        self._buffer: list[Batch] = []
        self._buffered = 0
        self._last_flush = time.monotonic()

    def add(self, batch: Batch) -> None:
        """Queue a batch of manifest rows (columns as :data:`COLUMNS`; extra columns ignored)."""
        n = num_rows(batch)
        if not n:
            return
        self._buffer.append({c: batch[c] for c in COLUMNS})
        self._buffered += n
        if self._buffered >= self.rows_per_part or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> Path | None:
        """Write buffered rows as one part (no-op when the buffer is empty)."""
        self._last_flush = time.monotonic()
        if not self._buffered:
            return None
        table = manifest_table(self._buffer)
        path = self.dir / f"part-{self.run_tag}-{len(self.parts):05d}.parquet"
        write_part_atomic(path, table)
        self.parts.append(path)
        self.rows_written += table.num_rows
        self._buffer, self._buffered = [], 0
        return path

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def part_files(out: str | Path) -> list[Path]:
    """Finished manifest parts (hidden temporary files excluded), sorted by name."""
    folder = Path(out) / MANIFEST_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_")))


def _part_locations(out: str | Path) -> tuple[pafs.FileSystem | None, list[str]]:
    """``(filesystem, part paths)`` of a run folder given as a local path or a URI (``s3://``,
    ``gs://``, ``file://``; see :mod:`raydbb.storage`). ``None`` = the local filesystem."""
    if not storage.is_uri(str(out)):
        return None, [str(p) for p in part_files(out)]
    folder = storage.join(str(out), MANIFEST_DIR)
    if not storage.is_dir(folder):
        return None, []
    res = storage.resolve(folder)
    names = [n for n in storage.listdir(folder) if n.endswith(".parquet") and not n.startswith("_")]
    return res.filesystem, [f"{res.path.rstrip('/')}/{n}" for n in names]


def _under(root: str | Path, rel: str) -> str:
    """A manifest path (relative to OUT; '' = none) under ``root``, a local Path or a URI string.

    A path that is absolute or climbs out of the run folder (a foreign or edited manifest part) is
    refused: retraining and the report read these files.
    """
    if not rel:
        return ""
    parts = rel.replace("\\", "/").split("/")
    if rel.startswith(("/", "\\")) or ":" in parts[0] or ".." in parts:
        raise DataError(f"manifest path {rel!r} points outside the run folder {root}; expected a path "
                        "relative to it, such as images/<sample_id>.png")
    return str(root / rel) if isinstance(root, Path) else storage.join(root, rel)


def read_part(part: str | Path, filesystem: pafs.FileSystem | None = None,
              columns: list[str] | None = None) -> pa.Table:
    """One manifest part (all columns with :data:`SCHEMA`, or ``columns``); one line when unreadable."""
    try:
        return pq.read_table(part, schema=SCHEMA, columns=columns, filesystem=filesystem)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"manifest part {part} is unreadable ({str(err).splitlines()[0]}); move it aside "
                        "and rerun generate: the samples it held are made again") from None


def read_manifest(out: str | Path, resolve_paths: bool = True) -> pd.DataFrame:
    """All manifest rows of a run folder as a pandas frame (empty frame with the schema if none).

    Rows come in ``sample_id`` order: how they are spread over parts depends on which actor finished
    first, and retraining on the same repaints in another order would not reproduce.
    ``out`` is a local folder or a URI of a run folder synced to object storage. With
    ``resolve_paths`` (default) ``image_path``/``mask_path`` become absolute paths (or URIs)
    under ``out``; empty paths stay empty. Needs only pyarrow and pandas.
    """
    fs, parts = _part_locations(out)
    if parts:
        table = pa.concat_tables([read_part(p, fs) for p in parts])
    else:
        table = SCHEMA.empty_table()
    frame = table.to_pandas().sort_values("sample_id", kind="stable", ignore_index=True)
    if resolve_paths:
        root = str(out) if storage.is_uri(str(out)) else Path(out).resolve()
        for col in ("image_path", "mask_path"):
            frame[col] = [_under(root, p) for p in frame[col]]
    return frame


def finished_sample_ids(out: str | Path) -> set[str]:
    """sample_ids already in the manifest (every recorded row counts: kept, pruned or skipped)."""
    fs, parts = _part_locations(out)
    ids: set[str] = set()
    for part in parts:
        ids.update(read_part(part, fs, columns=["sample_id"]).column("sample_id").to_pylist())
    return ids


def remove_stale_temp_files(out: str | Path) -> int:
    """Delete hidden ``*.tmp`` files a killed run left in the manifest/images/masks folders."""
    removed = 0
    for sub in (MANIFEST_DIR, IMAGES_DIR, MASKS_DIR):
        folder = Path(out) / sub
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
                removed += 1
    return removed
