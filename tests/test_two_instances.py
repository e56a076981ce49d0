"""Two raydbb commands on one machine, each with its own local Ray instance, do not interfere.

Every process of an instance raydbb starts knows that instance's address (raydbb.ray_utils), so
Ray Train's helper actors do not trip over the other instance ("Found multiple active Ray
instances"), and a cluster left running by `ray start` is not joined by accident.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from raydbb.data.synthetic import write_synthetic

pytestmark = pytest.mark.slow


def _train_erm(out, data) -> subprocess.Popen:
    args = [sys.executable, "-m", "raydbb.cli", "train-erm", f"out={out}", "data.name=synthetic",
            f"data.root={data}", "classifier.arch=small_cnn", "classifier.pretrained=false",
            "classifier.image_size=32", "classifier.width=4", "train.epochs=2", "train.batch_size=32",
            "train.optimizer=adam", "train.num_workers=1", "train.cpus_per_worker=0.5", "ray.num_cpus=2"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_two_training_runs_at_once_each_finish_on_their_own_instance(tmp_path):
    data = write_synthetic(tmp_path / "data", seed=0, n_train=64, n_val=16, n_test=16, size=32,
                           progress=False)
    runs = [_train_erm(tmp_path / name, data) for name in ("a", "b")]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    for run, out, name in zip(runs, outputs, ("a", "b"), strict=True):
        assert run.returncode == 0, out[-3000:]
        assert "multiple active Ray instances" not in out and "Traceback" not in out, out[-3000:]
        assert "Token authentication is enabled" not in out
        metrics = json.loads((tmp_path / name / "erm" / "metrics.json").read_text())
        assert metrics["run"]["best_epoch"] in (1, 2)


def test_workers_of_a_local_instance_never_reach_another_clusters_state_api():
    import ray

    from raydbb.config import RayConfig
    from raydbb.ray_utils import NO_API_SERVER, init_ray

    ray.shutdown()
    try:
        init_ray(RayConfig(num_cpus=1))

        @ray.remote(num_cpus=0)
        def lookup():
            from ray.train.v2._internal.state.util import is_actor_alive
            from ray.util.state.exception import RayStateApiException

            try:
                return os.environ["RAY_API_SERVER_ADDRESS"], is_actor_alive(actor_id="0" * 32, timeout=2)
            except RayStateApiException:
                return os.environ["RAY_API_SERVER_ADDRESS"], "unknown"

        # "unknown" keeps Ray Train's cleaner waiting; False would make it remove a live run's resources
        assert ray.get(lookup.remote()) == (NO_API_SERVER, "unknown")
    finally:
        ray.shutdown()
