"""Bad input gets exit code 2 and exactly one line on stderr naming the value: no traceback, no work.

The start of the bad-input matrix: configuration files and overrides that are not what a run needs.
"""

from __future__ import annotations

import pytest

from raydbb.cli import main

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
