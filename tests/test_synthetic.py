"""The synthetic benchmark: exact group counts, byte-for-byte determinism, pixel-exact masks,
the generic CSV layout read back by the registry, and safe (re)writes."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import raydbb.data.synthetic as synthetic
from raydbb.config import DataConfig
from raydbb.data.registry import load_records
from raydbb.data.synthetic import group_counts, render_sample, write_synthetic
from raydbb.errors import DataError

SMALL = {"seed": 3, "train_correlation": 0.9, "n_train": 40, "n_val": 10, "n_test": 12, "size": 32,
         "progress": False}
# Hand-computed for SMALL: train has round(40 * 0.75) = 30 landbirds (27 = 30 * 0.9 on land) and
# 10 waterbirds (9 on water); val 10 = 3 + 3 + 2 + 2 (remainder to the first groups); test 12 = 4 x 3.
EXPECTED = {
    "train": {"landbird/land": 27, "landbird/water": 3, "waterbird/land": 1, "waterbird/water": 9},
    "val": {"landbird/land": 3, "landbird/water": 3, "waterbird/land": 2, "waterbird/water": 2},
    "test": {"landbird/land": 3, "landbird/water": 3, "waterbird/land": 3, "waterbird/water": 3},
}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("syn") / "data", **SMALL)


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "metadata.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_group_counts_hand_computed() -> None:
    # Defaults: 3000 train -> 2250 landbirds (2137.5 -> 2138 on land), 750 waterbirds (712.5 -> 713 on water).
    assert group_counts("train", 3000, 0.95) == {(0, 0): 2138, (0, 1): 112, (1, 0): 37, (1, 1): 713}
    assert group_counts("train", 40, 0.9) == {(0, 0): 27, (0, 1): 3, (1, 0): 1, (1, 1): 9}
    assert group_counts("train", 40, 0.5, landbird_fraction=0.5) == {(0, 0): 10, (0, 1): 10, (1, 0): 10,
                                                                     (1, 1): 10}
    assert group_counts("val", 10) == {(0, 0): 3, (0, 1): 3, (1, 0): 2, (1, 1): 2}
    assert group_counts("test", 1200) == {(0, 0): 300, (0, 1): 300, (1, 0): 300, (1, 1): 300}
    with pytest.raises(DataError, match="unknown split 'dev'"):
        group_counts("dev", 10)


def test_layout_and_group_counts(small: Path) -> None:
    assert json.loads((small / "classes.json").read_text()) == {
        "class_names": ["landbird", "waterbird"], "spurious_names": ["land", "water"]}
    rows = _rows(small)
    assert list(rows[0]) == ["path", "label", "spurious", "split", "mask"]
    counts = Counter((r["split"], f"{r['label']}/{r['spurious']}") for r in rows)
    assert {s: {g: counts[(s, g)] for g in EXPECTED[s]} for s in EXPECTED} == EXPECTED
    assert len(rows) == 62
    for r in rows:
        assert not Path(r["path"]).is_absolute() and (small / r["path"]).is_file()
        assert _png(small / r["path"]).shape == (32, 32, 3)
        assert set(np.unique(_png(small / r["mask"]))) == {0, 255}
    assert not list(small.parent.glob(".data.partial-*"))  # temporary folder renamed away


def test_readable_by_the_registry(small: Path) -> None:
    rec = load_records(DataConfig(name="synthetic", root=str(small)))
    assert rec.class_names == ["landbird", "waterbird"]
    assert rec.spurious_names == ["land", "water"]
    assert rec.split_group_counts() == EXPECTED
    assert all(Path(m).is_file() for m in rec.frame["mask"])


def test_same_seed_same_bytes_other_seed_other_images(small: Path, tmp_path: Path) -> None:
    again = write_synthetic(tmp_path / "again", **SMALL)
    assert (again / "metadata.csv").read_bytes() == (small / "metadata.csv").read_bytes()
    names = sorted(p.name for p in (small / "images").iterdir())
    assert names == sorted(p.name for p in (again / "images").iterdir())
    for name in names:
        for sub in ("images", "masks"):
            assert (again / sub / name).read_bytes() == (small / sub / name).read_bytes(), f"{sub}/{name}"

    other = write_synthetic(tmp_path / "other", **{**SMALL, "seed": 4})
    differ = [n for n in names if (other / "images" / n).read_bytes() != (small / "images" / n).read_bytes()]
    assert differ == names
    assert (other / "metadata.csv").read_bytes() != (small / "metadata.csv").read_bytes()


def test_val_and_test_images_do_not_depend_on_train_size(small: Path, tmp_path: Path) -> None:
    # Each sample has its own stream keyed by (seed, split, index): growing train changes nothing else.
    bigger = write_synthetic(tmp_path / "bigger", **{**SMALL, "n_train": 44})
    for name in ("val_00000.png", "test_00005.png"):
        assert (bigger / "images" / name).read_bytes() == (small / "images" / name).read_bytes()


def test_masks_are_pixel_exact(small: Path) -> None:
    for r in _rows(small):
        split, index = r["split"], int(r["path"][-9:-4])
        label, spurious = ["landbird", "waterbird"].index(r["label"]), ["land", "water"].index(r["spurious"])
        sample = render_sample(SMALL["seed"], split, index, label, spurious, SMALL["size"])
        image, mask = _png(small / r["path"]), _png(small / r["mask"]) > 0
        np.testing.assert_array_equal(image, sample.image)
        np.testing.assert_array_equal(mask, sample.mask)
        # The mask is exactly where the image differs from the pure background.
        np.testing.assert_array_equal(mask, (image != sample.background).any(axis=-1))


def test_birds_are_whole_and_sized_at_64px() -> None:
    for index in range(40):
        sample = render_sample(0, "train", index, index % 2, (index // 2) % 2, 64)
        m = sample.mask
        assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()), index
        assert 0.02 < m.mean() < 0.3, (index, m.mean())
        np.testing.assert_array_equal(m, (sample.image != sample.background).any(axis=-1))


def test_counterfactual_streams() -> None:
    land = render_sample(0, "test", 7, 0, 0)
    other_bird = render_sample(0, "test", 7, 1, 0)
    other_place = render_sample(0, "test", 7, 0, 1)
    # Other label: same background, a different bird.
    np.testing.assert_array_equal(other_bird.background, land.background)
    assert not np.array_equal(other_bird.mask, land.mask)
    # Other background family: the same bird, pixel for pixel.
    np.testing.assert_array_equal(other_place.mask, land.mask)
    np.testing.assert_array_equal(other_place.image[land.mask], land.image[land.mask])
    assert (other_place.background != land.background).any(axis=-1).mean() > 0.9


def test_rerun_is_a_noop_and_conflicts_fail(small: Path, tmp_path: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in small.rglob("*")}
    assert write_synthetic(small, **SMALL) == small
    assert {p: p.stat().st_mtime_ns for p in small.rglob("*")} == before

    with pytest.raises(DataError, match="exists and is not a synthetic benchmark with these parameters"):
        write_synthetic(small, **{**SMALL, "train_correlation": 0.8})
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="exists and is not a synthetic benchmark"):
        write_synthetic(foreign, **SMALL)
    assert (foreign / "notes.txt").read_text() == "mine"
    # An existing empty folder is filled.
    (tmp_path / "empty").mkdir()
    assert (write_synthetic(tmp_path / "empty", **SMALL) / "metadata.csv").is_file()


def test_crash_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = synthetic.render_sample, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_sample", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        write_synthetic(tmp_path / "data", **SMALL)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synthetic, "render_sample", real)
    assert (write_synthetic(tmp_path / "data", **SMALL) / "metadata.csv").is_file()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"train_correlation": 1.5}, r"train_correlation=1.5: expected a value in \[0, 1\]"),
        ({"size": 16}, r"size=16: expected an integer >= 32"),
        ({"n_val": -1}, r"n_val=-1: expected an integer >= 0"),
        ({"seed": -2}, r"seed=-2: expected an integer >= 0"),
        ({"n_train": 0, "n_val": 0, "n_test": 0}, r"all 0"),
    ],
)
def test_bad_parameters(tmp_path: Path, override: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        write_synthetic(tmp_path / "data", **{**SMALL, **override})
    assert not (tmp_path / "data").exists()
