"""Fault injection: a command killed with SIGKILL in the middle of its work, then run again.

Each test runs the real command in a process of its own (its own local Ray), kills it (or one of
its model actors) once its first results are on disk, reruns the same command and compares the
outcome with an uninterrupted run of the same config: the same sample ids, decisions, scores and
pixels, the same training metrics, nothing lost, nothing twice, no leftovers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from ddb_run import untrained_inputs

from raydbb.data.images import read_image
from raydbb.engine.manifest import read_manifest

pytestmark = pytest.mark.slow

CLASSES = ["landbird", "waterbird"]
DECISIONS = ["sample_id", "source_id", "kept", "prune_reason", "p_source", "p_target", "ig_score", "tau"]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    # A session of its own, so that killing it takes its local Ray with it.
    return subprocess.Popen([sys.executable, "-m", "raydbb.cli", *args], stdout=log.open("w"),
                            stderr=log.with_suffix(".err").open("w"), start_new_session=True)


def _tail(log: Path) -> str:
    return log.read_text()[-2000:] + log.with_suffix(".err").read_text()[-2000:]


def _run(args: list[str], log: Path, timeout: float = 600) -> None:
    proc = _start(args, log)
    assert proc.wait(timeout=timeout) == 0, _tail(log)


def _wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"finished before the fault was injected:\n{_tail(log)}"
        assert time.monotonic() < deadline, _tail(log)
        time.sleep(0.05)


def _kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def generate_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    data, sd = untrained_inputs(root, n_train=48, erm=root / "erm")
    small = {"num_cpus": 0.5, "batch_size": 2, "model_batch_size": 2}
    cfg = {
        "seed": 3,
        "data": {"name": "synthetic", "root": str(data)},
        "generate": {"classifier": str(root / "erm"), "io": {"num_cpus": 0.25, "batch_size": 2},
                     "manifest_rows_per_part": 2},
        "select": {"fraction": 0.5, "token_pool_size": 2, "resources": {**small, "batch_size": 8}},
        "mask": {"source": "dataset", "resources": small},
        "inpaint": {"model": str(sd), "steps": 4, "guidance_scale": 2.0, "resources": small},
        "prune": {"ig_steps": 4, "resources": small},
    }
    path = root / "generate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    reference = root / "reference"
    _run(["generate", "--config", str(path), f"out={reference}", "--no-progress"], root / "reference.log")
    return root, path, reference


def _same_outcome(run: Path, reference: Path) -> None:
    got, want = (read_manifest(p).sort_values("sample_id").reset_index(drop=True) for p in (run, reference))
    assert got["sample_id"].is_unique and len(got) == len(want)  # nothing lost, nothing twice
    pd.testing.assert_frame_equal(got[DECISIONS], want[DECISIONS])
    for a, b in zip(got["image_path"], want["image_path"], strict=True):
        assert (a == "") == (b == "")
        if a:
            np.testing.assert_array_equal(read_image(a), read_image(b))


def _manifest_parts(out: Path) -> int:
    return len(list((out / "manifest").glob("part-*.parquet"))) if (out / "manifest").is_dir() else 0


def test_driver_killed_mid_generate_then_rerun_matches_an_uninterrupted_run(generate_setup):
    root, config, reference = generate_setup
    out = root / "driver"
    args = ["generate", "--config", str(config), f"out={out}", "--no-progress"]
    proc = _start(args, root / "driver-killed.log")
    _wait_for(lambda: _manifest_parts(out) >= 1, proc, root / "driver-killed.log")
    _kill_group(proc)
    assert 1 <= _manifest_parts(out) < _manifest_parts(reference)
    _run([*args, "--json"], root / "driver-rerun.log")
    summary = json.loads((root / "driver-rerun.log").read_text())
    assert summary["skipped_resume"] >= 2 and summary["written"] >= 1
    _same_outcome(out, reference)


def _actor_pids(stage_word: str) -> list[int]:
    """Processes of Ray workers whose title names ``stage_word`` (``ray::MapWorker(MapBatches(inpaint))``)."""
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return [int(line.split(None, 1)[0]) for line in ps.splitlines()
            if "ray::" in line and stage_word in line]


def test_inpaint_actor_killed_mid_generate_the_run_completes_unchanged(generate_setup):
    root, config, reference = generate_setup
    out = root / "actor"
    log = root / "actor.log"
    proc = _start(["generate", "--config", str(config), f"out={out}", "--no-progress"], log)
    _wait_for(lambda: _manifest_parts(out) >= 1 and _actor_pids("MapBatches(inpaint"), proc, log)
    victim = _actor_pids("MapBatches(inpaint")[0]
    os.kill(victim, signal.SIGKILL)
    assert proc.wait(timeout=600) == 0, _tail(log)
    _same_outcome(out, reference)


def _kill_after(text: str, args: list[str], logs: Path) -> str:
    """Start ``args``, SIGKILL it once ``text`` is in its log, run it again; the rerun's log."""
    log = logs / "killed.log"
    proc = _start(args, log)
    _wait_for(lambda: text in log.read_text(), proc, log)
    _kill_group(proc)
    _run(args, logs / "rerun.log")
    return (logs / "rerun.log").read_text()


def _training_outcome(folder: Path) -> dict:
    """A finished training folder's metrics.json without what differs between two runs of it."""
    doc = json.loads((folder / "metrics.json").read_text())
    doc["run"].pop("checkpoint", None)
    doc["run"].pop("data_root", None)
    for row in doc["run"]["history"]:
        row.pop("seconds")
    assert json.loads((folder / "classifier.json").read_text())["training"] == "finished"
    return doc


def _no_leftovers(out: Path, name: str) -> None:
    assert not (out / f".{name}.resume").exists() and not (out / ".ray_train").exists()


def test_train_erm_killed_mid_run_resumes_and_matches_an_uninterrupted_run(tmp_path):
    from raydbb.data.synthetic import write_synthetic

    data = write_synthetic(tmp_path / "data", seed=0, n_train=96, n_val=16, n_test=16, size=32,
                           progress=False)
    common = ["data.name=synthetic", f"data.root={data}", "classifier.arch=small_cnn",
              "classifier.pretrained=false", "classifier.image_size=32", "classifier.width=4",
              "train.epochs=5", "train.batch_size=16", "train.num_workers=2", "train.cpus_per_worker=0.5"]
    _run(["train-erm", f"out={tmp_path / 'reference'}", *common], tmp_path / "reference.log")

    out = tmp_path / "run"
    rerun = _kill_after("epoch   3/5", ["train-erm", f"out={out}", *common], tmp_path)
    assert "resuming after epoch" in rerun
    assert _training_outcome(out / "erm") == _training_outcome(tmp_path / "reference" / "erm")
    _no_leftovers(out, "erm")


def test_retrain_killed_mid_run_resumes_and_matches_an_uninterrupted_run(generate_setup, tmp_path):
    root, config, manifest = generate_setup
    common = ["--config", str(config), "--manifest", str(manifest), "--no-progress",
              f"retrain.checkpoint={root / 'erm'}", "retrain.epochs=4",
              "train.batch_size=8", "train.num_workers=2", "train.cpus_per_worker=0.5"]
    _run(["retrain", f"out={tmp_path / 'reference'}", *common], tmp_path / "reference.log")

    out = tmp_path / "run"
    rerun = _kill_after("epoch   2/4", ["retrain", f"out={out}", *common], tmp_path)
    assert "resuming after epoch" in rerun
    assert _training_outcome(out / "ddb") == _training_outcome(tmp_path / "reference" / "ddb")
    _no_leftovers(out, "ddb")


def test_invert_killed_after_a_checkpoint_resumes_to_the_same_embedding(tmp_path):
    import torch
    from safetensors.torch import load_file

    from raydbb.data.synthetic import write_synthetic
    from raydbb.models.small_sd import build_small_inpaint_pipeline

    data = write_synthetic(tmp_path / "data", seed=0, n_train=16, n_val=4, n_test=4, progress=False)
    model = build_small_inpaint_pipeline(tmp_path / "sd", seed=0)
    meta = pd.read_csv(data / "metadata.csv")
    train = meta[(meta["split"] == "train") & (meta["label"] == "landbird")].head(2)

    def args(out: Path) -> list[str]:
        pool = out / "token_pool"
        pool.mkdir(parents=True, exist_ok=True)
        train.assign(path=[str(data / p) for p in train["path"]],
                     mask=[str(data / m) for m in train["mask"]]).to_csv(pool / "landbird.csv")
        return ["invert", "--engine", "loop", "--no-progress", f"out={out}", f"data.root={data}",
                f"inpaint.model={model}", "invert.initializer={landbird: bird, waterbird: bird}",
                "invert.classes=[landbird]", "invert.resolution=32", "invert.batch_size=1",
                "invert.grad_accum=1", "invert.steps=120", "invert.checkpoint_every=10"]

    _run(args(tmp_path / "reference"), tmp_path / "reference.log")
    out = tmp_path / "run"
    tokens = out / "tokens" / "landbird"
    log = tmp_path / "killed.log"
    proc = _start(args(out), log)
    _wait_for(lambda: any(tokens.glob("checkpoint-*")), proc, log)
    _kill_group(proc)
    assert not (tokens / "learned_embeds.safetensors").exists()
    _run([*args(out), "--json"], tmp_path / "rerun.log")
    assert "resuming at step" in (tmp_path / "rerun.err").read_text()  # progress on stderr
    assert json.loads((tmp_path / "rerun.log").read_text())[0]["status"] == "trained"  # stdout: the JSON
    want, got = (load_file(str(p / "tokens" / "landbird" / "learned_embeds.safetensors"))
                 for p in (tmp_path / "reference", out))
    assert torch.equal(got["<landbird-causal>"], want["<landbird-causal>"])
