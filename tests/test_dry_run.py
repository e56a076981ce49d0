"""`--dry-run`: every problem on its own line (exit 2), the plan otherwise (exit 0); no Ray, no writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from raydbb.cli import main
from raydbb.config import load_config
from raydbb.engine.placement import Node
from raydbb.plan import Resources, check_resources, dry_run, stage_plans

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "jobs" / "configs"
PACKAGED = "inpaint.model=package:synthetic_inpainter"


def tiny(tmp_path: Path) -> list[str]:
    return [f"out={tmp_path / 'out'}", "data.name=synthetic", f"data.root={tmp_path / 'data'}", PACKAGED,
            "ray.num_cpus=5", "select.fraction=0.1", "inpaint.n_variants=2",
            "inpaint.resources={actors: 2, num_cpus: 1, batch_size: 4}",
            "invert.initializer={landbird: bird, waterbird: bird}"]


RAY_WAS_RUNNING: list[bool] = []


@pytest.fixture(autouse=True)
def ray_before():
    """Whether Ray ran in this process before the test (the suite's session instance may): a dry run
    must leave that as it was. Shutting it down here would pull it from under later tests."""
    import ray

    RAY_WAS_RUNNING[:] = [ray.is_initialized()]


def nothing_started(tmp_path: Path) -> None:
    import ray

    assert ray.is_initialized() == RAY_WAS_RUNNING[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["generate", "invert", "train-erm", "retrain", "tune", "evaluate"])
def test_a_valid_config_plans_and_exits_0(command, tmp_path, capsys):
    work = tmp_path / "w"
    work.mkdir()
    assert main([command, "--dry-run", *tiny(work)]) == (2 if command == "evaluate" else 0)
    out = capsys.readouterr()
    assert f"dry run of {command}" in out.out
    if command == "generate":
        assert "inpaint    2 actors x 1 CPU, batch 4   (inpaint.resources)" in out.out
        # 3000 train images (2250 landbirds, 750 waterbirds): ceil(0.1 n) sources x 1 other class x 2
        assert "expected samples: 300 sources (225, 75 per class) x 1 other classes x 2 variants = 600" \
            in out.out
        assert "drawn by synth" in out.out and "made by train_erm" in out.out
    if command == "evaluate":  # a checkpoint that is not there yet is a problem for evaluate
        assert "no classifier.json" in out.err
    nothing_started(work)


def test_every_problem_is_one_line_and_exit_2(tmp_path, capsys):
    args = ["generate", "--dry-run", f"out={tmp_path / 'out'}", "data.name=csv",
            f"data.root={tmp_path / 'no_data'}", f"inpaint.model={tmp_path / 'no_model'}",
            "inpaint.resources.num_gpus=64", "ray.num_cpus=8"]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3, lines
    assert all(line.startswith("raydbb: dry run: ") for line in lines)
    assert str(tmp_path / "no_data") in lines[0]
    assert f"inpaint.model={tmp_path / 'no_model'}: no such folder" in lines[1]
    assert "inpaint.resources" in lines[2] and "GPU" in lines[2]
    nothing_started(tmp_path)


def test_shipped_configs_on_a_fresh_clone(tmp_path, monkeypatch, capsys):
    """The done-when: synthetic.yaml plans (its data, ERM and tokens are made by earlier steps);
    waterbirds.yaml names its missing data root. Run from an empty folder: a fresh clone has no runs/."""
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--config", str(CONFIGS / "synthetic.yaml"), "--dry-run", PACKAGED]) == 0
    assert "no problem found" in capsys.readouterr().out
    assert main(["invert", "--config", str(CONFIGS / "synthetic.yaml"), "--dry-run"]) == 0
    capsys.readouterr()
    assert main(["generate", "--config", str(CONFIGS / "waterbirds.yaml"), "--dry-run"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert any("/data/waterbird_complete95_forest2water2" in line and "not a folder" in line for line in err)
    nothing_started(tmp_path)


def test_a_class_name_of_two_tokens_without_an_initializer_is_a_problem(tmp_path, capsys):
    work = tmp_path / "w"
    work.mkdir()
    assert main(["invert", "--dry-run", *tiny(work), "invert.initializer=null"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["raydbb: dry run: class 'landbird': no single-token initializer ('landbird' splits into "
                   "['land', 'bird</w>']); set invert.initializer.landbird=<one-token noun>, e.g. 'bird'",
                   "raydbb: dry run: class 'waterbird': no single-token initializer ('waterbird' splits into "
                   "['water', 'bird</w>']); set invert.initializer.waterbird=<one-token noun>, e.g. 'bird'"]
    nothing_started(work)


def test_demo_and_job_entrypoints_dry_run(tmp_path, capsys):
    from raydbb.jobs import main as job_main

    assert main(["demo", "--dry-run", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "synth -> train_erm -> invert -> generate -> retrain -> evaluate" in out
    assert job_main("generate", ["--dry-run", *tiny(tmp_path)]) == 0
    nothing_started(tmp_path)


def test_submit_dry_run_reads_the_cluster_or_says_it_cannot(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"out: {tmp_path / 'out'}\ndata: {{root: {tmp_path / 'data'}}}\n")
    rc = main(["submit", "--dry-run", "--address", "http://127.0.0.1:9", "--config", str(config), PACKAGED])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach the Ray dashboard at http://127.0.0.1:9" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_resources_against_a_cluster_of_gpu_nodes():
    cfg = load_config(CONFIGS / "waterbirds.yaml")
    plans = stage_plans(cfg, "generate", 2)
    four = Resources("a cluster", [Node("gpu4", 16, 4), Node("gpu4b", 16, 4)])
    assert check_resources(plans, four, "cuda", True) == []
    small = Resources("one node", [Node("gpu2", 16, 2)])
    assert check_resources(plans, small, "cuda", True) == [
        "inpaint.resources: stage inpaint: 3 actors x 2 CPU + 1 GPU do not fit the cluster: its alive nodes "
        "hold 2 next to the other pools (free: gpu2 12 CPU + 0 GPU)",
        "mask.resources: stage mask: 1 actors x 2 CPU + 0.5 GPU do not fit the cluster: its alive nodes "
        "hold 0 next to the other pools (free: gpu2 12 CPU + 0 GPU)",
        "prune.resources: stage prune: 1 actors x 2 CPU + 0.25 GPU do not fit the cluster: its alive nodes "
        "hold 0 next to the other pools (free: gpu2 12 CPU + 0 GPU)"]
    big = load_config(CONFIGS / "waterbirds.yaml", ["inpaint.resources.num_gpus=8"])
    assert check_resources(stage_plans(big, "generate", 2), four, "cuda", True)[0].startswith(
        "inpaint.resources: stage inpaint: 3 actors x 2 CPU + 8 GPU do not fit the cluster: its alive nodes "
        "hold 0")


def test_dry_run_function_collects_and_does_not_raise(tmp_path):
    cfg = load_config(None, [f"out={tmp_path}", "data.name=csv", f"data.root={tmp_path / 'x'}",
                             f"inpaint.model={tmp_path / 'no_model'}"])
    plan = dry_run(cfg, "generate", resources=Resources("here", [Node("here", 4, 0)]))
    assert [p.split(":")[0].split("=")[0] for p in plan.problems] == ["data", "inpaint.model"]


def test_a_clusters_nodes_and_labels_are_packed_like_the_run_will():
    """With the nodes known (raydbb submit --dry-run reads them from the dashboard), each pass is
    packed onto them, labels included: the launcher's plan fits its node types, a ninth 1-GPU
    inpainting actor does not."""
    import yaml

    from tests.local_cluster import launcher_resource_overrides

    launcher = ROOT / "cluster" / "ray-cluster.yaml"
    spec = yaml.safe_load(launcher.read_text())
    overrides = launcher_resource_overrides(launcher)
    nodes = [Node(name, t["resources"].get("CPU", 0), t["resources"].get("GPU", 0), t.get("labels", {}))
             for name, t in spec["available_node_types"].items()]
    res = Resources("the launcher's node types", nodes)
    cfg = load_config(CONFIGS / "celeba.yaml", overrides)
    assert check_resources(stage_plans(cfg, "generate", 2), res, "cuda", False) == []
    cfg = load_config(CONFIGS / "celeba.yaml", [*overrides, "inpaint.resources.actors=9"])
    assert check_resources(stage_plans(cfg, "generate", 2), res, "cuda", False) == [
        "inpaint.resources: stage inpaint: 9 actors x 8 CPU + 1 GPU on nodes labelled raydbb-stages=inpaint "
        "do not fit the cluster: its alive nodes hold 8 next to the other pools "
        "(free: gpu_inpa 32 CPU + 0 GPU)"]


def test_task_stages_left_without_cpus_share_one_line_under_their_config_field():
    plans = stage_plans(load_config(None, ["ray.num_cpus=3"]), "generate", 2)  # 3 pools x 1 CPU
    assert check_resources(plans, Resources("here", [Node("local", 3, 0)]), "cpu", False) == [
        "generate.io: stage load, expand, write: its tasks need 0.25 CPU that the actor pools leave on no "
        "node of the cluster (free: local 0 CPU + 0 GPU)"]


def test_retrain_plans_the_round_trip_and_names_images_without_masks(tmp_path, capsys):
    from test_erm import _write_dataset

    work = tmp_path / "w"
    work.mkdir()
    assert main(["retrain", "--dry-run", *tiny(work), "retrain.round_trip_originals=true"]) == 0
    out = capsys.readouterr().out
    assert "synthetic_inpainter (configs read)" in out
    assert "round trip: the 3000 training originals through the VAE of" in out  # the synthetic train split
    groups = [("red", "grass"), ("blue", "sand")]
    counts = {"train": dict.fromkeys(groups, 2), "val": dict.fromkeys(groups, 1)}
    data = _write_dataset(tmp_path / "csv", counts)
    args = ["retrain", "--dry-run", *tiny(work), "data.name=csv", f"data.root={data}",
            "retrain.round_trip_originals=true"]
    assert main(args) == 2
    assert ("retrain.round_trip_originals=true: 4 of 4 training images have no object mask"
            in capsys.readouterr().err)
    nothing_started(work)
