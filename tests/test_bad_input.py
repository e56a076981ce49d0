"""Bad input gets exit code 2 and exactly one line on stderr naming the value: no traceback, no work.

The start of the bad-input matrix: configuration files and overrides that are not what a run needs.
"""

from __future__ import annotations

import pytest
from data_fixtures import write_image

from raydbb.cli import main
from raydbb.config import build_config
from raydbb.errors import DataError

BAD_CONFIG_FILES = {
    "yaml syntax": (b"train: {epochs: [1\n", "not valid YAML (line 2, column 1)"),
    "python tag": (b"train: !!python/object/apply:os.system ['echo hi']\n",
                   "could not determine a constructor for the tag"),
    "latin-1 text": ("data: {root: caf\xe9}\n".encode("latin-1"), "not UTF-8 text (byte 16)"),
    "a list": (b"- 1\n- 2\n", "expected a mapping at the top level"),
}

BAD_OVERRIDES = {
    "unparsable value": (["train.epochs=[1"], "override 'train.epochs=[1': not valid YAML"),
    "infinite lr": (["train.lr=.inf"], "train.lr=inf: Input should be a finite number"),
    "nan lambda": (["retrain.lambdas=.nan"], "retrain.lambdas.float=nan: Input should be a finite number"),
    "nan delta": (["prune.delta=.nan"], "nan is not a threshold"),
    "empty area range": (["mask.min_area=0.9", "mask.max_area=0.1"],
                         "mask.min_area=0.9 >= mask.max_area=0.1"),
    "unknown field": (["train.epoch=3"], "train.epoch: unknown field"),
    "no equals sign": (["train.epochs"], "expected section.field=value"),
}


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.mark.parametrize("name", sorted(BAD_CONFIG_FILES))
def test_bad_config_file_is_one_line(name, tmp_path, capsys):
    content, expected = BAD_CONFIG_FILES[name]
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    assert main(["train-erm", "--config", str(path), f"out={tmp_path / 'run'}"]) == 2
    line = _one_line_error(capsys)
    assert line.startswith("raydbb: error: config file") and expected in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", sorted(BAD_OVERRIDES))
def test_bad_override_is_one_line(name, tmp_path, capsys):
    overrides, expected = BAD_OVERRIDES[name]
    assert main(["train-erm", f"out={tmp_path / 'run'}", *overrides]) == 2
    assert expected in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_thresholds_may_be_infinite():
    from raydbb.config import load_config

    cfg = load_config(None, ["prune.delta=-.inf", "tune.deltas=[-.inf, 0.1]"])
    assert cfg.prune.delta == float("-inf") and cfg.tune.deltas == [float("-inf"), 0.1]


def test_sixteen_bit_grey_png_keeps_its_range(tmp_path):
    import numpy as np
    from PIL import Image

    from raydbb.data.images import read_image

    values = np.array([[0, 257, 32896], [65535, 1000, 60000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")  # PIL writes mode I;16
    got = read_image(tmp_path / "deep.png")
    assert got.shape == (2, 3, 3) and got.dtype == np.uint8
    # 255/65535 per step: 257 -> 1, 32896 -> 128, 1000 -> 3.89 -> 4, 60000 -> 233.45 -> 233
    np.testing.assert_array_equal(got[..., 0], [[0, 1, 128], [255, 4, 233]])
    assert (got[..., 0] == got[..., 2]).all()


def test_oversized_image_is_refused_from_its_header_and_recorded_by_the_load_stage(tmp_path):
    import time

    import numpy as np
    from PIL import Image

    from raydbb.data.images import ImageTooLarge, read_image
    from raydbb.engine.stages.load import LoadStage

    Image.new("L", (12000, 12000)).save(tmp_path / "bomb.png")  # ~140 KB on disk, 144 Mpx decoded
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "ok.png")
    start = time.perf_counter()
    with pytest.raises(ImageTooLarge, match=r"bomb.png is 12000x12000 \(144 Mpx\), over the limit of 40 Mpx"):
        read_image(tmp_path / "bomb.png")
    assert time.perf_counter() - start < 1.0  # the header alone, no decoding
    out = LoadStage()({"source_path": np.array([str(tmp_path / "bomb.png"), str(tmp_path / "ok.png")],
                                               dtype=object)})
    assert list(out["prune_reason"]) == ["error:image_too_large", ""]
    assert "12000x12000" in out["error"][0] and out["source_image"][1].shape == (8, 8, 3)


def test_image_past_pils_own_bomb_limit_is_one_line_too(tmp_path):
    from PIL import Image

    from raydbb.data.images import ImageTooLarge, read_image

    Image.new("1", (20000, 10000)).save(tmp_path / "huge.png")  # 200 Mpx: PIL itself refuses it
    with pytest.raises(ImageTooLarge, match="huge.png.*limit here is 40 Mpx"):
        read_image(tmp_path / "huge.png")


def test_out_pointing_at_a_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine\n")
    assert main(["train-erm", f"out={target}"]) == 2
    assert "is a file; expected a run folder" in _one_line_error(capsys)
    assert target.read_text() == "mine\n"


@pytest.mark.parametrize("content, expected", [
    (b"", "the file is empty"),
    ("path,label\nimages/caf\xe9.png,0\n".encode("latin-1"), "not UTF-8 text (byte 21)"),
])
def test_unreadable_metadata_csv_is_one_line(tmp_path, capsys, content, expected):
    (tmp_path / "metadata.csv").write_bytes(content)
    assert main(["data", "inspect", "--dataset", "csv", "--root", str(tmp_path)]) == 2
    assert expected in _one_line_error(capsys)


def test_corrupt_manifest_part_is_one_line_for_prune_and_for_resume(tmp_path, capsys):
    from raydbb.engine.manifest import finished_sample_ids
    from raydbb.errors import DataError

    (tmp_path / "manifest").mkdir()
    (tmp_path / "manifest" / "part-00000.parquet").write_bytes(b"PAR1 not really parquet")
    assert main(["prune", "--manifest", str(tmp_path), "--dry-run"]) == 2
    assert "part-00000.parquet is unreadable" in _one_line_error(capsys)
    with pytest.raises(DataError, match="unreadable .*move it aside"):
        finished_sample_ids(tmp_path)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "images/../../x.png"])
def test_manifest_paths_that_leave_the_run_folder_are_refused(tmp_path, bad):
    import pyarrow as pa

    from raydbb.engine.manifest import FIELDS, SCHEMA, read_manifest, write_part_atomic
    from raydbb.errors import DataError

    row = {name: [default] for name, _, default, _ in FIELDS}
    row.update(sample_id=["s"], image_path=[bad], mask_path=[""], prune_reason=["kept"], kept=[True])
    write_part_atomic(tmp_path / "manifest" / "part-00000.parquet", pa.table(row, schema=SCHEMA))
    with pytest.raises(DataError, match="points outside the run folder"):
        read_manifest(tmp_path)
    assert read_manifest(tmp_path, resolve_paths=False)["image_path"].tolist() == [bad]


def test_checkpoint_whose_weights_do_not_fit_its_config_is_one_line(tmp_path):
    import json

    from raydbb.config import ClassifierConfig
    from raydbb.errors import RaydbbError
    from raydbb.models.checkpoint import load_classifier, save_classifier
    from raydbb.models.classifier import build_classifier

    cfg = ClassifierConfig(arch="small_cnn", pretrained=False, image_size=16, width=4)
    save_classifier(build_classifier(cfg, 2), tmp_path, {"class_names": ["a", "b"]})
    meta = json.loads((tmp_path / "classifier.json").read_text())
    meta["width"] = 8  # the weights are width 4
    (tmp_path / "classifier.json").write_text(json.dumps(meta))
    with pytest.raises(RaydbbError, match=r"model.safetensors does not fit classifier.json \(arch=small_cnn, "
                                          r"width=8, num_classes=2\): size mismatch") as err:
        load_classifier(tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("argv", [
    ["retrain", "--config", "F", "out=X", "--fast", "train.epochs=2"],
    ["retrain", "out=X", "--fast", "--config", "F", "train.epochs=2"],
    ["retrain", "--fast", "out=X", "train.epochs=2", "--config", "F"],
])
def test_options_and_overrides_in_any_order(argv):
    from raydbb.cli import build_parser
    from raydbb.config import parse_args

    args = parse_args(build_parser(), argv)
    assert args.fast and args.config == "F" and args.overrides == ["out=X", "train.epochs=2"]


def test_unknown_argument_is_still_refused(capsys):
    with pytest.raises(SystemExit) as err:
        main(["retrain", "out=X", "--fastest"])
    assert err.value.code == 2 and "unrecognized arguments: --fastest" in capsys.readouterr().err


def test_checkpoint_of_an_unfinished_training_run_is_refused(tmp_path):
    import json

    from raydbb.config import ClassifierConfig, load_config
    from raydbb.ddb.generate import classifier_dir
    from raydbb.errors import RaydbbError
    from raydbb.models.checkpoint import save_classifier
    from raydbb.models.classifier import build_classifier

    cfg = ClassifierConfig(arch="small_cnn", pretrained=False, image_size=16, width=4)
    model = build_classifier(cfg, 2)
    save_classifier(model, tmp_path / "erm", {"class_names": ["a", "b"], "epoch": 3,
                                              "training": "in_progress"})
    cfg = load_config(None, [f"out={tmp_path}"])
    with pytest.raises(RaydbbError, match=r"not finished \(epoch 3 selected so far\).*generate.classifier"):
        classifier_dir(cfg)
    meta = json.loads((tmp_path / "erm" / "classifier.json").read_text())
    meta["training"] = "finished"
    (tmp_path / "erm" / "classifier.json").write_text(json.dumps(meta))
    assert classifier_dir(cfg) == tmp_path / "erm"


def test_compare_with_a_missing_dataset_is_one_line_before_any_task(tmp_path, capsys):
    assert main(["compare", "--methods", "erm", "--seeds", "0", f"out={tmp_path / 'cmp'}",
                 f"data.root={tmp_path / 'none'}"]) == 2
    assert "dataset root" in _one_line_error(capsys)
    assert not (tmp_path / "cmp" / "compare").exists()


def test_dataset_one_folder_down_gets_a_did_you_mean(tmp_path, capsys):
    inner = tmp_path / "MetaDatasetCatDog"
    for rel in ("train/cat/cat(sofa)", "train/cat/cat(bed)", "train/dog/dog(bench)", "train/dog/dog(bike)",
                "test/cat/cat(shelf)", "test/dog/dog(shelf)"):
        (inner / rel).mkdir(parents=True)
    assert main(["data", "inspect", "--dataset", "metashift", "--root", str(tmp_path)]) == 2
    assert f"did you mean {inner}?" in _one_line_error(capsys)


def test_data_inspect_check_images_lists_what_cannot_be_read(tmp_path, capsys):
    root = _broken_images_dataset(tmp_path)
    assert main(["data", "inspect", "--dataset", "csv", "--root", str(root), "--check-images"]) == 1
    out = capsys.readouterr().out
    assert "images that cannot be read: 2" in out
    assert "empty.png could not be decoded" in out and "garbage.png could not be decoded" in out
    assert main(["data", "inspect", "--dataset", "csv", "--root", str(root)]) == 0  # no decoding asked


def test_drop_unreadable_skips_with_a_table_or_refuses(tmp_path):
    from raydbb.data.registry import load_records
    from raydbb.data.scan import drop_unreadable

    root = _broken_images_dataset(tmp_path)
    records = load_records(build_config({"data": {"name": "csv", "root": str(root)}}).data)
    frames = {"train": records.split("train")}
    kept, skipped = drop_unreadable(frames, "skip", progress=False)
    assert len(kept["train"]) == 2 and list(skipped["split"]) == ["train", "train"]
    with pytest.raises(DataError, match=r"^2 image\(s\) cannot be read"):
        drop_unreadable(frames, "refuse", progress=False)


def test_a_label_seen_once_among_hundreds_is_warned_about(tmp_path, capsys):
    from raydbb.data.registry import load_records

    (tmp_path / "images").mkdir()
    write_image(tmp_path / "images" / "a.png")
    labels = ["landbird"] * 150 + ["waterbird"] * 120 + ["landbrid"]
    rows = ["path,label,sample_id"] + [f"images/a.png,{label},s{i}" for i, label in enumerate(labels)]
    (tmp_path / "metadata.csv").write_text("\n".join(rows) + "\n")
    records = load_records(build_config({"data": {"name": "csv", "root": str(tmp_path)}}).data)
    assert records.class_names == ["landbird", "landbrid", "waterbird"]  # kept, as documented
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label 'landbrid' appears in only 1 row(s)" in err[0]


def _broken_images_dataset(root):
    (root / "images").mkdir()
    write_image(root / "images" / "good1.png")
    write_image(root / "images" / "good2.png")
    (root / "images" / "empty.png").write_bytes(b"")
    (root / "images" / "garbage.png").write_bytes(b"\x89PNG not really")
    names = ["good1", "good2", "empty", "garbage"]
    (root / "metadata.csv").write_text("path,label\n" + "".join(f"images/{n}.png,{i % 2}\n"
                                                                for i, n in enumerate(names)))
    return root
