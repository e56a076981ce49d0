"""raydbb demo: the packaged config, and the whole pipeline at tiny sizes (--fast), then a rerun."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raydbb.cli import main
from raydbb.config import load_config
from raydbb.configs import demo_config
from raydbb.errors import ConfigError
from raydbb.ray_utils import RESTART_NOTICE

METRIC_KEYS = {"worst_group_accuracy", "worst_group", "average_accuracy", "weighted_average_accuracy",
               "group_accuracy", "group_count", "num_samples"}
GROUPS = {"landbird/land", "landbird/water", "waterbird/land", "waterbird/water"}
STEPS = ("synth", "train_erm", "invert", "generate", "retrain", "evaluate", "report")


def test_demo_config_layers(tmp_path: Path) -> None:
    out = tmp_path / "d"
    cfg = demo_config(out, seed=3, train_correlation=0.9, overrides=["retrain.epochs=7", "inpaint.model=/m"])
    assert cfg.out == str(out) and cfg.data.root == str(out / "data")
    assert (cfg.seed, cfg.train.seed, cfg.invert.seed) == (3, 3, 3)
    assert cfg.data.synthetic.train_correlation == 0.9
    assert cfg.retrain.epochs == 7 and cfg.inpaint.model == "/m"  # overrides win over the packaged file
    assert cfg.invert.initializer == {"landbird": "bird", "waterbird": "bird"}
    assert cfg.mask.source == "dataset" and cfg.classifier.arch == "small_cnn"
    assert cfg.generate.layout == "fused" and cfg.generate.fused.actors == 2  # CPU-only: one pool

    fast = demo_config(out, fast=True, overrides=["inpaint.model=/m"])
    assert fast.data.synthetic.n_train == 240 and fast.invert.steps == 2
    assert fast.data.synthetic.train_correlation == 0.95  # from demo.yaml, not touched by the overlay
    with pytest.raises(ConfigError, match="retrain.epochs"):
        demo_config(out, overrides=["retrain.epochs=0", "inpaint.model=/m"])


def test_demo_rejects_a_negative_seed(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--out", str(tmp_path / "d"), "--seed", "-1"]) == 2
    assert "--seed -1: expected an integer >= 0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_fast_demo_end_to_end_then_rerun_skips_every_step(ray_local, tmp_path: Path, capsys) -> None:
    from raydbb.assets import synthetic_inpainter_path

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--fast", "--no-progress"]) == 0
    printed = capsys.readouterr().out

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"erm", "ddb"}
    for name, entry in metrics.items():
        assert set(entry) == {"val", "test", "run"}
        assert entry["run"]["checkpoint"] == str(out / name)
        for split, n in (("val", 64), ("test", 64)):
            m = entry[split]
            assert set(m) == METRIC_KEYS and set(m["group_accuracy"]) == GROUPS
            assert m["num_samples"] == sum(m["group_count"].values()) == n
            assert m["worst_group_accuracy"] == min(m["group_accuracy"].values())
    assert "val ERM" in printed and "test DDB" in printed and "test worst-group accuracy: ERM" in printed

    # Everything lives under OUT: data, models, tokens, manifest, images, report, resolved config.
    for rel in ("data/metadata.csv", "erm/model.safetensors", "ddb/model.safetensors", "tokens",
                "manifest", "images", "masks", "tau.json", "report.html", "config.yaml"):
        assert (out / rel).exists(), rel
    assert "data:image/png;base64," in (out / "report.html").read_text()
    resolved = load_config(out / "config.yaml")
    assert resolved.inpaint.model == str(synthetic_inpainter_path())
    assert resolved.inpaint.tokens_dir == str(out / "tokens")
    assert resolved.generate.layout == "fused"  # the demo's generate step ran in the fused layout

    # A rerun in a fresh process (as a user would type it) skips every step and takes seconds.
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "raydbb.cli", "demo", "--out", str(out), "--fast",
                           "--no-progress"], capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    for i, step in enumerate(STEPS, start=1):
        assert f"[{i}/{len(STEPS)}] {step}: already done" in proc.stdout
    assert "running again" not in proc.stdout
    assert elapsed < 30, f"rerun took {elapsed:.1f} s"
    assert json.loads((out / "metrics.json").read_text()) == metrics


@pytest.fixture(scope="module")
def fast_demo_in_a_process(tmp_path_factory):
    """A fast demo run as a user types it: (run folder, everything it printed)."""
    out = tmp_path_factory.mktemp("process") / "demo"
    run = subprocess.run([sys.executable, "-m", "raydbb.cli", "demo", "--out", str(out), "--fast",
                          "--no-progress"], capture_output=True, text=True, timeout=900)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    return out, log


@pytest.mark.slow
def test_fast_demo_log_reads_clean(fast_demo_in_a_process) -> None:
    """What a user reads: no traceback, no error line and no warning they cannot act on."""
    _, log = fast_demo_in_a_process
    bad = [line for line in log.splitlines()
           if "Traceback" in line or "ERROR" in line or "Error" in line or "WARNING" in line
           or "Warning" in line or "warnings.warn" in line
           or "[transformers]" in line or "[diffusers]" in line]  # library advice, not the user's
    assert bad == [], "\n".join(bad[:20])
    assert RESTART_NOTICE not in log  # Ray's restart notice for actor pools (an "E" line, no "ERROR")
    assert log.count("[1/7] synth: draw") == 1  # each step's header once


@pytest.mark.slow
def test_two_demo_runs_of_one_seed_write_identical_metrics(ray_local, fast_demo_in_a_process,
                                                           tmp_path) -> None:
    # Another process, another folder, Ray Data's actors finishing in another order: same numbers.
    first, _ = fast_demo_in_a_process
    second = tmp_path / "demo"
    assert main(["demo", "--out", str(second), "--fast", "--no-progress"]) == 0
    texts = [(out / "metrics.json").read_text().replace(str(out), "OUT") for out in (first, second)]
    assert texts[0] == texts[1]
    weights = [(out / "ddb" / "model.safetensors").read_bytes() for out in (first, second)]
    assert weights[0] == weights[1]
