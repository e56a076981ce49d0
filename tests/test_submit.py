"""``raydbb submit`` against a REAL local Ray head (loopback only), started and stopped by this module.

The head (tests/local_cluster.py) runs in its own process session, on free ports, with its own temp
dir and without RAY_ADDRESS, so it never meets the in-process ``ray_local`` fixture or other Ray
instances on the machine.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from raydbb.cli import main
from raydbb.workflow import read_marker
from tests.local_cluster import LocalCluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A Ray head on 127.0.0.1 with the job server on a free port; yields its http address."""
    cluster = LocalCluster()
    try:
        cluster.start_head(cpus=2, dashboard=True)
        deadline = time.monotonic() + 150
        while True:
            if cluster.nodes[0].poll() is not None:
                pytest.fail(f"ray start exited with {cluster.nodes[0].returncode}:\n{cluster.log(0)}")
            try:
                with urllib.request.urlopen(f"{cluster.dashboard}/api/version", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Ray job server not up after 150 s:\n{cluster.log(0)}")
            time.sleep(1)
        yield cluster.dashboard
    finally:
        cluster.stop()


def _write_config(path: Path, **sections: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def tiny_pipeline_config(tmp_path_factory) -> Path:
    """The synthetic pipeline with tiny models: every step runs in seconds on 2 cores."""
    from raydbb.models.small_sd import build_small_inpaint_pipeline

    root = tmp_path_factory.mktemp("job")
    sd = build_small_inpaint_pipeline(root / "sd", seed=0, sample_size=8)
    small = {"num_cpus": 0.5, "batch_size": 4, "model_batch_size": 4}
    return _write_config(
        root / "cfg" / "tiny.yaml", out=str(root / "run"), seed=0,
        data={"name": "synthetic", "root": str(root / "run" / "data"),
              "synthetic": {"n_train": 16, "n_val": 8, "n_test": 8, "size": 32}},
        classifier={"arch": "small_cnn", "pretrained": False, "image_size": 32, "width": 4},
        train={"epochs": 1, "batch_size": 8, "num_workers": 0, "augment": False},
        select={"fraction": 0.25, "token_pool_size": 2, "resources": {**small, "batch_size": 8}},
        invert={"initializer": {"landbird": "bird", "waterbird": "bird"}, "steps": 1, "resolution": 32,
                "batch_size": 1, "grad_accum": 1, "num_cpus": 0.5, "mask_mode": "full"},
        generate={"io": {"num_cpus": 0.25, "batch_size": 4}},
        mask={"source": "dataset", "resources": small},
        inpaint={"model": str(sd), "steps": 2, "guidance_scale": 2.0, "resources": small},
        prune={"ig_steps": 2, "resources": {**small, "model_batch_size": 16}},
    )


def test_submit_synthetic_pipeline_job(ray_head: str, tiny_pipeline_config: Path, capsys) -> None:
    config = tiny_pipeline_config
    out = config.parent.parent / "run"
    rc = main(["submit", "--address", ray_head, "--config", str(config), "--entrypoint-num-cpus", "0.25",
               "data.synthetic.n_train=20"])
    text = capsys.readouterr().out
    assert rc == 0, text[-5000:]
    assert "job raysubmit_" in text and ": SUCCEEDED" in text
    assert ("same with Ray's CLI:  ray job submit --address " + ray_head + " --working-dir "
            + str(config.parent) + " --entrypoint-num-cpus 0.25 -- python -m raydbb.jobs.pipeline --config "
            "tiny.yaml data.synthetic.n_train=20") in text
    assert "raydbb job done" in text  # the job's own last line, streamed back

    # The job ran every step on the cluster, with the override, into `out`.
    rows = (out / "data" / "metadata.csv").read_text().splitlines()
    assert len(rows) == 1 + 20 + 8 + 8
    for step in ("synth", "train_erm", "invert", "generate", "retrain", "evaluate"):
        assert read_marker(out, step) is not None, step
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["synthetic"]["n_train"] == 20
    manifest = pd.read_parquet(out / "manifest")
    selected = pd.read_csv(out / "select" / "selected.csv")
    assert len(manifest) == len(selected) > 0 and manifest["sample_id"].is_unique
    assert (manifest["target_label"] == 1 - manifest["source_label"]).all()
    assert manifest["token"].isin(["<landbird-causal>", "<waterbird-causal>"]).all()
    assert all((out / p).is_file() for p in manifest["image_path"] if p)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["erm"]["test"]["num_samples"] == 8

    # Resubmitting the finished pipeline skips every step.
    assert main(["submit", "--address", ray_head, "--config", str(config), "data.synthetic.n_train=20"]) == 0
    text = capsys.readouterr().out
    assert text.count(": already done") == 6 and "ran nothing" in text


def test_failed_job_exit_code_and_no_wait(ray_head: str, tmp_path: Path, capsys) -> None:
    data = tmp_path / "not-a-benchmark"
    data.mkdir()
    (data / "notes.txt").write_text("someone's files")  # synth refuses to draw over them
    config = _write_config(tmp_path / "bad.yaml", out=str(tmp_path / "run"),
                           data={"name": "synthetic", "root": str(data)})
    rc = main(["submit", "--address", ray_head, "--config", str(config), "--step", "synth"])
    text = capsys.readouterr().out
    assert rc == 1
    assert ": FAILED (Job entrypoint command failed with exit code 2" in text
    assert "is not a synthetic benchmark with these parameters" in text  # the job's error, streamed

    rc = main(["submit", "--address", ray_head, "--config", str(config), "--step", "synth", "--no-wait",
               "--submission-id", "raydbb-test-nowait"])
    text = capsys.readouterr().out
    assert rc == 0 and "submitted raydbb-test-nowait" in text and "--follow raydbb-test-nowait" in text
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(ray_head)
    deadline = time.monotonic() + 60
    while not client.get_job_status("raydbb-test-nowait").is_terminal() and time.monotonic() < deadline:
        time.sleep(1)
    assert client.get_job_info("raydbb-test-nowait").metadata["raydbb_step"] == "synth"


def test_submit_validates_before_contacting_the_cluster(tmp_path: Path, capsys) -> None:
    config = _write_config(tmp_path / "cfg.yaml", out=str(tmp_path / "run"))
    unreachable = "http://127.0.0.1:9"  # never contacted: every error below is raised first
    assert main(["submit", "--address", unreachable, "--config", str(config), "inpaint.steps=0"]) == 2
    assert "inpaint.steps=0" in capsys.readouterr().err
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert main(["submit", "--address", unreachable, "--config", str(config),
                 "--working-dir", str(other)]) == 2
    assert "is outside the working dir" in capsys.readouterr().err
    assert main(["submit", "--address", unreachable, "--config", str(config), "--step", "generate",
                 "--steps", "a"]) == 2
    assert "--steps is for --step pipeline" in capsys.readouterr().err
    assert main(["submit", "--address", unreachable, "--config", str(config)]) == 2
    assert "cannot reach a Ray job server at http://127.0.0.1:9" in capsys.readouterr().err


def test_runtime_env_file_and_working_dir_shape_the_job(tmp_path: Path) -> None:
    from argparse import Namespace

    from raydbb.commands.submit import plain_command, plan_job

    (tmp_path / "proj" / "configs").mkdir(parents=True)
    config = _write_config(tmp_path / "proj" / "configs" / "wb.yaml", out="/shared/runs/wb")
    env_file = tmp_path / "env.yaml"
    runtime_env = {"env_vars": {"HF_HOME": "/models/hf"}, "working_dir": str(tmp_path / "proj")}
    env_file.write_text(json.dumps(runtime_env))
    args = Namespace(config=str(config), overrides=["train.epochs=2"], step="pipeline",
                     steps="train_erm,evaluate",
                     runtime_env=str(env_file), working_dir=None, address="http://head:8265",
                     submission_id=None, entrypoint_num_cpus=None, entrypoint_num_gpus=1.0, no_wait=True)
    plan = plan_job(args)
    assert plan["entrypoint"] == ("python -m raydbb.jobs.pipeline --config configs/wb.yaml "
                                  "--steps train_erm,evaluate train.epochs=2")
    assert plan["runtime_env"] == runtime_env
    assert plan["stage_config"] is None
    assert plain_command(args, plan) == (
        f"ray job submit --address http://head:8265 --runtime-env {env_file} "
        f"--working-dir {tmp_path / 'proj'} --entrypoint-num-gpus 1 --no-wait -- " + plan["entrypoint"])


def test_submit_waits_for_the_job_agent_then_gives_one_line():
    from raydbb.commands.submit import AGENT_NOT_READY, submit_when_ready
    from raydbb.errors import RaydbbError

    answers = [RuntimeError(f"Request failed: {AGENT_NOT_READY}, please try again later"),
               RuntimeError(AGENT_NOT_READY), "raysubmit_1"]

    def submit():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert submit_when_ready(submit, wait_s=5, poll_s=0.01) == "raysubmit_1" and answers == []
    with pytest.raises(RaydbbError, match="no agent ready after 0 s"):
        submit_when_ready(lambda: (_ for _ in ()).throw(RuntimeError(AGENT_NOT_READY)), wait_s=0, poll_s=0)
    with pytest.raises(RuntimeError, match="something else"):  # other failures are not retried
        submit_when_ready(lambda: (_ for _ in ()).throw(RuntimeError("something else")), wait_s=5)
