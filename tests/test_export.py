"""`raydbb export`: the balanced training set of the tiny run as ImageFolder, WebDataset and HF CSV,
read back with the consuming libraries (torchvision; tarfile for WebDataset, and `webdataset` when
installed; pandas for the HF metadata.csv) and compared with the manifest's chosen repaints."""

from __future__ import annotations

import json
import math
import tarfile
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from ddb_run import CLASSES, build_tiny_run

from raydbb.cli import main
from raydbb.config import load_config
from raydbb.data.registry import load_records
from raydbb.ddb.retrain.run import choose_repaints

# keep half of each class's repaints (highest IG first) and weight them per class
OVERRIDES = ["retrain.keep_fraction=0.5", "retrain.lambdas={landbird: 2, waterbird: 5}"]
LAMBDA = {"landbird": 2.0, "waterbird": 5.0}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    run = build_tiny_run(tmp_path_factory.getbasetemp())
    cfg = load_config(run.out / "generate_config.yaml", OVERRIDES)
    records = load_records(cfg.data)
    chosen = choose_repaints(cfg, records, manifest_dir=run.out).repaint_rows()
    originals = Counter(CLASSES[i] for i in records.split("train")["label"])
    repaints = Counter(CLASSES[i] for i in chosen["target_label"])
    return run, originals, repaints, set(chosen["sample_id"])


def export(tmp_path, run, fmt, *extra):
    dest = tmp_path / fmt
    rc = main(["export", "--run", str(run.out), "--format", fmt, "--dest", str(dest), *extra, *OVERRIDES])
    assert rc == 0
    return dest


def test_imagefolder_loads_in_torchvision_with_the_manifest_counts(tiny, tmp_path, capsys):
    from torchvision.datasets import ImageFolder

    run, originals, repaints, chosen = tiny
    assert repaints == {"landbird": 6, "waterbird": 18}  # ceil(0.5 · 12), ceil(0.5 · 36) of the tiny run
    dest = export(tmp_path, run, "imagefolder")
    out = capsys.readouterr().out
    assert "originals" in out and "copied" in out and str(dest) in out

    data = ImageFolder(str(dest))
    assert data.classes == CLASSES  # already alphabetical: ImageFolder's indices are raydbb's labels
    per_class = Counter(data.classes[label] for _, label in data.samples)
    assert per_class == originals + repaints
    image, label = data[len(data) - 1]
    assert image.size == (32, 32) and label in (0, 1)

    rows = pd.read_csv(dest / "rows.csv")
    assert len(rows) == len(data) and set(rows["sample_id"][rows["kind"] == "repaint"]) == chosen
    rep = rows[rows["kind"] == "repaint"]
    assert (rep["weight"] == rep["label_name"].map(LAMBDA)).all() and (rep["group_name"] == "unknown").all()
    orig = rows[rows["kind"] == "original"]
    assert (orig["weight"] == 1).all() and (orig["source_id"] == orig["sample_id"]).all()
    assert set(orig["group_name"]) <= {"landbird/land", "landbird/water", "waterbird/land", "waterbird/water"}
    assert (rep["label"] != rep["source_label"]).all()  # a repaint shows the other class than its source
    # every file sits in the folder of its label
    assert all(f.split("/")[0] == n for f, n in zip(rows["file_name"], rows["label_name"], strict=True))
    facts = json.loads((dest / "export.json").read_text())
    assert facts["repaints"] == dict(repaints) and facts["lambdas"] == LAMBDA
    assert facts["config"].endswith("generate_config.yaml")


def test_webdataset_shards_hold_image_label_and_row_per_sample(tiny, tmp_path):
    run, originals, repaints, chosen = tiny
    dest = export(tmp_path, run, "webdataset", "--shard-size", "50")
    shards = sorted(dest.glob("shard-*.tar"))
    total = sum((originals + repaints).values())
    assert len(shards) == math.ceil(total / 50)
    samples: dict[str, dict[str, bytes]] = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    assert len(samples) == total and all(set(s) == {"png", "cls", "json"} for s in samples.values())
    labels = Counter(CLASSES[int(s["cls"])] for s in samples.values())
    assert labels == originals + repaints
    meta = [json.loads(s["json"]) for s in samples.values()]
    assert {m["sample_id"] for m in meta if m["kind"] == "repaint"} == chosen
    assert all(m["label"] == int(s["cls"]) for m, s in zip(meta, samples.values(), strict=True))
    assert all(s["png"][:4] == b"\x89PNG" for s in samples.values())
    rows = pd.read_csv(dest / "rows.csv")
    assert len(rows) == total and rows["shard"].nunique() == len(shards)


def test_webdataset_reads_with_the_webdataset_package(tiny, tmp_path):
    wds = pytest.importorskip("webdataset")
    run, originals, repaints, _ = tiny
    dest = export(tmp_path, run, "webdataset", "--shard-size", "64")
    urls = [str(p) for p in sorted(dest.glob("shard-*.tar"))]
    labels = Counter(CLASSES[int(s["cls"])] for s in wds.WebDataset(urls, shardshuffle=False))
    assert labels == originals + repaints


def test_csv_is_the_hugging_face_imagefolder_layout(tiny, tmp_path):
    run, originals, repaints, chosen = tiny
    dest = export(tmp_path, run, "csv")
    meta = pd.read_csv(dest / "train" / "metadata.csv")
    assert list(meta.columns[:2]) == ["file_name", "sample_id"]
    assert {"label", "group", "source_id", "weight"} <= set(meta.columns)
    assert Counter(meta["label_name"]) == originals + repaints
    assert all((dest / "train" / f).is_file() for f in meta["file_name"])
    rep = meta[meta["kind"] == "repaint"]
    assert set(rep["sample_id"]) == chosen and np.allclose(rep["weight"], rep["label_name"].map(LAMBDA))


def test_export_refuses_a_non_empty_folder_without_overwrite(tiny, tmp_path, capsys):
    run = tiny[0]
    dest = tmp_path / "imagefolder"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    rc = main(["export", "--run", str(run.out), "--format", "imagefolder", "--dest", str(dest)])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    assert (dest / "mine.txt").read_text() == "keep me"
    export(tmp_path, run, "imagefolder", "--overwrite", "--hardlink")
    assert not (dest / "mine.txt").exists() and (dest / "export.json").is_file()
    assert json.loads((dest / "export.json").read_text())["linked"] > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
