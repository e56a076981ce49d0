"""The shipped job configs, runtime env and cluster specs: they parse, point at entrypoints and configs
that exist, and ask for resources that the pipeline config they run can actually use and fit."""

from __future__ import annotations

import importlib.resources
import importlib.util
import itertools
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
import yaml

from raydbb.commands.submit import JOB_STEPS
from raydbb.config import RaydbbConfig, load_config
from raydbb.engine.placement import Node
from raydbb.jobs import build_parser
from raydbb.plan import Resources, stage_plans
from raydbb.plan import check_resources as plan_check

REPO = Path(__file__).resolve().parent.parent
IMAGE_ROOT = "/app/"  # where cluster/Dockerfile puts the repository inside the image
LAUNCHER = REPO / "cluster" / "ray-cluster.yaml"
RAYCLUSTER = REPO / "cluster" / "kuberay" / "raycluster.yaml"
RAYJOB = REPO / "cluster" / "kuberay" / "rayjob.yaml"
GENERATE_STAGES = ("mask", "inpaint", "prune")


# ----------------------------------------------------------------------------------------------
# Cluster model: the node groups a cluster spec declares (CPUs, GPUs, how many, which stages).


@dataclass(frozen=True)
class NodeGroup:
    name: str
    cpus: float
    gpus: float
    max_nodes: int
    labels: dict[str, str]  # the Ray node labels its nodes start with

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(self.labels.get("raydbb-stages", "").split("-"))


def _quantity(value: str | int | float) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def launcher_groups(spec: dict) -> list[NodeGroup]:
    groups = []
    for name, node in spec["available_node_types"].items():
        res = node["resources"]
        head = name == spec["head_node_type"]
        count = 1 if head else node["max_workers"]
        labels = dict(node.get("labels", {}))
        groups.append(NodeGroup(name, res.get("CPU", 0), res.get("GPU", 0), count, labels))
    return groups


def kuberay_groups(spec: dict) -> list[NodeGroup]:
    def shape(group: dict) -> tuple[float, float]:
        container = group["template"]["spec"]["containers"][0]
        limits = container["resources"]["limits"]
        params = group.get("rayStartParams", {})
        cpus = _quantity(params.get("num-cpus", limits["cpu"]))
        gpus = _quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
        return cpus, gpus

    def ray_labels(group: dict) -> dict[str, str]:  # rayStartParams' "k=v,k2=v2"
        text = group.get("rayStartParams", {}).get("labels", "")
        return dict(item.split("=", 1) for item in text.split(",") if item)

    head = spec["headGroupSpec"]
    groups = [NodeGroup("head", *shape(head), 1, ray_labels(head))]
    for g in spec["workerGroupSpecs"]:
        pod_stages = g["template"].get("metadata", {}).get("labels", {}).get("raydbb.io/stages")
        assert pod_stages == ray_labels(g).get("raydbb-stages"), f"{g['groupName']}: pod, Ray labels differ"
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        groups.append(NodeGroup(g["groupName"], *shape(g), g["maxReplicas"], ray_labels(g)))
    return groups


def check_resources(groups: list[NodeGroup], cfg: RaydbbConfig) -> None:
    """Every step's pools fit the cluster at full size, by raydbb's own placement check (the one
    ``--dry-run`` runs, node labels included) whatever order the nodes come in; each GPU stage is
    assigned to exactly one worker group, and the groups are sized for their stages."""
    assert any(g.gpus for g in groups) and cfg.device == "cuda", "a GPU cluster runs a device=cuda config"
    nodes = [Node(f"{g.name}-{i}", g.cpus, g.gpus, g.labels)
             for g in groups for i in range(g.max_nodes)]
    plans = [p for step in ("train_erm", "invert", "generate") for p in stage_plans(cfg, step, 2)]
    for order in itertools.permutations(nodes):
        spec = Resources("the cluster spec", list(order))
        problems = plan_check(plans, spec, cfg.device, cfg.train.use_gpu)
        assert not problems, f"nodes in order {[n.node_id for n in order]}: {problems}"

    gpu_stages = [s for s in (*GENERATE_STAGES, "select") if getattr(cfg, s).resources.num_gpus > 0]
    for stage in gpu_stages:
        owners = [g.name for g in groups if stage in g.stages]
        assert len(owners) == 1, f"GPU stage {stage} is labelled on groups {owners}; expected exactly one"
    for g in groups:
        if "inpaint" in g.stages:  # the inpaint pool fills its group: one actor per GPU slot, none idle
            res = cfg.inpaint.resources
            assert g.gpus % res.num_gpus == 0, f"{g.name}: {g.gpus} GPUs a node, inpaint takes {res.num_gpus}"
            assert res.actors * res.num_gpus == g.gpus * g.max_nodes, (
                f"{g.name}: {g.gpus * g.max_nodes} GPUs for {res.actors} inpaint actors x {res.num_gpus}")
        shared = [s for s in gpu_stages if s in g.stages and s != "inpaint"]
        if shared:  # mask, prune and the scoring pass share one node's GPU(s)
            total = sum(getattr(cfg, s).resources.actors * getattr(cfg, s).resources.num_gpus for s in shared)
            assert total <= g.gpus, f"{g.name}: {shared} need {total} GPUs, a node has {g.gpus}"


def entrypoint_config(entrypoint: str) -> tuple[str, RaydbbConfig]:
    """``(module, config)`` of ``python -m raydbb.jobs.<step> --config FILE [overrides]``."""
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["python", "-m"], entrypoint
    module = argv[2]
    assert importlib.util.find_spec(module) is not None, f"{module} does not exist"
    step = module.rsplit(".", 1)[1]
    args = build_parser(None if step == "pipeline" else step).parse_args(argv[3:])
    path = args.config[len(IMAGE_ROOT):] if args.config.startswith(IMAGE_ROOT) else args.config
    assert (REPO / path).is_file(), f"config {args.config} not in the repository ({path})"
    return module, load_config(REPO / path, args.overrides)


# ----------------------------------------------------------------------------------------------


def test_job_entrypoints_exist_for_every_step() -> None:
    for step in JOB_STEPS:
        assert importlib.util.find_spec(f"raydbb.jobs.{step}") is not None, step


@pytest.mark.parametrize("name", ["waterbirds", "celeba", "metashift", "synthetic"])
def test_job_configs_load(name: str) -> None:
    cfg = load_config(REPO / "jobs" / "configs" / f"{name}.yaml")
    assert cfg.data.name == name


def test_runtime_env_example_is_a_valid_ray_runtime_env() -> None:
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
    parsed = RuntimeEnv(**env)
    assert parsed["working_dir"] == "." and "runs/" in parsed["excludes"]
    assert all(isinstance(v, str) for v in env["env_vars"].values())  # Ray requires string values


def test_cluster_launcher_yaml_matches_rays_schema_and_its_pipeline() -> None:
    import jsonschema

    spec = yaml.safe_load(LAUNCHER.read_text())
    schema = json.loads((importlib.resources.files("ray.autoscaler") / "ray-schema.json").read_text())
    jsonschema.validate(spec, schema)
    workers = [n for k, n in spec["available_node_types"].items() if k != spec["head_node_type"]]
    assert sum(n["max_workers"] for n in workers) <= spec["max_workers"]
    assert spec["available_node_types"][spec["head_node_type"]]["resources"].get("GPU", 0) == 0  # CPU head
    assert spec["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")
    assert any("pip install" in c and "/home/ray/raydbb" in c for c in spec["setup_commands"])
    assert spec["file_mounts"]["/home/ray/raydbb"] == "."

    module, cfg = entrypoint_config(spec["metadata"]["raydbb"]["entrypoint"])
    assert module == "raydbb.jobs.pipeline"
    check_resources(launcher_groups(spec), cfg)


def test_kuberay_raycluster_and_rayjob_match_their_pipeline() -> None:
    cluster = yaml.safe_load(RAYCLUSTER.read_text())
    job = yaml.safe_load(RAYJOB.read_text())
    assert (cluster["apiVersion"], cluster["kind"], job["kind"]) == ("ray.io/v1", "RayCluster", "RayJob")
    assert job["spec"]["rayClusterSpec"] == cluster["spec"]  # one cluster shape, two ways to run it
    assert job["spec"]["entrypoint"] == cluster["metadata"]["annotations"]["raydbb.io/entrypoint"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["HF_HOME"].startswith("/mnt/shared/")

    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__
    pods = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
    images = {p["template"]["spec"]["containers"][0]["image"] for p in pods}
    assert len(images) == 1 and not images.pop().startswith("rayproject/")  # raydbb baked in
    for g in spec["workerGroupSpecs"]:
        res = g["template"]["spec"]["containers"][0]["resources"]
        assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"], g["groupName"]
        assert any(t["key"] == "nvidia.com/gpu" for t in g["template"]["spec"]["tolerations"])
    for p in pods:  # out, data and caches on the shared volume in every pod
        mounts = p["template"]["spec"]["containers"][0]["volumeMounts"]
        assert {"name": "shared", "mountPath": "/mnt/shared"} in mounts

    module, cfg = entrypoint_config(job["spec"]["entrypoint"])
    assert module == "raydbb.jobs.pipeline"
    assert cfg.out.startswith("/mnt/shared/") and cfg.data.root.startswith("/mnt/shared/")
    assert cfg.inpaint.tokens_dir == f"{cfg.out}/tokens"
    check_resources(kuberay_groups(spec), cfg)


def test_dockerfile_bakes_in_raydbb_and_the_configs() -> None:
    text = (REPO / "cluster" / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-" in text
    assert "COPY --chown=ray:users jobs ./jobs" in text and "WORKDIR /app" in text
    assert "pip install --no-cache-dir ." in text


def test_resource_check_catches_an_oversized_pool() -> None:
    """The checker itself: more inpaint actors than the inpaint group's GPUs (raydbb's placement check,
    the pool being pinned there by its node label), fewer (an idle A100), or mask+prune over one
    node's GPU, all fail."""
    groups = launcher_groups(yaml.safe_load(LAUNCHER.read_text()))
    _, cfg = entrypoint_config(yaml.safe_load(LAUNCHER.read_text())["metadata"]["raydbb"]["entrypoint"])
    too_many = cfg.model_copy(deep=True)
    too_many.inpaint.resources.actors = 9  # the L4s have room, but the pool is pinned to the 8 A100s
    with pytest.raises(AssertionError, match=r"inpaint.resources: stage inpaint: 9 actors x 8 CPU \+ 1 GPU "
                                             r"on nodes labelled raydbb-stages=inpaint do not fit .* hold 8"):
        check_resources(groups, too_many)
    too_few = cfg.model_copy(deep=True)
    too_few.inpaint.resources.actors = 7
    with pytest.raises(AssertionError, match="gpu_inpaint: 8 GPUs for 7 inpaint actors x 1.0"):
        check_resources(groups, too_few)
    crowded = cfg.model_copy(deep=True)
    crowded.prune.resources.num_gpus = 0.5
    with pytest.raises(AssertionError, match=r"gpu_masks: \['mask', 'prune', 'select'\] need 1.25 GPUs"):
        check_resources(groups, crowded)
