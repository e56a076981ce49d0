"""`raydbb data inspect` / `data synth` through the real CLI entry point."""

from __future__ import annotations

import json

from data_fixtures import CELEBA_EXPECTED, WB_EXPECTED, make_celeba_csv, make_metashift, make_waterbirds

from raydbb.cli import main


def test_inspect_json_counts(tmp_path, capsys):
    make_waterbirds(tmp_path)
    argv = ["data", "inspect", "--dataset", "waterbirds", "--root", str(tmp_path), "--format", "json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["counts"] == WB_EXPECTED
    assert out["totals"] == {"train": 10, "val": 5, "test": 6}
    assert out["class_names"] == ["landbird", "waterbird"] and out["spurious_names"] == ["land", "water"]
    assert out["group_names"] == ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]


def test_inspect_table_and_options(tmp_path, capsys):
    make_celeba_csv(tmp_path)
    assert main(["data", "inspect", "--dataset", "celeba", "--root", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "classes:  not_blond (0), blond (1)" in table
    assert "spurious: female (0), male (1)" in table
    # "train" row for the first group, then the other groups, then the total; shares of the split.
    assert "train  not_blond/female       3   33.3%" in table
    assert "       total                  9" in table
    assert "no samples: blond/male" in table  # empty groups are named, not hidden
    assert main(["data", "inspect", "--dataset", "celeba", "--root", str(tmp_path), "--format", "json",
                 "--balanced-train", "--split-seed", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["totals"]["train"] == 4 and out["counts"]["test"] == CELEBA_EXPECTED["test"]


def test_inspect_metashift_val_fraction(tmp_path, capsys):
    make_metashift(tmp_path)
    assert main(["data", "inspect", "--dataset", "metashift", "--root", str(tmp_path), "--format", "json",
                 "--val-fraction", "0.25"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["totals"] == {"train": 10, "val": 15, "test": 45}  # 5 of 20 cats + 10 of 40 dogs


def test_inspect_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "inspect", "--dataset", "waterbirds", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raydbb: error: waterbirds: missing ") and err.count("\n") == 1
    assert main(["data", "inspect", "--dataset", "metashift", "--root", str(tmp_path),
                 "--val-fraction", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "val_fraction" in err and err.count("\n") == 1


def test_synth_writes_and_inspects(tmp_path, capsys):
    out_dir = tmp_path / "syn"
    assert main(["data", "synth", "--out", str(out_dir), "--seed", "1", "--n-train", "20", "--n-val", "8",
                 "--n-test", "8", "--size", "32", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"] == "synthetic"
    assert out["totals"] == {"train": 20, "val": 8, "test": 8}
    assert out["with_mask"] == {"train": 20, "val": 8, "test": 8}
    assert out["class_names"] == ["landbird", "waterbird"] and out["spurious_names"] == ["land", "water"]
    assert set(out["counts"]["val"].values()) == {2}  # correlation broken outside train
