"""``raydbb generate``: score/select on the driver, then one streaming pass of plain stages.

    records ─ score (load → score) ─ select majority, τ, token pool
            └ generate: load → mask → expand → inpaint → prune → write ─ manifest parts

A pipeline is a plain list of :class:`~raydbb.engine.stage.Stage` objects. ``engine="ray"``
streams it through Ray Data actor pools (:func:`raydbb.engine.adapter.build_dataset`);
``engine="loop"`` runs the same objects in a sequential loop (:func:`run_loop`, the benchmark
baseline). Either way the driver receives only scalar manifest rows and writes the manifest.

Resume: the driver reads the manifest first, drops every (source, target, variant) whose
sample_id is already recorded, and tells the expand stage what is left (``todo`` column).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from raydbb.config import RaydbbConfig, StageResources
from raydbb.data.records import RecordSet
from raydbb.engine.adapter import (
    auto_block_rows,
    build_dataset,
    concat_batches,
    run_loop,
    source_dataset,
)
from raydbb.engine.chain import ChainStage, stage_names
from raydbb.engine.manifest import (
    ManifestWriter,
    finished_sample_ids,
    read_manifest,
    remove_stale_temp_files,
)
from raydbb.engine.select import (
    class_quota,
    class_tau,
    select_majority,
    token_pool,
    write_tau,
    write_token_pool,
)
from raydbb.engine.stage import Batch, Stage, num_rows
from raydbb.engine.stages.expand import ExpandStage, all_pairs, encode_todo, make_sample_id
from raydbb.engine.stages.load import LoadStage
from raydbb.engine.stages.score import ScoreStage
from raydbb.engine.stages.write import WriteStage
from raydbb.errors import ConfigError, DataError, RaydbbError

__all__ = ["run_loop", "run_generate", "generate_samples", "execute", "source_rows", "format_summary"]

logger = logging.getLogger(__name__)

ENGINES = ("ray", "loop")
SELECT_DIR = "select"


def source_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Record rows (common schema) as pipeline source rows (see ``SOURCE_COLUMNS`` in load.py)."""
    return pd.DataFrame({
        "source_id": frame["sample_id"].astype(str).to_numpy(dtype=object),
        "source_path": frame["path"].astype(str).to_numpy(dtype=object),
        "source_label": frame["label"].to_numpy(dtype=np.int64),
        "split": frame["split"].astype(str).to_numpy(dtype=object),
        "dataset_mask_path": np.array(["" if m is None or pd.isna(m) else str(m) for m in frame["mask"]],
                                      dtype=object),
    })


def execute(stages: list[Stage], rows: pd.DataFrame, engine: str = "ray",
            block_rows: int | None = None) -> Iterator[Batch]:
    """Stream ``rows`` through ``stages`` and yield the last stage's output batches.

    With Ray, ``block_rows`` (default :func:`~raydbb.engine.adapter.auto_block_rows`) sets the
    rows per input block: the unit Ray Data schedules, overlaps and keeps in flight.
    """
    if engine not in ENGINES:
        raise RaydbbError(f"engine {engine!r}: expected one of {list(ENGINES)}")
    if engine == "loop":
        yield from run_loop(stages, rows, block_rows)
        return
    block = block_rows or auto_block_rows(len(rows), stages)
    ds = build_dataset(source_dataset(rows, block), stages)
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


def classifier_dir(cfg: RaydbbConfig) -> Path:
    """The ERM checkpoint folder: ``generate.classifier`` or ``<out>/erm``."""
    path = Path(cfg.generate.classifier) if cfg.generate.classifier else Path(cfg.out) / "erm"
    if not (path / "classifier.json").is_file():
        raise RaydbbError(f"ERM checkpoint {path} not found (no classifier.json); run raydbb train-erm "
                          "or set generate.classifier=DIR")
    return path


def _weights_stamp(ckpt: Path) -> str:
    weights = ckpt / "model.safetensors"
    return f"{ckpt.resolve()}@{weights.stat().st_mtime_ns if weights.exists() else 0}"


def scoring_stages(cfg: RaydbbConfig, ckpt: Path) -> list[Stage]:
    """The scoring pass as stages: load, score (with ``layout=fused`` one chain on the scoring pool:
    each scoring actor reads its own images)."""
    stages = [LoadStage(cfg.generate.io), ScoreStage(ckpt, cfg.select.resources)]
    return arrange(stages, cfg.generate.layout, cfg.select.resources, "select.resources")


def score_training_set(cfg: RaydbbConfig, records: RecordSet, ckpt: Path, engine: str = "ray",
                       progress: bool = True) -> pd.DataFrame:
    """Per-sample ``loss``/``p_true`` of every training image (cached in ``OUT/select/scores.parquet``).

    The cache is reused when it was computed by the same checkpoint (path and weights mtime) on the
    same training ids, so a resumed run selects exactly the same sources.
    """
    train = records.split("train")
    cache = Path(cfg.out) / SELECT_DIR / "scores.parquet"
    stamp = _weights_stamp(ckpt)
    if cache.is_file():
        import pyarrow.parquet as pq

        table = pq.read_table(cache)
        meta = table.schema.metadata or {}
        cached = table.to_pandas()
        if meta.get(b"classifier") == stamp.encode() and set(cached["sample_id"]) == set(train["sample_id"]):
            logger.info("reusing training-set scores from %s", cache)
            return cached
    stages = scoring_stages(cfg, ckpt)
    batches = []
    with tqdm(total=len(train), desc="score", unit="img", disable=not progress) as bar:
        for batch in execute(stages, source_rows(train), engine, cfg.generate.block_rows):
            batches.append({k: batch[k] for k in ("source_id", "source_label", "loss", "p_true", "error")})
            bar.update(num_rows(batch))
    out = concat_batches(batches).rename(columns={"source_id": "sample_id", "source_label": "label"})
    if len(out) != len(train):
        raise RaydbbError(f"scoring returned {len(out)} rows for {len(train)} training images")
    _write_scores(cache, out, stamp)
    return out


def _write_scores(path: Path, scores: pd.DataFrame, stamp: str) -> None:
    import pyarrow as pa

    from raydbb.engine.manifest import write_part_atomic

    table = pa.Table.from_pandas(scores, preserve_index=False)
    write_part_atomic(path, table.replace_schema_metadata({"classifier": stamp}))


def plan_sources(sources: pd.DataFrame, class_names: list[str], n_variants: int,
                 done: set[str]) -> tuple[pd.DataFrame, int, int]:
    """Attach the pending (target, variant) pairs per source; drop finished sources.

    Returns ``(rows with a todo column, expected samples, samples already in the manifest)``.
    """
    todo, expected, skipped = [], 0, 0
    for sid, label in zip(sources["source_id"], sources["source_label"], strict=True):
        pairs = all_pairs(int(label), len(class_names), n_variants)
        pending = [(t, v) for t, v in pairs if make_sample_id(str(sid), class_names[t], v) not in done]
        expected += len(pairs)
        skipped += len(pairs) - len(pending)
        todo.append(encode_todo(pending))
    planned = sources.assign(todo=np.array(todo, dtype=object))
    return planned[planned["todo"] != ""].reset_index(drop=True), expected, skipped


def generate_samples(sources: pd.DataFrame, stages: list[Stage], out: str | Path, *,
                     class_names: list[str], n_variants: int, engine: str = "ray",
                     rows_per_part: int = 2000, flush_seconds: float = 60.0,
                     block_rows: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Run ``stages`` (load … expand … write) over the pending part of ``sources`` into ``out``.

    Resumable: samples already in ``out``'s manifest are not generated again. Returns the run
    summary (see :func:`format_summary`).
    """
    out = Path(out)
    remove_stale_temp_files(out)
    planned, expected, skipped = plan_sources(sources, class_names, n_variants, finished_sample_ids(out))
    start = time.perf_counter()
    counts: dict[str, int] = {}
    generated = kept = written = 0
    stage_time: dict[str, list[float]] = {}
    writer = ManifestWriter(out, rows_per_part, flush_seconds)
    with writer, tqdm(total=expected - skipped, desc="generate", unit="sample", disable=not progress) as bar:
        if len(planned):
            for batch in execute(stages, planned, engine, block_rows):
                writer.add(batch)
                n = num_rows(batch)
                written += n
                generated += int(sum(1 for p in batch["image_path"] if p))
                kept += int(np.sum(batch["kept"]))
                for reason in batch["prune_reason"]:
                    counts[str(reason)] = counts.get(str(reason), 0) + 1
                for key, col in batch.items():
                    if key.startswith("t_"):
                        acc = stage_time.setdefault(key[2:], [0.0, 0])
                        acc[0] += float(np.nansum(col))
                        acc[1] += int(np.isfinite(col).sum())
                bar.update(n)
    wall = time.perf_counter() - start
    order = {name: i for i, name in enumerate(stage_names(stages))}
    return {
        "out": str(out),
        "engine": engine,
        "expected": expected,
        "skipped_resume": skipped,
        "written": written,
        "generated": generated,
        "kept": kept,
        "pruned": {r: c for r, c in sorted(counts.items()) if r != "kept"},
        "wall_s": wall,
        "samples_per_s": written / wall if wall > 0 and written else 0.0,
        "stages": {name: {"s_per_row": t / n if n else float("nan"),
                          "rows_per_busy_s": n / t if t > 0 else float("nan")}
                   for name, (t, n) in sorted(stage_time.items(), key=lambda kv: order.get(kv[0], 99))},
        "manifest_parts": [str(p) for p in writer.parts],
    }


def generation_stages(cfg: RaydbbConfig, class_names: list[str], ckpt: Path, tau: np.ndarray) -> list[Stage]:
    """The generation pipeline as a plain list: load, mask, expand, inpaint, prune, write — or, with
    ``generate.layout=fused``, one :class:`~raydbb.engine.chain.ChainStage` holding them."""
    from raydbb.engine.stages.inpaint import InpaintStage
    from raydbb.engine.stages.mask import MaskStage
    from raydbb.engine.stages.prune import PruneStage

    stages = [
        LoadStage(cfg.generate.io),
        MaskStage(cfg.mask, class_names, checkpoint_dir=str(ckpt)),
        ExpandStage(class_names, cfg.inpaint.n_variants, cfg.seed, cfg.generate.io),
        InpaintStage(cfg.inpaint, class_names),
        PruneStage(cfg.prune, classifier_dir=str(ckpt), tau=tau),
        WriteStage(cfg.out, {"classifier": str(ckpt)}, cfg.generate.io),
    ]
    return arrange(stages, cfg.generate.layout, cfg.generate.fused, "generate.fused")


def arrange(stages: list[Stage], layout: str, pool: StageResources, pool_field: str) -> list[Stage]:
    """``stages`` as the adapter should map them: unchanged for ``layout=pools``, else one
    :class:`ChainStage` on the pool ``pool`` (the config field ``pool_field``, for errors)."""
    if layout == "pools":
        return stages
    on_gpu = [s.name for s in stages if s.resources.num_gpus > 0]
    if on_gpu and pool.num_gpus == 0:
        raise ConfigError(f"generate.layout=fused with {pool_field}.num_gpus=0, but {', '.join(on_gpu)} "
                          "run on GPUs: give the fused pool GPUs or set their resources.num_gpus=0")
    return [ChainStage(stages, pool)]


def run_generate(cfg: RaydbbConfig, engine: str = "ray", progress: bool = True) -> dict[str, Any]:
    """The whole ``raydbb generate`` step for one config; returns the run summary."""
    from raydbb.data.registry import load_records
    from raydbb.models.checkpoint import read_classifier_meta

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out / "generate_config.yaml")
    ckpt = classifier_dir(cfg)
    records = load_records(cfg.data)
    meta_names = read_classifier_meta(ckpt).get("class_names")
    if meta_names and list(meta_names) != list(records.class_names):
        raise DataError(f"classifier {ckpt} was trained on classes {meta_names}, but the dataset has "
                        f"{records.class_names}")
    # Fail on config errors (class names, prompts, schedulers, tokens) before the scoring pass:
    # the stage constructors validate, and τ is not needed for that.
    class_quota(cfg.select, records.class_names, [0] * records.num_classes)
    generation_stages(cfg, records.class_names, ckpt, np.full(records.num_classes, 0.5))
    if engine == "ray":
        import ray

        from raydbb.ray_utils import init_ray

        init_ray(cfg.ray)
        # Ray Data's per-operator progress (bars on a terminal, log lines in a job's log)
        ray.data.DataContext.get_current().enable_progress_bars = progress
    scores = score_training_set(cfg, records, ckpt, engine, progress)
    tau = class_tau(scores, records.num_classes)
    write_tau(out, records.class_names, tau, str(ckpt))
    write_token_pool(out, token_pool(scores, records, cfg.select, cfg.seed))
    selected = select_majority(scores, records.class_names, cfg.select)
    (out / SELECT_DIR).mkdir(parents=True, exist_ok=True)
    selected.to_csv(out / SELECT_DIR / "selected.csv", index=False)
    frame = records.frame.set_index("sample_id").loc[selected["sample_id"]].reset_index()
    stages = generation_stages(cfg, records.class_names, ckpt, tau)
    summary = generate_samples(
        source_rows(frame), stages, out, class_names=records.class_names,
        n_variants=cfg.inpaint.n_variants, engine=engine, rows_per_part=cfg.generate.manifest_rows_per_part,
        flush_seconds=cfg.generate.flush_seconds, block_rows=cfg.generate.block_rows, progress=progress)
    summary["scored"] = len(scores)
    summary["unreadable_train_images"] = int((~np.isfinite(scores["loss"].to_numpy(dtype=float))).sum())
    summary["selected"] = {name: int((selected["label"] == y).sum())
                           for y, name in enumerate(records.class_names)}
    summary["tau"] = {name: float(t) for name, t in zip(records.class_names, tau, strict=True)}
    summary["manifest_rows_total"] = len(read_manifest(out, resolve_paths=False))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The closing summary printed by ``raydbb generate``."""
    lines = [f"raydbb generate -> {summary['out']} ({summary['engine']} engine)"]
    if "selected" in summary:
        sel = ", ".join(f"{k}: {v}" for k, v in summary["selected"].items())
        tau = ", ".join(f"{k}: {v:.3f}" for k, v in summary["tau"].items())
        lines.append(f"  scored {summary['scored']} training images ({summary['unreadable_train_images']} "
                     f"unreadable); selected sources {sel}; tau {tau}")
    pruned = ", ".join(f"{k} {v}" for k, v in summary["pruned"].items()) or "none"
    lines += [
        f"  expected samples   {summary['expected']}",
        f"  skipped (resume)   {summary['skipped_resume']}",
        f"  written this run   {summary['written']} in {summary['wall_s']:.1f} s "
        f"({summary['samples_per_s']:.2f} samples/s)",
        f"  generated images   {summary['generated']}",
        f"  kept               {summary['kept']}",
        f"  pruned / skipped   {pruned}",
    ]
    if summary["stages"]:
        lines.append("  stage throughput (per actor, while busy; rows before expand are sources):")
        for name, st in summary["stages"].items():
            lines.append(f"    {name:<10} {st['s_per_row'] * 1000:9.1f} ms/row  "
                         f"{st['rows_per_busy_s']:9.2f} rows/s")
    if "manifest_rows_total" in summary:
        lines.append(f"  manifest rows      {summary['manifest_rows_total']} (read with "
                     "raydbb.engine.manifest.read_manifest or pandas.read_parquet)")
    return "\n".join(lines)
