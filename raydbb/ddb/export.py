"""``raydbb export``: a run's balanced training set in layouts other training stacks read directly.

The rows are what ``raydbb retrain`` trains on: the original training split plus the repaints
:func:`raydbb.ddb.retrain.run.choose_repaints` picks for the config (the same rule source,
thresholds and per-class shares), each with its label, its group where the dataset knows it
(originals; repaints are ``unknown``, as in retraining), its lineage (``source_id``,
``source_label``, the file it came from) and its weight in the retraining loss: 1 for originals,
λ of the target class for repaints.

Layouts (``DEST`` = ``OUT/export/<format>`` unless given)::

    imagefolder   DEST/<class>/<file>                 torchvision.datasets.ImageFolder(DEST)
                  DEST/rows.csv                       one row per image (file_name relative to DEST)
    csv           DEST/train/<file>                   Hugging Face "imagefolder":
                  DEST/train/metadata.csv             load_dataset("imagefolder", data_dir=DEST)
    webdataset    DEST/shard-<n>.tar                  <key>.<ext> image, <key>.cls label, <key>.json row
                  DEST/rows.csv                       shard and key of every row

and ``DEST/export.json`` (counts per class, λ, the config it was read with). The export is built
in a hidden sibling folder and renamed into place when complete, so ``DEST`` never holds half an
export; a non-empty ``DEST`` is replaced only with ``overwrite``. Images are copied, or hard-linked
with ``link=True`` where the filesystem allows it (copied otherwise; the summary counts both).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raydbb.config import RaydbbConfig, load_config
from raydbb.errors import ConfigError, DataError
from raydbb.ids import sanitize_id
from raydbb.rundir import CONFIG_FILE, RunDir
from raydbb.storage import build_folder

FORMATS = ("imagefolder", "webdataset", "csv")
ORIGINAL, REPAINT = "original", "repaint"
ROW_FIELDS = ("sample_id", "label", "label_name", "group", "group_name", "kind", "source_id",
              "source_label", "weight", "origin")
"""Columns of every exported row besides ``file_name`` (``origin``: the file it was copied from)."""


def run_config(run: str | Path, config: str | Path | None = None,
               overrides: list[str] | None = None) -> tuple[RaydbbConfig, str]:
    """The config an export of run folder ``run`` reads, and where it came from.

    ``config`` when given; else the one the run's DDB model was retrained with
    (``OUT/ddb/retrain_config.yaml``), else ``OUT/config.yaml`` (pipeline runs), else
    ``OUT/generate_config.yaml``. ``overrides`` apply on top.
    """
    from raydbb.ddb.retrain.run import CONFIG_FILE as RETRAIN_CONFIG

    rundir = RunDir(run)
    candidates = [Path(config)] if config is not None else [
        rundir.ddb / RETRAIN_CONFIG, rundir.root / CONFIG_FILE, rundir.generate_config]
    for path in candidates:
        if config is not None or path.is_file():
            return load_config(path, overrides), str(path)
    raise ConfigError(f"--run {run}: no config found ({', '.join(str(p) for p in candidates)}); "
                      "pass --config FILE")


def export_rows(cfg: RaydbbConfig, run: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The balanced training set of ``run`` under ``cfg``: one row per image (:data:`ROW_FIELDS`,
    ``path`` = absolute file), originals first; and facts for ``export.json``."""
    from raydbb.data.registry import load_records
    from raydbb.ddb.retrain.repaints import repaint_counts
    from raydbb.ddb.retrain.run import choose_repaints, describe_inputs

    records = load_records(cfg.data)
    inputs = choose_repaints(cfg, records, manifest_dir=run)
    names = list(records.class_names)
    train = records.split("train")
    repaints = inputs.repaint_rows()
    rep_labels = repaints["target_label"].to_numpy(dtype=np.int64)
    frame = pd.DataFrame({
        "sample_id": [*train["sample_id"].astype(str), *repaints["sample_id"].astype(str)],
        "label": np.concatenate([train["label"].to_numpy(dtype=np.int64), rep_labels]),
        "group": np.concatenate([train["group"].to_numpy(dtype=np.int64), np.full(len(repaints), -1)]),
        "kind": [ORIGINAL] * len(train) + [REPAINT] * len(repaints),
        "source_id": [*train["sample_id"].astype(str), *repaints["source_id"].astype(str)],
        "source_label": np.concatenate([train["label"].to_numpy(dtype=np.int64),
                                        repaints["source_label"].to_numpy(dtype=np.int64)]),
        "weight": np.concatenate([np.ones(len(train)), inputs.lambdas[rep_labels]]),
        "path": [*train["path"].astype(str), *repaints["image_path"].astype(str)],
    })
    if frame["sample_id"].duplicated().any():
        dup = frame.loc[frame["sample_id"].duplicated(), "sample_id"].iloc[0]
        raise DataError(f"repaint sample_id {dup!r} is also a training image id; expected distinct ids")
    frame.insert(2, "label_name", [names[i] for i in frame["label"]])
    frame.insert(4, "group_name", [records.group_name(int(g)) for g in frame["group"]])
    frame["origin"] = frame["path"]
    missing = [p for p in frame["path"] if not Path(p).is_file()]
    if missing:
        raise DataError(f"{len(missing)} images of the training set are missing, e.g. {missing[0]}")
    facts = {
        "dataset": records.name, "data_root": str(cfg.data.root), "class_names": names,
        "group_names": records.group_names(), "manifest": str(inputs.manifest_dir),
        "originals": repaint_counts(train["label"], names), "repaints": repaint_counts(rep_labels, names),
        "lambdas": dict(zip(names, inputs.lambdas.tolist(), strict=True)),
        "selection": describe_inputs(inputs),
        "weight": "1 for originals; for a repaint, lambda of its label: raydbb's loss is "
                  "CE(originals in the batch) + sum_c lambda_c * CE(repaints labelled c in the batch), "
                  "each CE a mean over its subset",
    }
    return frame, facts


def file_name(sample_id: str, path: str) -> str:
    """The exported file name of one image: its sanitised id and the source file's extension."""
    suffix = Path(path).suffix.lower() or ".png"
    return f"{sanitize_id(sample_id)}{suffix}"


def wds_key(sample_id: str) -> str:
    """A WebDataset key (no dots: readers split a member name at its first dot) for one sample."""
    key = sanitize_id(sample_id)
    if "." in key:
        key = f"{key.replace('.', '_')}-{hashlib.sha1(sample_id.encode()).hexdigest()[:8]}"
    return key


def class_dir(name: str) -> str:
    return sanitize_id(name)


class _Placer:
    """Copies or hard-links images into the export; counts which."""

    def __init__(self, link: bool) -> None:
        self.link = link
        self.linked = 0
        self.copied = 0

    def place(self, src: str, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if self.link:
            try:
                os.link(src, dst)
                self.linked += 1
                return
            except OSError:  # another filesystem, or no hard links there: copy instead
                pass
        shutil.copyfile(src, dst)
        self.copied += 1


def _csv(frame: pd.DataFrame, path: Path, columns: list[str]) -> None:
    frame.loc[:, columns].to_csv(path, index=False)


def _file_names(frame: pd.DataFrame) -> list[str]:
    return [file_name(s, p) for s, p in zip(frame["sample_id"], frame["path"], strict=True)]


def _write_imagefolder(frame: pd.DataFrame, dest: Path, placer: _Placer) -> pd.DataFrame:
    frame = frame.assign(file_name=[f"{class_dir(n)}/{f}" for n, f in
                                    zip(frame["label_name"], _file_names(frame), strict=True)])
    for src, rel in zip(frame["path"], frame["file_name"], strict=True):
        placer.place(src, dest / rel)
    _csv(frame, dest / "rows.csv", ["file_name", *ROW_FIELDS])
    return frame


def _write_hf(frame: pd.DataFrame, dest: Path, placer: _Placer) -> pd.DataFrame:
    frame = frame.assign(file_name=_file_names(frame))
    for src, rel in zip(frame["path"], frame["file_name"], strict=True):
        placer.place(src, dest / "train" / rel)
    _csv(frame, dest / "train" / "metadata.csv", ["file_name", *ROW_FIELDS])
    return frame


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _write_webdataset(frame: pd.DataFrame, dest: Path, shard_size: int) -> pd.DataFrame:
    keys = [wds_key(s) for s in frame["sample_id"]]
    shards = [f"shard-{i // shard_size:06d}.tar" for i in range(len(frame))]
    frame = frame.assign(key=keys, shard=shards)
    rows = frame.loc[:, list(ROW_FIELDS)].to_dict("records")
    tar = None
    try:
        for i, (row, key, shard, src) in enumerate(zip(rows, keys, shards, frame["path"], strict=True)):
            if i % shard_size == 0:
                if tar is not None:
                    tar.close()
                tar = tarfile.open(dest / shard, "w", format=tarfile.PAX_FORMAT)
            ext = (Path(src).suffix.lower() or ".png").lstrip(".")
            _tar_add(tar, f"{key}.{ext}", Path(src).read_bytes())
            _tar_add(tar, f"{key}.cls", str(int(row["label"])).encode())
            _tar_add(tar, f"{key}.json", json.dumps({k: _plain(v) for k, v in row.items()}).encode())
    finally:
        if tar is not None:
            tar.close()
    _csv(frame, dest / "rows.csv", ["shard", "key", *ROW_FIELDS])
    return frame


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def default_dest(run: str | Path, fmt: str) -> Path:
    return RunDir(run).export / fmt


def _check_dest(dest: Path, overwrite: bool) -> None:
    if dest.is_file():
        raise ConfigError(f"--dest {dest} is a file; expected a folder")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise ConfigError(f"{dest} is not empty; pass --overwrite to replace it, or --dest DIR")


def export_run(run: str | Path, fmt: str, cfg: RaydbbConfig, dest: str | Path | None = None,
               overwrite: bool = False, link: bool = False, shard_size: int = 1000,
               config_source: str = "") -> dict[str, Any]:
    """Write the balanced training set of run folder ``run`` as ``fmt`` into ``dest``; the summary.

    See the module docstring for the layouts. Nothing is written when a check fails.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if shard_size < 1:
        raise ConfigError(f"--shard-size {shard_size}: expected an integer >= 1")
    dest = Path(dest) if dest is not None else default_dest(run, fmt)
    _check_dest(dest, overwrite)
    frame, facts = export_rows(cfg, run)
    placer = _Placer(link)
    with build_folder(dest) as tmp:
        if fmt == "imagefolder":
            _write_imagefolder(frame, tmp, placer)
        elif fmt == "csv":
            _write_hf(frame, tmp, placer)
        else:
            _write_webdataset(frame, tmp, shard_size)
        summary = {
            "format": fmt, "dest": str(dest), "run": str(run), "config": config_source,
            "rows": len(frame), "images": _how(fmt, placer), "linked": placer.linked,
            "copied": placer.copied, **facts,
        }
        if fmt == "webdataset":
            summary["shards"] = sorted(p.name for p in tmp.glob("shard-*.tar"))
        (tmp / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _how(fmt: str, placer: _Placer) -> str:
    if fmt == "webdataset":
        return "packed into tar shards"
    if placer.linked and placer.copied:
        return f"{placer.linked} hard-linked, {placer.copied} copied (another filesystem)"
    return "hard-linked" if placer.linked else "copied"


def format_summary(summary: dict[str, Any]) -> str:
    """A few lines: where, how many per class (originals + repaints), how the images got there."""
    lines = [f"exported the balanced training set of {summary['run']} as {summary['format']} -> "
             f"{summary['dest']}", f"  {summary['selection']}"]
    for name in summary["class_names"]:
        lines.append(f"  {name:<20} originals {summary['originals'][name]:>7}  repaints "
                     f"{summary['repaints'][name]:>7}  (weight λ={summary['lambdas'][name]:g})")
    lines.append(f"  {summary['rows']} images, {summary['images']}; config: {summary['config']}")
    if summary["format"] == "imagefolder" and sorted(summary["class_names"]) != summary["class_names"]:
        lines.append("  note: torchvision's ImageFolder numbers classes alphabetically, not in the "
                     "dataset's label order; rows.csv has raydbb's labels")
    return "\n".join(lines)
