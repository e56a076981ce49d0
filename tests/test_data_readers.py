"""Dataset readers against folders built from scratch in each real format, good and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from data_fixtures import (
    CELEBA_EXPECTED,
    WB_EXPECTED,
    make_celeba_csv,
    make_celeba_official,
    make_metashift,
    make_waterbirds,
    write_image,
)
from PIL import Image

from raydbb.config import DataConfig
from raydbb.data.celeba import read_celeba
from raydbb.data.generic_csv import read_generic_csv
from raydbb.data.images import read_image, read_mask, write_png_atomic
from raydbb.data.metashift import read_metashift
from raydbb.data.registry import load_records
from raydbb.data.torch_dataset import ImageRecords
from raydbb.data.waterbirds import read_waterbirds
from raydbb.errors import DataError

SAFE_ID = re.compile(r"^[A-Za-z0-9._-]+$")


# ---------------------------------------------------------------------------------------- Waterbirds
def test_waterbirds_counts_ids_and_paths(tmp_path):
    meta = make_waterbirds(tmp_path)
    rec = read_waterbirds(tmp_path)
    assert rec.class_names == ["landbird", "waterbird"]
    assert rec.spurious_names == ["land", "water"]
    assert rec.split_group_counts() == WB_EXPECTED
    first = rec.frame.iloc[0]
    assert first["path"] == str(tmp_path / meta["img_filename"][0])
    assert first["group"] == 2 * first["label"] + first["spurious"]
    assert rec.frame["mask"].isna().all()
    assert all(SAFE_ID.match(s) for s in rec.frame["sample_id"])
    # Stable: derived from the file name only, so a re-read (or another machine) gives the same ids.
    assert rec.frame["sample_id"].tolist() == read_waterbirds(tmp_path).frame["sample_id"].tolist()
    assert first["sample_id"].startswith("045.Northern_Fulmar_Bird_000_0000-")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.drop(columns=["place"]), r"missing column 'place'"),
        (lambda m: m.assign(split=m["split"].replace({2: 3})), r"unknown split value '3' \(row \d+\)"),
        (lambda m: m.assign(y=m["y"].replace({1: 2})), r"column 'y' has value '2'.*0=landbird, 1=waterbird"),
        (lambda m: m.assign(place=m["place"].replace({1: "ocean"})), r"column 'place' has value 'ocean'"),
    ],
)
def test_waterbirds_bad_metadata(tmp_path, edit, message):
    meta = make_waterbirds(tmp_path)
    edit(meta).to_csv(tmp_path / "metadata.csv", index=False)
    with pytest.raises(DataError, match=message):
        read_waterbirds(tmp_path)


def test_waterbirds_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"dataset root .*nowhere is not a folder"):
        read_waterbirds(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"missing .*metadata.csv"):
        read_waterbirds(tmp_path)
    meta = make_waterbirds(tmp_path)
    (tmp_path / meta["img_filename"][3]).unlink()
    with pytest.raises(DataError, match=r"image .*Bird_000_0003.jpg not found \(1 missing in total\)"):
        read_waterbirds(tmp_path)


# -------------------------------------------------------------------------------------------- CelebA
@pytest.mark.parametrize("make", [make_celeba_official, make_celeba_csv])
def test_celeba_both_layouts(tmp_path, make):
    make(tmp_path)
    rec = read_celeba(tmp_path)
    assert rec.class_names == ["not_blond", "blond"]
    assert rec.spurious_names == ["female", "male"]
    assert rec.split_group_counts() == CELEBA_EXPECTED
    assert rec.frame["sample_id"].iloc[0] == "000001"
    assert rec.frame["path"].iloc[0] == str(tmp_path / "img_align_celeba" / "000001.jpg")


def test_celeba_balanced_train_is_balanced_and_seeded(tmp_path):
    make_celeba_official(tmp_path)
    cfg = DataConfig(name="celeba", root=str(tmp_path), balanced_train=True, split_seed=3)
    rec = load_records(cfg)
    train = rec.split("train")
    # 7 not-blond vs 2 blond in train -> 2 of each; val/test untouched.
    assert train["label"].value_counts().to_dict() == {0: 2, 1: 2}
    counts = rec.split_group_counts()
    assert counts["val"] == CELEBA_EXPECTED["val"] and counts["test"] == CELEBA_EXPECTED["test"]
    again = load_records(cfg).split("train")
    assert train["sample_id"].tolist() == again["sample_id"].tolist()
    drawn = {tuple(load_records(cfg.model_copy(update={"split_seed": s})).split("train")["sample_id"])
             for s in range(8)}
    assert len(drawn) > 1  # the seed really picks the subsample


def test_celeba_bad_input(tmp_path):
    with pytest.raises(DataError, match=r"neither list_attr_celeba.txt \+ list_eval_partition.txt nor"):
        read_celeba(tmp_path)
    make_celeba_official(tmp_path)
    attr = tmp_path / "list_attr_celeba.txt"
    good = attr.read_text()
    attr.write_text(good.replace("Blond_Hair", "Blond"))
    with pytest.raises(DataError, match=r"missing column 'Blond_Hair'"):
        read_celeba(tmp_path)
    lines = good.splitlines()
    lines[2] = lines[2].replace("000001.jpg -1 -1", "000001.jpg -1  2")
    attr.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"column 'Blond_Hair' has value '2' \(row 1\); expected -1/1 or 0/1"):
        read_celeba(tmp_path)
    attr.write_text(good)
    part = tmp_path / "list_eval_partition.txt"
    part.write_text(part.read_text().replace("000002.jpg 0", "000002.jpg 7"))
    with pytest.raises(DataError, match=r"unknown split value '7' \(row 2\)"):
        read_celeba(tmp_path)
    part.write_text("".join(line + "\n" for line in part.read_text().splitlines()[1:]))
    with pytest.raises(DataError, match=r"no partition for image 000001.jpg"):
        read_celeba(tmp_path)
    part.unlink()
    with pytest.raises(DataError, match=r"missing .*list_eval_partition.txt"):
        read_celeba(tmp_path)


# ----------------------------------------------------------------------------------------- MetaShift
def test_metashift_groups_and_seeded_val(tmp_path):
    make_metashift(tmp_path)
    rec = read_metashift(tmp_path, val_fraction=0.15, split_seed=0)
    assert rec.class_names == ["cat", "dog"]
    assert rec.spurious_names == ["indoor", "outdoor", "shelf"]
    zero = dict.fromkeys(rec.group_names(), 0)
    # val = round(15 %) of each test folder: 3 of 20 cats, 6 of 40 dogs; dog(cabinet) is not read.
    assert rec.split_group_counts() == {
        "train": {**zero, "cat/indoor": 5, "dog/outdoor": 5},
        "val": {**zero, "cat/shelf": 3, "dog/shelf": 6},
        "test": {**zero, "cat/shelf": 17, "dog/shelf": 34},
    }
    assert not rec.frame["path"].str.contains("cabinet|DS_Store").any()
    val_ids = rec.split("val")["sample_id"].tolist()
    assert read_metashift(tmp_path, 0.15, 0).split("val")["sample_id"].tolist() == val_ids
    assert read_metashift(tmp_path, 0.15, 1).split("val")["sample_id"].tolist() != val_ids
    wider = load_records(DataConfig(name="metashift", root=str(tmp_path), val_fraction=0.5))
    assert len(wider.split("val")) == 30


def test_metashift_bad_layout(tmp_path):
    make_metashift(tmp_path)
    for f in (tmp_path / "train/dog/dog(bike)").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"no images in .*dog\(bike\)"):
        read_metashift(tmp_path)
    (tmp_path / "train/dog/dog(bike)").rmdir()
    with pytest.raises(DataError, match=r"missing .*train/dog/dog\(bike\)"):
        read_metashift(tmp_path)


# --------------------------------------------------------------------------------------- Generic CSV
def make_csv(root: Path, rows: list[dict], classes: dict | None = None) -> None:
    for row in rows:
        write_image(root / row["path"])
        if row.get("mask"):
            write_image(root / row["mask"], value=255)
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    if classes is not None:
        (root / "classes.json").write_text(json.dumps(classes))


CSV_ROWS = [
    {"path": "img/a.png", "label": "dog", "spurious": "grass", "split": "train", "mask": "m/a.png"},
    {"path": "img/b.png", "label": "cat", "spurious": "grass", "split": "train", "mask": ""},
    {"path": "img/c.png", "label": "cat", "spurious": "indoor", "split": "0", "mask": ""},
    {"path": "img/d.png", "label": "1", "spurious": "", "split": "val", "mask": "m/d.png"},
    {"path": "img/e.png", "label": "dog", "spurious": "indoor", "split": "2", "mask": ""},
]


def test_generic_csv_names_ints_masks_and_sidecar(tmp_path):
    make_csv(tmp_path, CSV_ROWS, {"class_names": ["cat", "dog"], "spurious_names": ["indoor", "grass"]})
    rec = read_generic_csv(tmp_path)
    assert rec.class_names == ["cat", "dog"] and rec.spurious_names == ["indoor", "grass"]
    assert rec.frame["label"].tolist() == [1, 0, 0, 1, 1]
    assert rec.frame["spurious"].tolist() == [1, 1, 0, -1, 0]
    assert rec.frame["group"].tolist() == [3, 1, 0, -1, 2]
    assert rec.frame["split"].tolist() == ["train", "train", "train", "val", "test"]
    masks = [str(tmp_path / "m/a.png"), None, None, str(tmp_path / "m/d.png"), None]
    assert rec.frame["mask"].tolist() == masks
    assert rec.split_group_counts() == {
        "train": {"cat/indoor": 1, "cat/grass": 1, "dog/indoor": 0, "dog/grass": 1},
        "val": {"cat/indoor": 0, "cat/grass": 0, "dog/indoor": 0, "dog/grass": 0, "unknown": 1},
        "test": {"cat/indoor": 0, "cat/grass": 0, "dog/indoor": 1, "dog/grass": 0},
    }
    # Config names win over the sidecar (and reorder the codes).
    rec2 = load_records(DataConfig(name="csv", root=str(tmp_path), class_names=["dog", "cat"]))
    assert rec2.frame["label"].tolist()[:3] == [0, 1, 1]


def test_generic_csv_inferred_names_and_default_split(tmp_path):
    rows = [{"path": f"x/{i}.png", "label": lab} for i, lab in enumerate(["zebra", "ant", "zebra"])]
    make_csv(tmp_path, rows)
    rec = read_generic_csv(tmp_path)
    assert rec.class_names == ["ant", "zebra"]
    assert rec.spurious_names == [] and rec.frame["group"].tolist() == [-1, -1, -1]
    assert rec.frame["split"].tolist() == ["train"] * 3
    assert rec.split_group_counts() == {"train": {"unknown": 3}}
    make_csv(tmp_path, [{"path": f"x/{i}.png", "label": lab} for i, lab in enumerate([0, 2, 2])])
    assert read_generic_csv(tmp_path).class_names == ["class_0", "class_1", "class_2"]


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("label", "bird", r"label 'bird' in row 1 is not one of \['cat', 'dog'\] \(or an index 0..1\)"),
        ("label", "2", r"label '2' in row 1 is not one of"),
        ("spurious", "sky", r"spurious 'sky' in row 1 is not one of \['indoor', 'grass'\]"),
        ("split", "holdout", r"unknown split value 'holdout' \(row 1\); expected one of"),
        ("label", "", r"column 'label' is empty in row 1"),
    ],
)
def test_generic_csv_bad_values(tmp_path, column, value, message):
    rows = [dict(r) for r in CSV_ROWS]
    make_csv(tmp_path, rows, {"class_names": ["cat", "dog"], "spurious_names": ["indoor", "grass"]})
    rows[0][column] = value
    pd.DataFrame(rows).to_csv(tmp_path / "metadata.csv", index=False)
    with pytest.raises(DataError, match=message):
        read_generic_csv(tmp_path)


def test_generic_csv_missing_things(tmp_path):
    with pytest.raises(DataError, match=r"missing .*metadata.csv"):
        read_generic_csv(tmp_path)
    make_csv(tmp_path, CSV_ROWS, {"class_names": ["cat", "dog"]})
    pd.DataFrame(CSV_ROWS).drop(columns=["label"]).to_csv(tmp_path / "metadata.csv", index=False)
    with pytest.raises(DataError, match=r"missing column 'label'; found \['path', 'spurious'"):
        read_generic_csv(tmp_path)
    pd.DataFrame(CSV_ROWS).to_csv(tmp_path / "metadata.csv", index=False)
    (tmp_path / "m/d.png").unlink()
    with pytest.raises(DataError, match=r"mask .*m/d.png not found"):
        read_generic_csv(tmp_path)
    (tmp_path / "img/c.png").unlink()
    with pytest.raises(DataError, match=r"image .*img/c.png not found"):
        read_generic_csv(tmp_path)
    (tmp_path / "classes.json").unlink()
    mixed = [{"path": "img/a.png", "label": "cat"}, {"path": "img/b.png", "label": "1"}]
    pd.DataFrame(mixed).to_csv(tmp_path / "metadata.csv", index=False)
    with pytest.raises(DataError, match=r"column 'label' mixes names and integers"):
        read_generic_csv(tmp_path)
    dup = [{"path": "img/a.png", "label": "cat"}, {"path": "img/a.png", "label": "cat"}]
    pd.DataFrame(dup).to_csv(tmp_path / "metadata.csv", index=False)
    with pytest.raises(DataError, match=r"duplicate sample_id 'img_a-"):
        read_generic_csv(tmp_path)


# ------------------------------------------------------------------------------ Images, torch dataset
def test_read_image_converts_and_fails_cleanly(tmp_path):
    Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4), mode="L").save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.dtype == np.uint8 and img.shape == (3, 4, 3)
    assert (img[..., 0] == np.arange(12).reshape(3, 4)).all()
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(DataError, match=r"image .*bad.jpg could not be decoded"):
        read_image(tmp_path / "bad.jpg")
    with pytest.raises(DataError, match=r"image .*none.png not found"):
        read_image(tmp_path / "none.png")


def test_read_mask_modes(tmp_path):
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[1, 2, 1] = 7
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert np.argwhere(read_mask(tmp_path / "rgb.png")).tolist() == [[1, 2]]
    pal = Image.fromarray(np.array([[0, 1], [2, 0]], dtype=np.uint8), mode="P")
    pal.putpalette([0, 0, 0] * 3)  # all black colours: only the indices say what is foreground
    pal.save(tmp_path / "pal.png")
    assert read_mask(tmp_path / "pal.png").tolist() == [[False, True], [True, False]]


def test_write_png_atomic_roundtrip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    out = write_png_atomic(tmp_path / "deep/dir/x.png", arr)
    assert (read_image(out) == arr).all()
    mask = np.zeros((5, 7), dtype=bool)
    mask[2:4, 1:3] = True
    write_png_atomic(tmp_path / "deep/dir/m.png", mask)
    assert (read_mask(tmp_path / "deep/dir/m.png") == mask).all()
    assert sorted(p.name for p in (tmp_path / "deep/dir").iterdir()) == ["m.png", "x.png"]  # no temp left
    with pytest.raises(DataError, match=r"dtype float64; expected uint8 or bool"):
        write_png_atomic(tmp_path / "f.png", np.zeros((2, 2)))
    assert not (tmp_path / "f.png").exists()


def test_image_records_items(tmp_path):
    make_csv(tmp_path, CSV_ROWS, {"class_names": ["cat", "dog"], "spurious_names": ["indoor", "grass"]})
    frame = read_generic_csv(tmp_path).split("train")
    ds = ImageRecords(frame, transform=lambda a: a.astype(np.float32).mean())
    assert len(ds) == 3
    assert ds[1] == (pytest.approx(100.0), 0, 1, 1)
    image, label, group, index = ImageRecords(frame, transform=None)[2]
    assert image.shape == (6, 8, 3) and image.dtype == np.uint8 and (label, group, index) == (0, 0, 2)
