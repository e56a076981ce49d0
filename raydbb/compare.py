"""``raydbb compare``: every method x seed on one dataset, side by side.

Each method x seed is an independent Ray task (at most ``max_parallel`` at a time) that runs the
method's grid (:mod:`raydbb.baselines.registry`) and writes
``OUT/compare/runs/<method>/seed_<k>/result.json``: the selected configuration's val and test
metrics, the grid, the chosen values, every trial, the selection rule, the group labels used and
the wall seconds. A rerun skips every method x seed whose ``result.json`` exists with the same
fingerprint (the config fields the method reads, the seed, the method and its grid); one whose
inputs changed is moved to ``OUT/compare/.stale/`` and runs again. ERM runs first for every seed:
DFR, MaskTune and DaC start from that seed's ERM model.

From all results, ``OUT/compare/results.csv`` (one row per method x seed x split) and
``OUT/compare/table.md`` (mean ± std over seeds; the DDB paper's reported WGA for Waterbirds,
CelebA and MetaShift) are written.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from raydbb import storage
from raydbb.baselines.registry import METHODS, PAPER_DATASETS, PAPER_ONLY, get_method, resolve_grid
from raydbb.config import RaydbbConfig, config_values, inpaint_model_stamp
from raydbb.errors import ConfigError, RaydbbError
from raydbb.rundir import RunDir

RESULT_FILE = "result.json"
RESULTS_CSV = "results.csv"
TABLE_MD = "table.md"


def fingerprint(cfg: RaydbbConfig, method: str, seed: int, grid: dict[str, list[Any]]) -> str:
    """Hash of what decides a method x seed's result: the config fields the method reads
    (``Method.reads``; resource settings and ``out`` left out), the seed and the grid. A change to
    DDB's sections therefore reruns DDB only, not ERM and the baselines; so does an inpainting model
    replaced under the same name (:func:`~raydbb.config.inpaint_model_stamp`)."""
    reads = get_method(method).reads
    values = config_values(cfg, reads if reads is not None else tuple(RaydbbConfig.model_fields))
    if reads is None or any(r.split(".")[0] == "inpaint" for r in reads):  # the model's files too
        values |= {f"stamp.{k}": v for k, v in inpaint_model_stamp(cfg).items()}
    doc = {"config": values, "method": method, "seed": int(seed), "grid": grid}
    return storage.json_digest(doc)


def read_result(run_dir: Path, fp: str) -> dict[str, Any] | None:
    """The finished result in ``run_dir`` if its fingerprint is ``fp``."""
    path = run_dir / RESULT_FILE
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    return doc if doc.get("fingerprint") == fp else None


def run_job(cfg_json: dict[str, Any], method: str, seed: int, grid: dict[str, list[Any]], run_dir: str,
            erm_dir: str | None, fp: str) -> dict[str, Any]:
    """One method x seed (the body of a Ray task): run its grid, write and return ``result.json``."""
    from raydbb.baselines.common import MethodContext, seeded
    from raydbb.baselines.registry import run_method
    from raydbb.data.registry import load_records

    cfg = seeded(RaydbbConfig.model_validate(cfg_json), seed)
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    records = load_records(cfg.data)
    result = run_method(method, MethodContext(cfg, records, out, Path(erm_dir) if erm_dir else None), grid)
    m = get_method(method)
    doc = {
        "method": method, "title": m.title, "citation": m.citation, "seed": int(seed),
        "reference_upper_bound": m.reference,
        "train_group_labels": m.train_labels, "val_group_labels": m.val_labels,
        "hparams": result.hparams, "grid": grid, "selection": result.selection, "trials": result.trials,
        "metrics": result.metrics, "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "notes": result.notes, "dataset": records.name,
        "wall_seconds": round(time.perf_counter() - start, 2), "fingerprint": fp,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    storage.write_json(out / RESULT_FILE, doc)
    return doc


@dataclass
class Job:
    method: str
    seed: int
    grid: dict[str, list[Any]]
    run_dir: Path
    fingerprint: str
    erm_dir: Path | None = None


def plan(cfg: RaydbbConfig, methods: Sequence[str], seeds: Sequence[int],
         grids: dict[str, dict[str, list[Any]]] | None = None) -> list[list[Job]]:
    """The jobs in two waves: ERM for every seed (when asked for or needed), then the rest."""
    if not methods:
        raise ConfigError("compare: no methods given")
    if not seeds:
        raise ConfigError("compare: no seeds given")
    for name in [*methods, *(grids or {})]:
        get_method(name)
    rundir = RunDir(cfg.out)
    wanted = list(dict.fromkeys(methods))
    if any(METHODS[m].needs_erm for m in wanted) and "erm" not in wanted:
        wanted.insert(0, "erm")

    def job(name: str, seed: int) -> Job:
        grid = resolve_grid(METHODS[name], (grids or {}).get(name))
        erm = rundir.compare_run("erm", seed) / "model" if METHODS[name].needs_erm else None
        fp = fingerprint(cfg, name, seed, grid)
        return Job(name, int(seed), grid, rundir.compare_run(name, seed), fp, erm)

    first = [job("erm", s) for s in seeds if "erm" in wanted]
    rest = [job(m, s) for m in wanted if m != "erm" for s in seeds]
    return [w for w in (first, rest) if w]


def _archive(run_dir: Path, out: Path) -> Path:
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{run_dir.parent.name}-{run_dir.name}"
    stale = RunDir(out).compare / ".stale" / name
    stale.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(run_dir), str(stale))
    return stale


def _result(ref: Any, job: Job) -> dict[str, Any]:
    """A finished task's result; a user error inside it comes back as the same one-line error."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, RaydbbError):
            raise type(err.cause)(f"{job.method} seed {job.seed}: {err.cause}") from None
        raise


def run_compare(cfg: RaydbbConfig, methods: Sequence[str], seeds: Sequence[int],
                grids: dict[str, dict[str, list[Any]]] | None = None, max_parallel: int = 2,
                use_ray: bool = True) -> dict[str, Any]:
    """Run every method x seed not already done, then write ``results.csv`` and ``table.md``.

    Returns ``{"ran": [...], "skipped": [...], "results": [result docs], "csv": path, "table": path}``.
    ``use_ray=False`` runs the jobs one after the other in this process (same results).
    """
    from raydbb.data.registry import load_records

    waves = plan(cfg, methods, seeds, grids)
    load_records(cfg.data)  # a missing or broken dataset fails here, in one line, before any task
    cfg_json = cfg.model_dump(mode="json")
    out = Path(cfg.out)
    ran, skipped, docs = [], [], {}
    if use_ray:
        import ray

        from raydbb.ray_utils import init_ray

        init_ray(cfg.ray)
        remote = ray.remote(num_cpus=0, max_retries=0)(run_job)
    for wave in waves:
        todo = []
        for job in wave:
            done = read_result(job.run_dir, job.fingerprint)
            if done is not None:
                print(f"compare: {job.method} seed {job.seed}: already done ({done['finished_at']}); skipped")
                skipped.append((job.method, job.seed))
                docs[(job.method, job.seed)] = done
                continue
            if job.run_dir.exists():
                moved = _archive(job.run_dir, out)
                print(f"compare: {job.method} seed {job.seed}: inputs changed; old folder moved to {moved}")
            todo.append(job)
        args = [(cfg_json, j.method, j.seed, j.grid, str(j.run_dir), str(j.erm_dir) if j.erm_dir else None,
                 j.fingerprint) for j in todo]
        if use_ray:
            pending, by_ref = [], {}
            for job, a in zip(todo, args, strict=True):
                while len(pending) >= max(1, max_parallel):
                    ready, pending = ray.wait(pending, num_returns=1)
                    _collect(_result(ready[0], by_ref[ready[0]]), by_ref.pop(ready[0]), docs, ran)
                ref = remote.remote(*a)
                by_ref[ref] = job
                pending.append(ref)
                print(f"compare: {job.method} seed {job.seed}: started")
            for ref in pending:
                _collect(_result(ref, by_ref[ref]), by_ref[ref], docs, ran)
        else:
            for job, a in zip(todo, args, strict=True):
                print(f"compare: {job.method} seed {job.seed}: started")
                _collect(run_job(*a), job, docs, ran)
    ordered = [docs[key] for key in sorted(docs, key=_order(methods, seeds))]
    csv_path, table_path = write_outputs(ordered, out, cfg.data.name)
    return {"ran": ran, "skipped": skipped, "results": ordered, "csv": csv_path, "table": table_path}


def _collect(doc: dict[str, Any], job: Job, docs: dict, ran: list) -> None:
    docs[(job.method, job.seed)] = doc
    ran.append((job.method, job.seed))
    wga = doc["metrics"].get("test", {}).get("worst_group_accuracy")
    print(f"compare: {job.method} seed {job.seed}: finished in {doc['wall_seconds']:.0f} s; test WGA "
          + ("n/a" if wga is None else f"{100 * wga:.1f}"))


def _order(methods: Sequence[str], seeds: Sequence[int]):
    names = list(dict.fromkeys(["erm", *methods]))
    return lambda key: (names.index(key[0]) if key[0] in names else len(names), key[1])


def result_rows(docs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per method x seed x split (val, test)."""
    rows = []
    for doc in docs:
        for split in ("val", "test"):
            m = doc["metrics"].get(split)
            if not m:
                continue
            row = {
                "method": doc["method"], "seed": doc["seed"], "split": split,
                "reference_upper_bound": doc["reference_upper_bound"],
                "train_group_labels": doc["train_group_labels"], "val_group_labels": doc["val_group_labels"],
                "worst_group_accuracy": m.get("worst_group_accuracy"), "worst_group": m.get("worst_group"),
                "average_accuracy": m.get("average_accuracy"),
                "weighted_average_accuracy": m.get("weighted_average_accuracy"),
                **{f"acc[{g}]": a for g, a in (m.get("group_accuracy") or {}).items()},
                "hparams": json.dumps(doc["hparams"], sort_keys=True),
                "grid": json.dumps(doc["grid"], sort_keys=True), "selection": doc["selection"],
                "wall_seconds": doc["wall_seconds"],
            }
            rows.append(row)
    return pd.DataFrame(rows)


def _percent(values: Sequence[float] | pd.Series) -> pd.Series:
    return pd.to_numeric(pd.Series(values), errors="coerce").dropna() * 100


def mean_std(values: Sequence[float] | pd.Series) -> str:
    """Fractions over seeds as ``"mean ± sample std"`` in % (one value alone; ``n/a`` for none)."""
    v = _percent(values)
    if v.empty:
        return "n/a"
    if len(v) == 1:
        return f"{v.iloc[0]:.1f}"
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def min_max(values: Sequence[float] | pd.Series) -> str:
    """Fractions over seeds as ``"min–max"`` in % (``n/a`` for none)."""
    v = _percent(values)
    return "n/a" if v.empty else f"{v.min():.1f}–{v.max():.1f}"


def format_table(rows: pd.DataFrame, docs: list[dict[str, Any]], dataset: str) -> str:
    """table.md: mean ± std over seeds per method (test, and val WGA), the range of test WGA over
    seeds, labels used, paper WGA."""
    paper = dataset in PAPER_DATASETS
    head = ["method", "group labels (train/val)", "seeds", "test WGA %", "test WGA min–max %", "test avg %",
            "test weighted avg %", "val WGA %"] + (["paper WGA %"] if paper else [])
    lines = [f"# raydbb compare on {dataset}", "",
             "Mean ± sample std over seeds; WGA = worst-group accuracy; avg = accuracy over all samples; "
             "weighted avg = per-group accuracy weighted by the train group proportions. "
             "GroupDRO uses train group labels and is shown as a reference upper bound.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    titles = {d["method"]: get_method(d["method"]).label for d in docs}
    for method in dict.fromkeys(d["method"] for d in docs):
        mrows = rows[rows["method"] == method]
        test, val = mrows[mrows["split"] == "test"], mrows[mrows["split"] == "val"]
        meth = METHODS[method]
        cells = [titles[method], f"{meth.train_labels}/{meth.val_labels}", str(mrows["seed"].nunique()),
                 mean_std(test["worst_group_accuracy"]), min_max(test["worst_group_accuracy"]),
                 mean_std(test["average_accuracy"]),
                 mean_std(test["weighted_average_accuracy"]), mean_std(val["worst_group_accuracy"])]
        if paper:
            value = meth.paper_wga.get(dataset)
            cells.append("–" if value is None else f"{value:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    if paper:
        for title, values in PAPER_ONLY.values():
            value = values.get(dataset)
            cells = [f"{title} (paper only, not run)"] + [""] * (len(head) - 2)
            lines.append("| " + " | ".join(cells + ["–" if value is None else f"{value:.1f}"]) + " |")
    lines += ["", "## Hyper-parameters", "",
              "| method | seed | chosen | grid | selection | wall s |", "|---|---|---|---|---|---|"]
    for d in docs:
        chosen, grid = (json.dumps(d[k], sort_keys=True) for k in ("hparams", "grid"))
        lines.append(f"| {d['method']} | {d['seed']} | `{chosen}` | `{grid}` | {d['selection']} | "
                     f"{d['wall_seconds']:.0f} |")
    notes = {d["method"]: d["notes"] for d in docs if d.get("notes")}
    if notes:
        lines += ["", "## Notes", ""] + [f"- {m}: {n}" for m, n in notes.items()]
    return "\n".join(lines) + "\n"


def write_outputs(docs: list[dict[str, Any]], out: str | Path, dataset: str) -> tuple[Path, Path]:
    """Write ``OUT/compare/results.csv`` and ``OUT/compare/table.md`` from the result docs."""
    folder = RunDir(out).compare
    folder.mkdir(parents=True, exist_ok=True)
    rows = result_rows(docs)
    csv_path, table_path = folder / RESULTS_CSV, folder / TABLE_MD
    storage.write_text(csv_path, rows.to_csv(index=False))
    storage.write_text(table_path, format_table(rows, docs, dataset))
    return csv_path, table_path


def parse_grid_overrides(items: Sequence[str]) -> dict[str, dict[str, list[Any]]]:
    """``["jtt.T=1,2", "dfr.C=0.1"]`` -> ``{"jtt": {"T": [1, 2]}, "dfr": {"C": [0.1]}}`` (YAML values)."""
    import yaml

    grids: dict[str, dict[str, list[Any]]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        method, dot, param = key.strip().partition(".")
        if not sep or not dot or not param:
            raise ConfigError(f"--grid {item!r}: expected method.param=v1,v2")
        grids.setdefault(method, {})[param] = [yaml.safe_load(v) for v in raw.split(",") if v.strip()]
    return grids

