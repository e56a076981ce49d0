"""The whole DDB run as an ordered list of named, resumable steps.

    synth ─ train_erm ─ invert ─ generate ─ retrain ─ evaluate

Each step calls its owning module's function (``write_synthetic``, ``train_erm``,
``run_inversion``, ``run_generate``, ``run_retrain``, ``evaluate_checkpoint``) — the same code the
CLI commands run. A finished step leaves a marker ``OUT/.steps/<step>.json`` with a fingerprint of its inputs:
the config fields it reads (resource settings such as actor counts, batch sizes and the Ray
address are left out: they change how fast a step runs, not what it computes) and the run ids of
the steps before it. A rerun skips every step whose fingerprint still matches and whose output
exists, so a finished run re-run takes seconds. When a step's inputs changed — or a step before
it ran again — its old outputs are moved to ``OUT/.stale/<time>-<step>/`` (never deleted) and it
runs again, and so does everything after it; ``on_change="refuse"`` stops with the list of changed
fields instead.

The CLI commands ``raydbb train-erm|invert|generate|retrain`` are the same steps run one at a time
(:func:`run_command`), and ``raydbb tune`` is one more step after them (:data:`TUNE`, not part of
a whole run): they write and honour the same markers, so a folder started by hand can be
finished by ``python -m raydbb.jobs.pipeline`` and the other way round. A command whose step is out
of date runs it again in place (``on_change="resume"``): the step's own code then resumes
(generation skips the samples already in the manifest, inversion restarts from its checkpoints) or
refuses (generation with other settings, unless ``--allow-changed``).

The resolved config (every default spelled out, ``inpaint.tokens_dir`` pointed at ``OUT/tokens``)
is written to ``OUT/config.yaml``.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from raydbb import storage
from raydbb.config import GENERATE_INPUTS, RaydbbConfig, changed_values, config_values, inpaint_model_stamp
from raydbb.errors import ConfigError, RaydbbError
from raydbb.ids import safe_join
from raydbb.rundir import METRICS_FILE, RunDir

# Checkpoints the evaluate step scores, by entry name in OUT/metrics.json -> folder in the run.
# "ddb" (the retrain step's) is scored when present: a run asked for only up to ERM has none.
CHECKPOINTS: dict[str, Callable[[RunDir], Path]] = {"erm": lambda r: r.erm, "ddb": lambda r: r.ddb}
OPTIONAL_CHECKPOINTS = frozenset({"ddb"})

@dataclass(frozen=True)
class Step:
    """One named step: what it reads, how it runs, what it leaves behind."""

    name: str
    help: str
    inputs: tuple[str, ...]
    """Dotted config prefixes the step's result depends on (``"inpaint"``, ``"data.root"``)."""
    run: Callable[[RaydbbConfig, bool], dict[str, Any]]
    """``run(cfg, progress) -> summary`` (small, JSON-serialisable)."""
    done_file: Callable[[RaydbbConfig], Path]
    """A file that exists once the step has finished (a marker alone is not trusted)."""
    outputs: Callable[[RaydbbConfig], list[Path]]
    """What the step writes; moved to ``OUT/.stale`` before it re-runs with changed inputs."""
    reads: tuple[str, ...] | None = None
    """The earlier steps whose outputs it reads (their run ids join its fingerprint); None = all."""
    stamps: Callable[[RaydbbConfig], dict[str, str]] | None = None
    """Contents it reads beyond config values (a model folder's files), joined to its inputs as
    ``stamp.<name>``: replacing them under the same name makes the step out of date."""


# ----------------------------------------------------------------------------------------------
# The steps: thin calls into the owning modules (imported lazily so a rerun that skips everything
# does not import torch, Ray or diffusers).


def _synth(cfg: RaydbbConfig, progress: bool) -> dict[str, Any]:
    from raydbb.data.synthetic import write_synthetic

    syn = cfg.data.synthetic
    given = {k: v for k, v in syn.model_dump().items() if k != "seed" and v is not None}
    seed = cfg.seed if syn.seed is None else syn.seed
    root = write_synthetic(cfg.data.root, seed=seed, progress=progress, **given)
    return {"root": str(root), "seed": seed, **given}


def _train_erm(cfg: RaydbbConfig, progress: bool) -> dict[str, Any]:
    from raydbb.training.erm import train_erm
    from raydbb.training.metrics import format_group_table

    result = train_erm(cfg)
    print(format_group_table(result.metrics, title=f"ERM: epoch {result.best_epoch} selected by val "
                                                   f"worst-group accuracy ({result.checkpoint_dir})"))
    return {"checkpoint": str(result.checkpoint_dir), "best_epoch": result.best_epoch,
            "worst_group_accuracy": {s: m["worst_group_accuracy"] for s, m in result.metrics.items()}}


def _invert(cfg: RaydbbConfig, progress: bool) -> dict[str, Any]:
    from raydbb.ddb.inversion.run import run_inversion

    results = run_inversion(cfg, progress=progress)
    for r in results:
        print(f"  token {r['token']} for {r['class_name']}: {r['status']}")
    return {"classes": results}


def generate_step(cfg: RaydbbConfig, progress: bool, repainter: Callable[..., Any] | None = None
                  ) -> dict[str, Any]:
    """The generate step's body: :func:`raydbb.ddb.generate.run_generate` with ``repainter`` (None:
    the diffusion one), its summary printed and returned."""
    from raydbb.ddb.generate import diffusion_repainter, format_summary, run_generate

    summary = run_generate(cfg, progress=progress, repainter=repainter or diffusion_repainter)
    print(format_summary(summary))
    return summary


def retrain_summary(result: Any) -> dict[str, Any]:
    """The marker summary of a retraining run (a :class:`~raydbb.ddb.retrain.run.RetrainResult`)."""
    return {"checkpoint": str(result.checkpoint_dir), "mode": result.run["mode"],
            "best_epoch": result.run["best_epoch"], "repaints": result.run["repaints"],
            "worst_group_accuracy": {s: m["worst_group_accuracy"] for s, m in result.metrics.items()}}


def run_retrain_step(cfg: RaydbbConfig, progress: bool, manifest: str | Path | None = None) -> dict[str, Any]:
    """The retrain step: :func:`~raydbb.ddb.retrain.head.retrain` over ``manifest`` (default OUT's),
    its before/after table and where it wrote printed; returns the marker summary."""
    from raydbb.ddb.retrain.head import retrain

    result = retrain(cfg, manifest, progress=progress)
    print(result.table())
    print(f"wrote {result.checkpoint_dir} (metrics.json, {result.run['mode']} retraining, "
          f"epoch {result.run['best_epoch']} selected by val worst-group accuracy)")
    return retrain_summary(result)


def _evaluate(cfg: RaydbbConfig, progress: bool) -> dict[str, Any]:
    from raydbb.data.registry import load_records
    from raydbb.training.evaluate import evaluate_checkpoint
    from raydbb.training.metrics import format_group_table

    records = load_records(cfg.data)
    doc: dict[str, Any] = {}
    for name, folder in CHECKPOINTS.items():
        ckpt = folder(RunDir(cfg.out))
        if name in OPTIONAL_CHECKPOINTS and not (ckpt / "classifier.json").is_file():
            continue
        metrics = evaluate_checkpoint(ckpt, records, ("val", "test"), device=cfg.device, progress=progress)
        doc[name] = {**metrics, "run": {"checkpoint": str(ckpt), "dataset": records.name,
                                        "data_root": str(cfg.data.root)}}
        print(format_group_table(metrics, title=f"{name}: {ckpt} on {records.name}"))
    storage.write_json(RunDir(cfg.out).metrics, doc)
    return {name: {split: m["worst_group_accuracy"] for split, m in entry.items() if split != "run"}
            for name, entry in doc.items()}


SYNTH = Step(
    "synth", "draw the synthetic benchmark into data.root (only when it has no metadata.csv)",
    ("data.name", "data.root", "data.synthetic", "seed"), _synth,
    done_file=lambda c: Path(c.data.root) / "metadata.csv",
    outputs=lambda c: [p for p in [Path(c.data.root).resolve()] if _inside(p, c.out)],
)
TRAIN_ERM = Step(
    "train_erm", "train the ERM classifier, select on val worst-group accuracy -> OUT/erm",
    ("data", "classifier", "train"), _train_erm,
    done_file=lambda c: RunDir(c.out).erm / "classifier.json",
    outputs=lambda c: [RunDir(c.out).erm],
)
INVERT = Step(
    "invert", "token pool + one learned token per class (textual inversion) -> OUT/tokens",
    ("invert", "inpaint.model", "select", "mask", "generate.classifier", "seed"), _invert,
    done_file=lambda c: RunDir(c.out).tokens,
    outputs=lambda c: [RunDir(c.out).tokens, RunDir(c.out).token_pool],
    stamps=inpaint_model_stamp,
)
GENERATE = Step(
    "generate", "select, mask, inpaint, prune -> OUT/images, OUT/manifest",
    GENERATE_INPUTS, generate_step,
    done_file=lambda c: RunDir(c.out).manifest,
    outputs=lambda c: RunDir(c.out).generated,
    stamps=inpaint_model_stamp,
)
RETRAIN = Step(
    "retrain", "originals + kept repaints, λ-weighted loss, from the ERM weights -> OUT/ddb",
    ("data", "train", "retrain", "prune.delta", "prune.prob_rule"), run_retrain_step,
    done_file=lambda c: RunDir(c.out).ddb / METRICS_FILE,
    outputs=lambda c: [RunDir(c.out).ddb],
)
EVALUATE = Step(
    "evaluate", "group metrics of every checkpoint on val and test -> OUT/metrics.json",
    ("data",), _evaluate,
    done_file=lambda c: RunDir(c.out).metrics,
    outputs=lambda c: [RunDir(c.out).metrics],
)
ALL_STEPS: tuple[Step, ...] = (SYNTH, TRAIN_ERM, INVERT, GENERATE, RETRAIN, EVALUATE)
STEP_NAMES: tuple[str, ...] = tuple(s.name for s in ALL_STEPS)


def run_tune_step(cfg: RaydbbConfig, progress: bool, manifest: str | Path | None = None) -> dict[str, Any]:
    """The tune step: :func:`~raydbb.ddb.tune.run_tune` over ``manifest`` (default OUT's), its trials
    table printed; returns the marker summary (``best``: the path of best.yaml)."""
    from raydbb.ddb.tune import format_trials, run_tune

    result = run_tune(cfg, manifest, progress=progress)
    print(format_trials(result.trials))
    print(f"wrote {result.best_path} and {result.trials_path}")
    return {"best": str(result.best_path), "trials": str(result.trials_path), "count": len(result.trials),
            "best_objective": result.best_objective}


TUNE = Step(
    "tune", "Ray Tune over prune thresholds, repaint shares, λ_c and lr -> OUT/tune/best.yaml",
    ("data", "classifier", "train", "retrain", "prune", "tune", "seed"), run_tune_step,
    done_file=lambda c: RunDir(c.out).tune / "best.yaml",
    outputs=lambda c: [RunDir(c.out).tune],
    reads=(TRAIN_ERM.name, GENERATE.name),  # not retrain's: its own full retraining must not re-tune
)
"""Not part of a whole run: ``raydbb tune`` runs it after the pipeline's steps (:func:`run_command`),
so it is skipped when nothing it reads changed and runs again when the repaints or ERM did."""
COMMAND_STEPS: tuple[Step, ...] = (TUNE,)


def _inside(path: Path, root: str | Path) -> bool:
    base = Path(root).resolve()
    return path == base or base in path.parents


# ----------------------------------------------------------------------------------------------
# Which steps a config runs, and with which inputs


def resolve_config(cfg: RaydbbConfig, *, tokens_learned_here: bool = True) -> RaydbbConfig:
    """A copy of ``cfg`` with what the pipeline decides filled in: an unset ``inpaint.tokens_dir``
    becomes OUT/tokens — always for a whole run (its invert step writes them), only when they
    exist for a single command (``tokens_learned_here=False``: without them prompts name the class)."""
    resolved = cfg.model_copy(deep=True)
    if not tokens_learned_here:
        from raydbb.ddb.generate import with_learned_tokens

        return with_learned_tokens(resolved)[0]
    if resolved.inpaint.tokens_dir is None:
        resolved.inpaint.tokens_dir = str(RunDir(cfg.out).tokens)
    return resolved


def pipeline_steps(cfg: RaydbbConfig) -> list[Step]:
    """The steps ``cfg`` runs, in order.

    ``synth`` only for ``data.name=synthetic`` when ``data.root`` has no ``metadata.csv`` yet (or
    this run folder drew it); ``invert`` unless ``inpaint.tokens_dir`` points at tokens learned
    elsewhere.
    """
    steps: list[Step] = []
    if cfg.data.name == "synthetic" and (not (Path(cfg.data.root) / "metadata.csv").is_file()
                                         or _marker_path(cfg.out, SYNTH.name).is_file()):
        steps.append(SYNTH)
    steps.append(TRAIN_ERM)
    tokens = cfg.inpaint.tokens_dir
    if tokens is None or Path(tokens).resolve() == RunDir(cfg.out).tokens:
        steps.append(INVERT)
    steps += [GENERATE, RETRAIN, EVALUATE]
    return steps


def step_inputs(step: Step, cfg: RaydbbConfig, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config values ``step`` depends on, as ``{dotted.field: value}`` (resource fields left out),
    plus the command-line ``options`` that change its result, as ``option.<name>``."""
    given = {f"option.{k}": v for k, v in sorted((options or {}).items())}
    stamps = {f"stamp.{k}": v for k, v in sorted(step.stamps(cfg).items())} if step.stamps else {}
    return {**config_values(cfg, step.inputs), **stamps, **given}


def fingerprint(inputs: dict[str, Any], upstream: dict[str, str | None]) -> str:
    """Hash of a step's inputs and the run ids of the steps before it."""
    return storage.json_digest({"inputs": inputs, "upstream": upstream})


# ----------------------------------------------------------------------------------------------
# Markers


def _marker_path(out: str | Path, name: str) -> Path:
    return RunDir(out).steps / f"{name}.json"


def read_marker(out: str | Path, name: str) -> dict[str, Any] | None:
    """The marker of a finished step, or None (missing or unreadable: the step counts as not done)."""
    path = _marker_path(out, name)
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return marker if isinstance(marker, dict) and "fingerprint" in marker else None


def _write_marker(out: str | Path, marker: dict[str, Any]) -> None:
    storage.write_text(_marker_path(out, marker["step"]), json.dumps(marker, indent=2, default=str) + "\n")


def _why_changed(marker: dict[str, Any], inputs: dict[str, Any], upstream: dict[str, str | None]) -> str:
    changed = changed_values(marker.get("inputs", {}), inputs)
    rerun = [n for n, rid in upstream.items() if marker.get("upstream", {}).get(n) != rid]
    parts = []
    if changed:
        parts.append("config changed (" + "; ".join(changed[:6]) + (" ..." if len(changed) > 6 else "") + ")")
    if rerun:
        parts.append(f"earlier step(s) {', '.join(rerun)} ran again")
    return " and ".join(parts) or "its marker is from another raydbb version"


def _archive(step: Step, cfg: RaydbbConfig) -> Path | None:
    """Move the step's existing outputs under ``OUT/.stale/<time>-<step>/``; returns that folder."""
    out = Path(cfg.out).resolve()
    existing = [p for p in step.outputs(cfg) if p.exists()]
    if not existing:
        return None
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{step.name}-{uuid.uuid4().hex[:4]}"
    dest = safe_join(RunDir(out).stale, name)
    for path in existing:
        target = dest / Path(path).resolve().relative_to(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(target))
    return dest


# ----------------------------------------------------------------------------------------------
# The runner


def _select(pipeline: list[Step], steps: list[str] | None) -> list[str]:
    names = [s.name for s in pipeline]
    if steps is None:
        return names
    for name in steps:
        if name not in STEP_NAMES + tuple(names):
            raise ConfigError(f"step {name!r}: expected one of {names}")
        if name not in names:
            why = ("data.root already holds a dataset" if name == SYNTH.name
                   else "inpaint.tokens_dir points at tokens learned elsewhere")
            raise ConfigError(f"step {name!r} is not part of this run ({why}); steps here: {names}")
    return [n for n in names if n in steps]


def run_steps(
    cfg: RaydbbConfig,
    steps: list[str] | None = None,
    *,
    progress: bool = True,
    on_change: Literal["rerun", "refuse", "resume"] = "rerun",
    pipeline: list[Step] | None = None,
    options: dict[str, Any] | None = None,
    tokens_learned_here: bool = True,
) -> dict[str, dict[str, Any]]:
    """Run the pipeline of ``cfg`` (or only ``steps`` of it), skipping steps that are already done.

    Returns ``{step: {"status": "skipped" | "ran", "seconds": s, "summary": {...}}}`` for the
    steps asked for. See the module docstring for how reruns and config changes are handled.
    ``pipeline`` replaces :func:`pipeline_steps` (for custom step lists); ``options`` (command-line
    choices that change a result, e.g. another manifest) join the inputs of the steps asked for;
    ``tokens_learned_here`` is passed to :func:`resolve_config`.
    """
    if on_change not in ("rerun", "refuse", "resume"):
        raise ConfigError(f"on_change={on_change!r}: expected 'rerun', 'refuse' or 'resume'")
    cfg = resolve_config(cfg, tokens_learned_here=tokens_learned_here)
    out = Path(cfg.out)
    pipeline = pipeline_steps(cfg) if pipeline is None else pipeline
    wanted = _select(pipeline, steps)
    out.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(RunDir(out).config)

    results: dict[str, dict[str, Any]] = {}
    upstream: dict[str, str | None] = {}
    for index, step in enumerate(pipeline, start=1):
        marker = read_marker(out, step.name)
        if step.name not in wanted:
            upstream[step.name] = marker["run_id"] if marker else None
            continue
        inputs = step_inputs(step, cfg, options)
        before = upstream if step.reads is None else {n: r for n, r in upstream.items() if n in step.reads}
        fp = fingerprint(inputs, before)
        head = f"[{index}/{len(pipeline)}] {step.name}"
        if marker and marker["fingerprint"] == fp and step.done_file(cfg).exists():
            print(f"{head}: already done ({marker.get('finished_at', '?')}); skipped")
            results[step.name] = {"status": "skipped", "seconds": 0.0, "summary": marker.get("summary", {})}
            upstream[step.name] = marker["run_id"]
            continue
        if marker and marker["fingerprint"] != fp:
            why = _why_changed(marker, inputs, before)
            if on_change == "refuse":
                raise RaydbbError(f"step {step.name} in {out} is out of date: {why}; rerun with --on-change "
                                  f"rerun (moves its outputs to {RunDir(out).stale}) or use another out")
            if on_change == "resume":
                print(f"{head}: {why}; running it again in place")
            else:
                moved = _archive(step, cfg)
                where = f"old outputs moved to {moved}; " if moved else ""
                print(f"{head}: {why}; {where}running again")
        print(f"{head}: {step.help}")
        _marker_path(out, step.name).unlink(missing_ok=True)  # not done until it finishes again
        start = time.perf_counter()
        summary = step.run(cfg, progress)
        seconds = time.perf_counter() - start
        marker = {"step": step.name, "fingerprint": fp, "run_id": uuid.uuid4().hex, "inputs": inputs,
                  "upstream": before.copy(), "seconds": round(seconds, 2),
                  "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"), "summary": summary}
        _write_marker(out, marker)
        print(f"{head}: finished in {seconds:.1f} s")
        results[step.name] = {"status": "ran", "seconds": seconds, "summary": summary}
        upstream[step.name] = marker["run_id"]
    return results


def manifest_options(cfg: RaydbbConfig, manifest: str | Path | None) -> dict[str, Any]:
    """The ``options`` of a command that reads another run's manifest (``--manifest``): that run folder
    joins the step's fingerprint, so a rerun with another manifest runs again; ``{}`` for OUT's own."""
    if not manifest:
        return {}
    from raydbb.ddb.redecide import run_folder

    folder = run_folder(manifest).resolve()
    return {} if folder == Path(cfg.out).resolve() else {"manifest": str(folder)}


def run_command(cfg: RaydbbConfig, step: str, run: Callable[[RaydbbConfig, bool], dict[str, Any]], *,
                progress: bool = True, options: dict[str, Any] | None = None,
                stdout_for_result: bool = False) -> dict[str, Any]:
    """One step of ``cfg``'s pipeline (or of :data:`COMMAND_STEPS`, after it), as a CLI command runs
    it: ``run`` (the command's call, with its own options bound) in place of the step's, through
    :func:`run_steps` with ``on_change="resume"``.

    Returns that step's entry of :func:`run_steps` (``status``, ``seconds``, ``summary``). Defaults
    resolve as for a whole run, except that ``inpaint.tokens_dir`` is only pointed at OUT/tokens
    when tokens are there (:func:`resolve_config`). ``stdout_for_result`` sends what the step prints
    to stderr, so that stdout can carry only the command's result (``--json``).
    """
    import contextlib
    import sys

    pipeline = pipeline_steps(cfg) + [s for s in COMMAND_STEPS if s.name == step]
    pipeline = [replace(s, run=run) if s.name == step else s for s in pipeline]
    with contextlib.redirect_stdout(sys.stderr) if stdout_for_result else contextlib.nullcontext():
        return run_steps(cfg, [step], progress=progress, on_change="resume", pipeline=pipeline,
                         options=options, tokens_learned_here=False)[step]
