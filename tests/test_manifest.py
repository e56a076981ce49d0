"""The manifest: explicit schema, round trip through pandas/pyarrow, atomic parts, resume ids."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from raydbb.engine import manifest as mf
from raydbb.engine.manifest import (
    COLUMNS,
    SCHEMA,
    ManifestWriter,
    finished_sample_ids,
    manifest_columns,
    read_manifest,
    remove_stale_temp_files,
)

REQUIRED = ["sample_id", "source_id", "source_path", "source_label", "target_label", "mask_source",
            "mask_path", "image_path", "prompt", "token", "seed", "variant", "p_source", "p_target",
            "tau", "ig_score", "kept", "prune_reason", "classifier", "mask_model", "inpaint_model",
            "t_mask", "t_inpaint", "t_prune", "error"]


def _batch(ids: list[str]) -> dict[str, np.ndarray]:
    n = len(ids)
    return manifest_columns({
        "sample_id": np.array(ids, dtype=object),
        "source_id": np.array([i.split("__")[0] for i in ids], dtype=object),
        "source_label": np.zeros(n, dtype=np.int64),
        "target_label": np.ones(n, dtype=np.int64),
        "image_path": np.array([f"images/{i}.png" for i in ids], dtype=object),
        "seed": np.arange(n, dtype=np.int64) + 2**62,
        "p_source": np.linspace(0, 1, n),
        "kept": np.arange(n) % 2 == 0,
        "prune_reason": np.array(["kept" if i % 2 == 0 else "prob" for i in range(n)], dtype=object),
        "source_image": np.zeros((n, 2, 2, 3), np.uint8),  # not a manifest column: dropped
    }, constants={"classifier": "/ckpt/erm"})


def test_schema_is_explicit_and_plain_arrow() -> None:
    assert list(COLUMNS) == REQUIRED
    for field in SCHEMA:
        assert not isinstance(field.type, pa.ExtensionType), field
    assert SCHEMA.field("kept").type == pa.bool_()
    assert SCHEMA.field("seed").type == pa.int64()
    assert SCHEMA.field("ig_score").type == pa.float64()


def test_manifest_columns_fill_defaults_and_constants() -> None:
    b = _batch(["s0__to-b__v0", "s1__to-b__v0"])
    assert set(b) == set(COLUMNS)
    assert list(b["classifier"]) == ["/ckpt/erm"] * 2
    assert list(b["mask_path"]) == ["", ""]
    assert np.isnan(b["ig_score"]).all() and b["variant"].tolist() == [-1, -1]


def test_round_trip_pandas_and_pyarrow(tmp_path) -> None:
    ids = [f"s{i}__to-b__v0" for i in range(7)]
    with ManifestWriter(tmp_path, rows_per_part=3) as writer:
        writer.add(_batch(ids[:4]))  # 4 >= 3 -> one part
        writer.add(_batch(ids[4:6]))
        writer.add(_batch(ids[6:]))  # 3 buffered -> second part
        writer.add(_batch([]))
    assert len(writer.parts) == 2 and writer.rows_written == 7

    frame = read_manifest(tmp_path)
    assert sorted(frame["sample_id"]) == sorted(ids)
    assert frame["kept"].dtype == bool and frame["seed"].dtype == np.int64
    assert frame["seed"].max() == 2**62 + 3
    row = frame.set_index("sample_id").loc["s1__to-b__v0"]
    assert row["image_path"] == str((tmp_path / "images" / "s1__to-b__v0.png").resolve())
    assert row["prune_reason"] == "prob" and not row["kept"]
    assert read_manifest(tmp_path, resolve_paths=False)["image_path"].str.startswith("images/").all()

    # plain readers, no raydbb and no Ray: pandas on the folder, pyarrow dataset, single parts
    plain = pd.read_parquet(tmp_path / "manifest")
    assert len(plain) == 7 and list(plain.columns) == list(COLUMNS)
    table = pads.dataset(tmp_path / "manifest", format="parquet").to_table()
    assert table.schema.equals(SCHEMA, check_metadata=False)
    assert finished_sample_ids(tmp_path) == set(ids)


def test_rows_read_back_in_sample_id_order_whatever_order_they_were_written(tmp_path) -> None:
    # Actors finish in any order; retraining must see the same rows in the same order every run.
    ids = [f"s{i}__to-b__v0" for i in (5, 1, 4, 0, 3, 2)]
    for name, order in (("a", ids), ("b", ids[::-1])):
        with ManifestWriter(tmp_path / name, rows_per_part=2) as writer:
            for k in range(0, 6, 2):
                writer.add(_batch(order[k:k + 2]))
    a, b = (read_manifest(tmp_path / name, resolve_paths=False) for name in ("a", "b"))
    assert list(a["sample_id"]) == sorted(ids) and list(a.index) == list(range(6))
    # (_batch numbers seed, p_source and kept by position in the batch: only the rows' ids match)
    pd.testing.assert_frame_equal(a[["sample_id", "image_path"]], b[["sample_id", "image_path"]])


def test_duckdb_reads_the_manifest(tmp_path) -> None:
    duckdb = pytest.importorskip("duckdb")
    with ManifestWriter(tmp_path) as writer:
        writer.add(_batch(["a__to-b__v0", "c__to-b__v0"]))
    glob = str(tmp_path / "manifest" / "*.parquet")
    rows = duckdb.sql(f"select count(*), sum(kept::int) from read_parquet('{glob}')").fetchall()
    assert rows == [(2, 1)]


def test_failed_part_write_leaves_no_file(tmp_path, monkeypatch) -> None:
    def crash(table, where, **kwargs):
        with open(where, "wb") as handle:  # half a file under the temporary name, then die
            handle.write(b"PAR1 partial")
        raise OSError("disk full")

    monkeypatch.setattr(mf.pq, "write_table", crash)
    writer = ManifestWriter(tmp_path)
    writer.add(_batch(["a__to-b__v0"]))
    with pytest.raises(OSError, match="disk full"):
        writer.flush()
    assert list((tmp_path / "manifest").iterdir()) == []
    assert read_manifest(tmp_path).empty and finished_sample_ids(tmp_path) == set()


def test_leftover_temp_files_are_ignored_and_cleaned(tmp_path) -> None:
    with ManifestWriter(tmp_path) as writer:
        writer.add(_batch(["a__to-b__v0"]))
    # what a killed run leaves behind: hidden temporary part and PNG
    (tmp_path / "manifest" / ".part-x.parquet.123.tmp").write_bytes(b"PAR1 half")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / ".a.png.1.tmp").write_bytes(b"\x89PNG half")
    assert len(read_manifest(tmp_path)) == 1
    assert len(pd.read_parquet(tmp_path / "manifest")) == 1
    assert remove_stale_temp_files(tmp_path) == 2
    assert [p.name for p in (tmp_path / "manifest").iterdir()] == [p.name for p in writer.parts]
    assert pq.read_table(writer.parts[0]).num_rows == 1
