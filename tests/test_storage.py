"""raydbb.storage: local paths, file:// URIs, pyarrow sub-tree and in-memory filesystems."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from raydbb import storage
from raydbb.errors import DataError


def test_local_path_round_trip_creates_parents_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c.bin"
    storage.write_bytes(target, b"\x00\x01payload")
    assert target.read_bytes() == b"\x00\x01payload"
    assert storage.read_bytes(str(target)) == b"\x00\x01payload"
    assert storage.exists(target) and storage.is_file(target) and storage.is_dir(tmp_path / "a")
    assert not storage.is_dir(target)
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["c.bin"]  # no .tmp left


def test_file_uri_addresses_the_same_files_as_the_local_path(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/run/config.yaml"
    storage.write_text(uri, "out: x\n")
    assert (tmp_path / "run" / "config.yaml").read_text() == "out: x\n"
    assert storage.read_text(str(tmp_path / "run" / "config.yaml")) == "out: x\n"
    assert storage.listdir(f"file://{tmp_path}/run") == ["config.yaml"]
    assert storage.local_path(uri) == tmp_path / "run" / "config.yaml"
    assert storage.local_path("s3://bucket/run/config.yaml") is None  # remote: no local path


def test_overwrite_replaces_content_and_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    storage.write_text(target, "old")
    storage.write_text(target, "new")
    assert target.read_text() == "new"
    with pytest.raises(TypeError):
        storage.write_bytes(target, object())  # type: ignore[arg-type]  # fails inside the write
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_listdir_hides_hidden_names_and_refuses_a_missing_folder(tmp_path: Path) -> None:
    for name in ("b.parquet", "a.parquet", ".part.tmp"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    assert storage.listdir(tmp_path) == ["a.parquet", "b.parquet", "sub"]
    assert storage.listdir(tmp_path, include_hidden=True) == [".part.tmp", "a.parquet", "b.parquet", "sub"]
    with pytest.raises(DataError, match=r"missing is not a folder"):
        storage.listdir(tmp_path / "missing")


def test_missing_file_is_a_one_line_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.bin not found; expected a file"):
        storage.read_bytes(f"file://{tmp_path}/nope.bin")


def test_subtree_filesystem_keeps_paths_inside_its_root(tmp_path: Path) -> None:
    storage.makedirs(tmp_path / "bucket")
    fs = pafs.SubTreeFileSystem(str(tmp_path / "bucket"), pafs.LocalFileSystem())
    storage.write_bytes("run/manifest/part-0.parquet", b"PAR1", filesystem=fs)
    assert (tmp_path / "bucket" / "run" / "manifest" / "part-0.parquet").read_bytes() == b"PAR1"
    assert storage.listdir("run/manifest", filesystem=fs) == ["part-0.parquet"]
    assert storage.read_bytes("run/manifest/part-0.parquet", filesystem=fs) == b"PAR1"
    storage.delete("run", filesystem=fs)
    assert not storage.exists("run", filesystem=fs)
    assert not (tmp_path / "bucket" / "run").exists()


def test_in_memory_filesystem_round_trip_and_atomic_move() -> None:
    fs = pafs._MockFileSystem()  # pyarrow's in-memory filesystem (what the mock:// scheme builds)
    storage.write_text("out/.steps/generate.json", '{"done": true}', filesystem=fs)
    assert storage.read_text("out/.steps/generate.json", filesystem=fs) == '{"done": true}'
    assert storage.listdir("out/.steps", filesystem=fs, include_hidden=True) == ["generate.json"]
    assert storage.is_dir("out", filesystem=fs)
    storage.delete("out/.steps/generate.json", filesystem=fs)
    assert not storage.exists("out/.steps/generate.json", filesystem=fs)
    storage.delete("out/never-written", filesystem=fs)  # missing: not an error


def test_uri_detection_join_and_resolution(tmp_path: Path) -> None:
    assert storage.is_uri("s3://bucket/key") and storage.is_uri("gs://b/k") and storage.is_uri("file:///x")
    assert not storage.is_uri("C:\\data") and not storage.is_uri("runs/demo") and not storage.is_uri(tmp_path)
    assert storage.join("s3://bucket/runs/", "demo", "manifest") == "s3://bucket/runs/demo/manifest"
    assert storage.join(tmp_path, "a", "b.png") == str(tmp_path / "a" / "b.png")
    with pytest.raises(DataError, match=r"must be relative"):
        storage.join("gs://bucket/run", "../other")
    with pytest.raises(DataError, match=r"must be relative"):
        storage.join(tmp_path, "/etc/passwd")
    res = storage.resolve("gs://bucket/runs/demo")  # no network needed to build the client
    assert (res.filesystem.type_name, res.path) == ("gcs", "bucket/runs/demo")
    local = storage.resolve("~/x")
    assert local.filesystem.type_name == "local" and local.path == str(Path.home() / "x")
    with pytest.raises(DataError, match=r"cannot open nosuchscheme://x"):
        storage.resolve("nosuchscheme://x")


def test_manifest_reads_back_through_a_file_uri(tmp_path: Path) -> None:
    """A run folder addressed as a URI (what a run synced to s3:// or gs:// looks like)."""
    import numpy as np

    from raydbb.engine.manifest import ManifestWriter, finished_sample_ids, manifest_columns, read_manifest

    ids = [f"s{i}" for i in range(5)]
    rows = manifest_columns({
        "sample_id": np.array(ids, dtype=object),
        "image_path": np.array([f"images/{i}.png" for i in ids[:4]] + [""], dtype=object),
        "kept": np.array([True, False, True, False, False]),
    })
    with ManifestWriter(tmp_path, rows_per_part=2) as writer:
        for lo in (0, 2, 4):
            writer.add({k: v[lo:lo + 2] for k, v in rows.items()})
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "s0.png").write_bytes(b"png bytes")
    (tmp_path / "manifest" / ".part-x.parquet.tmp").write_bytes(b"half")  # a killed writer's leftover

    uri = f"file://{tmp_path}"
    remote, local = read_manifest(uri), read_manifest(tmp_path)
    assert len(remote) == 5 and len(writer.parts) == 3
    cols = [c for c in remote.columns if c not in ("image_path", "mask_path")]
    assert remote[cols].equals(local[cols])
    assert list(remote["image_path"]) == [f"{uri}/images/{i}.png" for i in ids[:4]] + [""]
    assert storage.read_bytes(remote["image_path"][0]) == b"png bytes"
    assert finished_sample_ids(uri) == set(ids) == finished_sample_ids(tmp_path)
    assert read_manifest(f"file://{tmp_path}/no-run-here").empty


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_outputs_follow_the_umask(tmp_path, umask):
    import numpy as np

    from raydbb.data.images import write_png_atomic
    from raydbb.engine.manifest import SCHEMA, write_part_atomic

    old = os.umask(umask)
    try:
        png = write_png_atomic(tmp_path / "a.png", np.zeros((2, 2), dtype=bool))
        part = write_part_atomic(tmp_path / "p.parquet", SCHEMA.empty_table())
    finally:
        os.umask(old)
    for path in (png, part):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_build_folder_replaces_the_destination_only_when_the_block_succeeds(tmp_path) -> None:
    from raydbb.storage import build_folder

    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="half way"), build_folder(dest) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("half way")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # old folder intact, nothing left over
    assert (dest / "old.txt").read_text() == "old"
    with build_folder(dest) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.")
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in dest.iterdir()] == ["new.txt"]
