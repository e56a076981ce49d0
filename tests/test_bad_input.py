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
