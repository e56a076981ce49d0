"""``--dry-run``: check a run before paying for it, and print its plan. Starts no Ray, writes nothing.

:func:`dry_run` collects every problem it finds (not only the first) and builds the plan from the
config alone:

* the dataset, read by its reader (its own checks), with counts per group of the train split;
* the models, from their configs only (no weights): the inpainter (a 9-channel diffusers
  inpainting pipeline), the text-mask detector and segmenter, the classifier's ImageNet weights
  file. A hub id that is neither a local folder nor in the Hugging Face cache is a problem when
  the hub cannot be reached (``HF_HUB_OFFLINE`` set, or the config download fails);
* the learned tokens (``inpaint.tokens_dir`` with a token per class, unless this run's invert
  step makes them);
* the steps, their stages and actors x CPUs/GPUs, against the machine the run would use: the
  local one (CPUs, GPUs), or a cluster's nodes read from its dashboard (``raydbb submit``);
* the expected number of generated samples: selected sources x (classes - 1) x n_variants.

What an earlier step of the pipeline makes (the synthetic data, ``OUT/erm``, ``OUT/tokens``,
the manifest) is listed as awaited, not as a problem, when it is not there yet.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raydbb.assets import resolve_packaged
from raydbb.config import RaydbbConfig, StageResources
from raydbb.engine.placement import Node, placement_problems
from raydbb.engine.stage import Stage
from raydbb.errors import RaydbbError
from raydbb.rundir import RunDir

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

#: steps each command runs (``pipeline``: :func:`raydbb.workflow.pipeline_steps`)
COMMAND_STEPS = {"generate": ["generate"], "invert": ["invert"], "train-erm": ["train_erm"],
                 "retrain": ["retrain"], "tune": ["tune"], "evaluate": ["evaluate"]}


@dataclass
class Resources:
    """The nodes the run may use and where they were read."""

    where: str
    nodes: list[Node]

    @property
    def gpus(self) -> float:
        return sum(n.gpus for n in self.nodes)


@dataclass
class Plan:
    """Problems (one line each: the run would not start or would fail) and the plan's lines."""

    problems: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    awaited: list[str] = field(default_factory=list)

    def text(self) -> str:
        out = list(self.lines)
        if self.awaited:
            awaited = list(dict.fromkeys(self.awaited))
            out += ["made by an earlier step, not there yet:"] + [f"  {a}" for a in awaited]
        return "\n".join(out)


# ---------------------------------------------------------------------------------- resources


def local_gpus() -> int:
    """GPUs this machine offers (CUDA_VISIBLE_DEVICES, else /dev/nvidia<N>); no CUDA is initialised."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len([p for p in Path("/dev").glob("nvidia[0-9]*")])


def local_resources(cfg: RaydbbConfig) -> Resources:
    cpus = float(cfg.ray.num_cpus or os.cpu_count() or 1)
    gpus = float(local_gpus())
    where = f"this machine ({cpus:g} CPUs{' from ray.num_cpus' if cfg.ray.num_cpus else ''}, {gpus:g} GPUs)"
    return Resources(where, [Node("local", cpus, gpus)])


def cluster_resources(address: str, timeout: float = 5.0) -> Resources:
    """Alive nodes' resources from a Ray dashboard (``http://HEAD:8265``), or a RaydbbError."""
    url = address.rstrip("/") + "/api/v0/nodes?detail=1&limit=10000"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 (user's own cluster)
            doc = json.loads(reply.read().decode())
    except (OSError, ValueError) as err:
        raise RaydbbError(f"cannot reach the Ray dashboard at {address} ({err})") from None
    nodes = doc.get("data", {}).get("result", {})
    nodes = nodes.get("result", []) if isinstance(nodes, dict) else nodes
    alive = [n for n in nodes if n.get("state", "ALIVE") == "ALIVE"]
    if not alive:
        raise RaydbbError(f"the Ray dashboard at {address} lists no alive node")
    found = [Node(str(n.get("node_id", i)), float(n.get("resources_total", {}).get("CPU", 0)),
                  float(n.get("resources_total", {}).get("GPU", 0)), dict(n.get("labels") or {}))
             for i, n in enumerate(alive)]
    where = (f"the cluster at {address} ({len(alive)} nodes, {sum(n.cpus for n in found):g} CPUs, "
             f"{sum(n.gpus for n in found):g} GPUs)")
    return Resources(where, found)


# ---------------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class StagePlan:
    step: str
    stage: str
    field: str  # the config field holding its resources
    actors: int  # 0 = plain tasks
    num_cpus: float
    num_gpus: float
    batch: int | None = None
    node_labels: tuple[tuple[str, str], ...] = ()

    def line(self) -> str:
        who = f"{self.actors} actors" if self.actors else "tasks"
        gpu = f" + {self.num_gpus:g} GPU" if self.num_gpus else ""
        batch = f", batch {self.batch}" if self.batch else ""
        return f"    {self.stage:<10} {who} x {self.num_cpus:g} CPU{gpu}{batch}   ({self.field})"


def _pool(step: str, stage: str, name: str, r: StageResources, tasks: bool = False) -> StagePlan:
    return StagePlan(step, stage, name, 0 if tasks else r.actors, r.num_cpus, r.num_gpus, r.batch_size,
                     tuple(sorted(r.node_labels.items())))


def stage_plans(cfg: RaydbbConfig, step: str, n_classes: int) -> list[StagePlan]:
    """The stages of one step with the resources the config gives them."""
    g = cfg.generate
    if step in ("train_erm", "retrain"):
        t = cfg.train
        n = t.num_workers
        return [StagePlan(step, "train", "train.num_workers", n, t.cpus_per_worker if n else 0,
                          1.0 if t.use_gpu and n else 0.0, t.batch_size)]
    if step == "invert":
        gpus = cfg.invert.num_gpus
        if gpus is None:
            gpus = 1.0 if cfg.device == "cuda" else 0.0
        n = len(cfg.invert.classes) if cfg.invert.classes else n_classes
        return [StagePlan(step, "per class", "invert.num_cpus/num_gpus", n, cfg.invert.num_cpus, gpus)]
    if step == "generate":
        score = [_pool(step, "score", "select.resources", cfg.select.resources)]
        if g.layout == "fused":
            return [*score, _pool(step, "fused", "generate.fused", g.fused)]
        return [*score, _pool(step, "load", "generate.io", g.io, tasks=True),
                _pool(step, "mask", "mask.resources", cfg.mask.resources),
                _pool(step, "expand", "generate.io", g.io, tasks=True),
                _pool(step, "inpaint", "inpaint.resources", cfg.inpaint.resources),
                _pool(step, "prune", "prune.resources", cfg.prune.resources),
                _pool(step, "write", "generate.io", g.io, tasks=True)]
    if step == "tune":
        tn = cfg.tune
        return [StagePlan(step, "trials", "tune.max_concurrent_trials", tn.max_concurrent_trials,
                          tn.cpus_per_trial, 0.0)]
    return []  # synth, evaluate: in the driver


def check_resources(plans: list[StagePlan], res: Resources, device: str, use_gpu: bool) -> list[str]:
    """One line per stage that cannot be placed on ``res``: GPUs asked of a machine without any, or
    pools (and the tasks beside them) that the nodes cannot hold at once."""
    problems = []
    if res.gpus == 0:  # one line for the device, one for every stage that asks GPUs
        if device == "cuda":
            problems.append(f"device=cuda but {res.where} has no GPU")
        if use_gpu:
            problems.append(f"train.use_gpu=true but {res.where} has no GPU")
        asking = sorted({p.field for p in plans if p.num_gpus > 0})
        if asking:
            problems.append(f"{', '.join(asking)} ask GPUs; {res.where} has none")
        plans = [p for p in plans if p.num_gpus == 0]
    return problems + _packing_problems(plans, res.nodes)


def _packing_problems(plans: list[StagePlan], nodes: list[Node]) -> list[str]:
    """:func:`raydbb.engine.placement.placement_problems` for each pass that runs its pools at once
    (the scoring pass, then generation; a training or inversion step alone), naming config fields."""
    def stand_in(p: StagePlan) -> Stage:
        stage = Stage(StageResources(actors=max(p.actors, 1), num_cpus=p.num_cpus, num_gpus=p.num_gpus,
                                     node_labels=dict(p.node_labels)))
        stage.name, stage.stateful = p.stage, p.actors > 0
        return stage

    passes: dict[tuple[str, bool], list[StagePlan]] = {}
    for p in plans:  # the scoring pass runs before the generation pools, never beside them
        passes.setdefault((p.step, p.stage == "score"), []).append(p)
    problems = []
    for group in passes.values():
        if group[0].stage == "score":
            group = group + [p for p in plans if p.step == group[0].step and p.stage == "load"]
        fields = {p.stage: p.field for p in group}
        for line in placement_problems([stand_in(p) for p in group], nodes):
            named = line.split(":", 1)[0].removeprefix("stage ").split(", ")  # "stage load, write: ..."
            problems.append(f"{', '.join(dict.fromkeys(fields.get(s, s) for s in named))}: {line}")
    return list(dict.fromkeys(problems))


# ---------------------------------------------------------------------------------- models


def _hub_cached(repo: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename)
    return Path(found).parent if isinstance(found, str) else None


def locate_model(name: str, field_name: str, probe: str) -> tuple[Path | None, str | None]:
    """``(local folder, None)`` for a folder or a cached hub id, ``(None, None)`` for a hub id to
    fetch, ``(None, problem)`` otherwise. ``probe`` is a file the model's folder must hold."""
    try:
        resolved = resolve_packaged(name)
    except RaydbbError as err:
        return None, f"{field_name}: {err}"
    path = Path(resolved).expanduser()
    if path.is_dir():
        return path, None
    if not HUB_ID.match(resolved) or path.exists():
        return None, f"{field_name}={name}: no such folder (and not a hub id owner/name)"
    cached = _hub_cached(resolved, probe)
    if cached is not None:
        return cached.parent if "/" in probe else cached, None
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return None, (f"{field_name}={name}: not a local folder and not in the Hugging Face cache, "
                      "and HF_HUB_OFFLINE is set")
    unreachable = hub_unreachable(resolved)
    if unreachable:
        return None, (f"{field_name}={name}: not a local folder, not in the Hugging Face cache, and the "
                      f"hub cannot be reached ({unreachable})")
    return None, None


def hub_unreachable(repo: str, timeout: float = 5.0) -> str | None:
    """Why the Hugging Face hub cannot answer for ``repo`` (one short request), or None."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        with urllib.request.urlopen(f"{endpoint}/api/models/{repo}", timeout=timeout):  # noqa: S310
            return None
    except urllib.error.HTTPError as err:
        return None if err.code in (401, 403) else f"HTTP {err.code}"  # gated: a token may open it
    except (OSError, ValueError) as err:
        return str(getattr(err, "reason", err))


def check_inpainter(name: str, field_name: str = "inpaint.model") -> str | None:
    """Problem with the inpainting model (its unet/vae configs only), or None."""
    from raydbb.ddb.inversion.model import check_model_configs

    folder, problem = locate_model(name, field_name, "unet/config.json")
    if problem:
        return problem
    try:
        check_model_configs(str(folder) if folder is not None else name)
    except RaydbbError as err:
        return f"{field_name}: {str(err).splitlines()[0]}"
    except Exception as err:  # noqa: BLE001 (a hub that cannot be reached: any library error)
        first = str(err).splitlines()[0] if str(err) else ""
        return f"{field_name}={name}: cannot read its configs ({type(err).__name__}: {first})"
    return None


def initializer_problems(cfg: RaydbbConfig, class_names: list[str]) -> list[str]:
    """One line per class whose token would have no one-token initializer word in the inpainter's
    tokenizer (``raydbb invert`` would stop there), read from the tokenizer files only."""
    folder, problem = locate_model(cfg.inpaint.model, "inpaint.model", "tokenizer/vocab.json")
    if problem or folder is None or not (folder / "tokenizer").is_dir():
        return []  # the inpainter check reports it, or the hub has it: invert checks at its start
    from transformers import CLIPTokenizer

    from raydbb.ddb.inversion.run import resolve_initializer
    from raydbb.models.inpaint_pipeline import transformers_errors_only

    with transformers_errors_only():
        tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    problems = []
    for name in cfg.invert.classes or class_names:
        try:
            resolve_initializer(name, cfg.invert.initializer, tokenizer)
        except RaydbbError as err:
            problems.append(str(err))
    return problems


def check_transformers_model(name: str, field_name: str) -> str | None:
    folder, problem = locate_model(name, field_name, "config.json")
    if problem or folder is None:
        return problem
    if not (folder / "config.json").is_file():
        return f"{field_name}={name}: {folder} has no config.json"
    return None


# ---------------------------------------------------------------------------------- the dry run


def _steps(cfg: RaydbbConfig, command: str, steps: list[str] | None) -> list[str]:
    from raydbb.workflow import pipeline_steps

    if steps:
        return steps
    if command in COMMAND_STEPS:
        return COMMAND_STEPS[command]
    return [s.name for s in pipeline_steps(cfg)]


def _expected(cfg: RaydbbConfig, per_class: list[int]) -> tuple[list[int], int]:
    from raydbb.ddb.select import class_quota

    quota = class_quota(cfg.select, cfg_class_names(cfg, len(per_class)), per_class)
    return quota, sum(quota) * max(len(per_class) - 1, 0) * cfg.inpaint.n_variants


def cfg_class_names(cfg: RaydbbConfig, n: int) -> list[str]:
    return list(cfg.data.class_names or [f"class {i}" for i in range(n)])


def _dataset(cfg: RaydbbConfig, plan: Plan, made_by_synth: bool,
             round_trip: bool = False) -> tuple[list[str], list[int]] | None:
    """Read the dataset; add its counts to the plan. ``(class names, train count per class)``.
    ``round_trip``: every training image needs an object mask (``retrain.round_trip_originals``)."""
    from raydbb.data.registry import load_records

    d = cfg.data
    if made_by_synth and not (Path(d.root) / d.csv_file).is_file():
        from raydbb.data.synthetic import CLASS_NAMES, DEFAULT_N_TRAIN, LANDBIRD_FRACTION

        n = d.synthetic.n_train or DEFAULT_N_TRAIN
        plan.awaited.append(f"{d.root}: the synthetic benchmark ({n} train images), drawn by synth")
        land = round(n * LANDBIRD_FRACTION)
        return list(CLASS_NAMES), [land, n - land]
    try:
        records = load_records(d)
    except RaydbbError as err:
        plan.problems.append(f"data: {str(err).splitlines()[0]}")
        return None
    train = records.split("train")
    counts = records.split_group_counts()
    plan.lines.append(f"data: {records.name} at {d.root}: " + ", ".join(
        f"{split} {sum(c.values())}" for split, c in counts.items()))
    if "train" in counts:
        plan.lines.append("  train groups: " + ", ".join(f"{g} {n}" for g, n in counts["train"].items()))
    if cfg.mask.source == "dataset" and train["mask"].isna().all() and len(train):
        plan.problems.append(f"mask.source=dataset but the train split of {d.root} has no masks")
    if round_trip:
        from raydbb.ddb.retrain.originals import missing_masks

        problem = missing_masks(train)
        if problem:
            plan.problems.append(problem)
    per_class = [int((train["label"] == i).sum()) for i in range(records.num_classes)]
    return list(records.class_names), per_class


def _need(plan: Plan, path: Path, what: str, made_by: str | None, field_name: str | None) -> None:
    """A file/folder a step reads: awaited when an earlier step makes it, else a problem when missing."""
    if path.exists():
        return
    if made_by:
        plan.awaited.append(f"{path}: {what}, made by {made_by}")
    else:
        plan.problems.append(f"{field_name}={path}: {what} not found")


def dry_run(cfg: RaydbbConfig, command: str = "pipeline", steps: list[str] | None = None,
            resources: Resources | None = None, manifest: str | None = None) -> Plan:
    """Check ``cfg`` for ``command`` (``generate``, ``retrain``, ..., or ``pipeline``: every step)
    and build its plan. ``resources`` default: this machine. Reads configs and the dataset index only."""
    from raydbb.workflow import STEP_NAMES

    plan = Plan()
    names = _steps(cfg, command, steps)
    unknown = [n for n in names if n not in (*STEP_NAMES, "tune")]
    if unknown:
        plan.problems.append(f"unknown step {unknown[0]!r}; expected some of {', '.join(STEP_NAMES)}")
    plan.lines.append(f"dry run of {command}: out={cfg.out}; steps: {' -> '.join(names)}")
    rundir = RunDir(cfg.out)
    # retraining passes the originals through the inpainter's VAE: it needs the model and the masks
    round_trip = "retrain" in names and cfg.retrain.round_trip_originals
    data = _dataset(cfg, plan, made_by_synth=cfg.data.name == "synthetic", round_trip=round_trip)
    class_names, per_class = data if data else (cfg_class_names(cfg, 2), [])

    # models and inputs, step by step
    uses_inpainter = {"invert", "generate"} & set(names)
    if cfg.classifier.pretrained and cfg.classifier.weights and "train_erm" in names:
        _need(plan, Path(cfg.classifier.weights), "ImageNet weights file", None, "classifier.weights")
    if uses_inpainter or round_trip:
        problem = check_inpainter(cfg.inpaint.model)
        plan.lines.append(f"inpainter: {cfg.inpaint.model}" + (" (configs read)" if not problem else ""))
        if problem:
            plan.problems.append(problem)
        elif "invert" in names and data:
            plan.problems += initializer_problems(cfg, class_names)
        if uses_inpainter and cfg.mask.source == "text":
            for fname in ("mask.detector", "mask.segmenter"):
                model = getattr(cfg.mask, fname.split(".")[1])
                problem = check_transformers_model(model, fname)
                if problem:
                    plan.problems.append(problem)
    for name in names:
        if name in ("invert", "generate"):
            given = cfg.generate.classifier
            _need(plan, Path(given) if given else rundir.erm, "ERM checkpoint",
                  None if given else "train_erm", "generate.classifier")
        if name == "generate":
            tokens = cfg.inpaint.tokens_dir
            if tokens is None and command == "pipeline":  # the pipeline points it at OUT/tokens
                tokens = str(rundir.tokens)
            if tokens is not None and data is None:
                made = "invert" if Path(tokens).resolve() == rundir.tokens else None
                _need(plan, Path(tokens), "learned tokens", made, "inpaint.tokens_dir")
            elif tokens is not None:
                made = "invert" if Path(tokens).resolve() == rundir.tokens else None
                from raydbb.ddb.tokens import EMBEDS_FILE, token_dir

                for cname in class_names:
                    _need(plan, token_dir(tokens, cname) / EMBEDS_FILE, f"learned token of {cname}", made,
                          "inpaint.tokens_dir")
            else:
                plan.lines.append("tokens: none (inpaint.tokens_dir unset: prompts use the class name)")
        if name in ("retrain", "tune"):
            given = cfg.retrain.checkpoint
            _need(plan, Path(given) if given else rundir.erm, "start checkpoint",
                  None if given else "train_erm", "retrain.checkpoint")
            folder = Path(manifest) if manifest else rundir.root
            if not (folder / "manifest").is_dir() and not (folder.name == "manifest" and folder.is_dir()):
                plan.awaited.append(f"{folder / 'manifest'}: the repaints, made by generate")
        if name == "retrain" and round_trip:
            from raydbb.ddb.retrain.originals import round_trip_key

            n = f"{sum(per_class)} " if per_class else ""
            plan.lines.append(f"round trip: the {n}training originals through the VAE of {cfg.inpaint.model} "
                              f"inside their masks (dilated {cfg.mask.dilate} px) -> "
                              f"{rundir.round_trip(round_trip_key(cfg))} (reused when there)")

    # resources
    res = resources or local_resources(cfg)
    if resources is None and (cfg.ray.address or os.environ.get("RAY_ADDRESS")):
        plan.lines.append(f"resources: the run connects to {cfg.ray.address or os.environ['RAY_ADDRESS']}; "
                          "checked against this machine only (raydbb submit --dry-run reads a cluster's)")
    stages = [p for name in names for p in stage_plans(cfg, name, len(class_names))]
    plan.lines.append(f"resources: {res.where}")
    for name in names:
        mine = [p for p in stages if p.step == name]
        plan.lines.append(f"  {name}" + ("" if mine else ": in the driver"))
        plan.lines += [p.line() for p in mine]
        if name == "generate" and per_class:
            quota, total = _expected(cfg, per_class)
            per = ", ".join(map(str, quota))
            plan.lines.append(f"    expected samples: {sum(quota)} sources ({per} per class) x "
                              f"{len(per_class) - 1} other classes x {cfg.inpaint.n_variants} variants "
                              f"= {total}")
    on_gpus = sorted({p.field for p in stages if p.num_gpus > 0 and p.step == "generate"})
    if on_gpus and cfg.device == "cpu":
        plan.lines.append(f"device=cpu: {', '.join(on_gpus)} ask GPUs for placement only; "
                          "their models run on CPU (device: cuda uses the GPUs)")
    plan.problems += check_resources(stages, res, cfg.device, cfg.train.use_gpu and bool(
        {"train_erm", "retrain"} & set(names)))
    return plan


def format_result(plan: Plan) -> tuple[str, int]:
    """What the command prints (the plan, then one line per problem) and its exit code (0 / 2)."""
    text = plan.text()
    if plan.problems:
        text += f"\n{len(plan.problems)} problem(s): the run would not start or would fail"
        return text, 2
    return text + "\nno problem found: the run would start (nothing was run or written)", 0


def print_dry_run(plan: Plan) -> int:
    """Print the plan to stdout and each problem as one line on stderr; the exit code."""
    import sys

    text, code = format_result(plan)
    print(text)
    for problem in plan.problems:
        print(f"raydbb: dry run: {problem}", file=sys.stderr)
    return code


DRY_RUN_HELP = ("check the config, dataset, model configs, tokens and resources, print the plan (steps, "
                "stages, actors x CPUs/GPUs, expected samples) and exit: 0 when the run would start, 2 with "
                "one line per problem; runs nothing, writes nothing, starts no Ray")


def add_dry_run_arg(parser: Any) -> None:
    """``--dry-run`` on a command's parser."""
    parser.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)


def run_dry(cfg: RaydbbConfig, command: str, steps: list[str] | None = None,
            resources: Resources | None = None, manifest: str | None = None,
            problems: list[str] | None = None, notes: list[str] | None = None) -> int:
    """:func:`dry_run`, plus the command's own ``problems`` and ``notes``, printed; the exit code."""
    plan = dry_run(cfg, command, steps, resources, manifest)
    plan.problems += problems or []
    plan.lines += notes or []
    return print_dry_run(plan)
