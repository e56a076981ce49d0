"""``raydbb generate``: score and select on the driver, then one streaming pass of plain stages.

    records ─ score (load → score) ─ select majority proxies, τ (Eq. 3), token pool
            └ generate: load → mask → expand → inpaint → prune → write ─ manifest parts

The stages between load and prune are the *repainter*: by default the text-prompted mask, the
expansion into (target class, variant) pairs and the diffusion inpainter (Eq. 2). A tool can hand
:func:`run_generate` another repainter (the perfect-counterfactual oracle does) and everything else
— selection, τ, pruning, the manifest, resume — stays the same code.

Resume: the driver reads the manifest first, drops every (source, target, variant) whose
sample_id is already recorded, and tells the expand stage what is left (``todo`` column).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from raydbb.config import RaydbbConfig
from raydbb.data.records import RecordSet
from raydbb.ddb.select import class_quota, class_tau, select_majority, token_pool, write_tau, write_token_pool
from raydbb.ddb.stages.expand import ExpandStage, all_pairs, encode_todo, make_sample_id
from raydbb.ddb.stages.score import ScoreStage
from raydbb.engine.adapter import concat_batches
from raydbb.engine.executor import arrange, execute, start_engine, stream_to_manifest
from raydbb.engine.manifest import (
    finished_sample_ids,
    read_manifest,
    remove_stale_temp_files,
    write_part_atomic,
)
from raydbb.engine.stage import Stage, num_rows
from raydbb.engine.stages.load import LoadStage, source_rows
from raydbb.engine.stages.write import WriteStage
from raydbb.engine.stats import format_stats
from raydbb.errors import ConfigError, DataError, RaydbbError
from raydbb.rundir import RunDir

logger = logging.getLogger(__name__)


def classifier_dir(cfg: RaydbbConfig, override: str | None = None,
                   field_name: str = "generate.classifier") -> Path:
    """The ERM checkpoint folder: ``override`` (the config field ``field_name``) or ``OUT/erm``;
    one line when it holds no checkpoint."""
    from raydbb.models.checkpoint import META_FILE, require_finished

    path = Path(override) if override else RunDir(cfg.out).erm
    if not (path / META_FILE).is_file():
        raise RaydbbError(f"ERM checkpoint {path} not found (no {META_FILE}); run raydbb train-erm "
                          f"or set {field_name}=DIR")
    require_finished(path, field_name)
    return path


def _weights_stamp(ckpt: Path) -> str:
    weights = ckpt / "model.safetensors"
    return f"{ckpt.resolve()}@{weights.stat().st_mtime_ns if weights.exists() else 0}"


def scoring_stages(cfg: RaydbbConfig, ckpt: Path) -> list[Stage]:
    """The scoring pass as stages: load, score (with ``layout=fused`` one chain on the scoring pool:
    each scoring actor reads its own images)."""
    stages = [LoadStage(cfg.generate.io), ScoreStage(ckpt, cfg.select.resources)]
    return arrange(stages, cfg.generate.layout, cfg.select.resources, "select.resources", cfg.device)


def score_training_set(cfg: RaydbbConfig, records: RecordSet, ckpt: Path, engine: str = "ray",
                       progress: bool = True) -> pd.DataFrame:
    """Per-sample ``loss``/``p_true`` of every training image (cached in ``OUT/select/scores.parquet``).

    The cache is reused when it was computed by the same checkpoint (path and weights mtime) on the
    same training ids, so a resumed run selects exactly the same sources.
    """
    train = records.split("train")
    cache = RunDir(cfg.out).scores
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
    remove_stale_temp_files(out)
    planned, expected, skipped = plan_sources(sources, class_names, n_variants, finished_sample_ids(out))
    stats = stream_to_manifest(planned, stages, out, total=expected - skipped, engine=engine,
                               rows_per_part=rows_per_part, flush_seconds=flush_seconds,
                               block_rows=block_rows, progress=progress)
    return {"out": str(out), "engine": engine, "expected": expected, "skipped_resume": skipped,
            **stats.summary()}


@dataclass(frozen=True)
class Repainter:
    """The stages that turn loaded sources into repaints (``image``, ``mask`` per expanded row),
    and the number of variants per (source, target) pair they make."""

    stages: list[Stage]
    n_variants: int


RepainterFactory = Callable[[RaydbbConfig, list[str], pd.DataFrame, Path], Repainter]
"""``(config, class names, selected source records, ERM checkpoint) -> Repainter``."""


def diffusion_repainter(cfg: RaydbbConfig, class_names: list[str], sources: pd.DataFrame | None,
                        ckpt: Path) -> Repainter:
    """DDB's repainter: mask the causal part (text, dataset or attribution masks), expand into
    (target class, variant) rows, repaint the mask with the diffusion inpainter (Eq. 2)."""
    from raydbb.ddb.stages.inpaint import InpaintStage
    from raydbb.ddb.stages.mask import MaskStage

    return Repainter([
        MaskStage(cfg.mask, class_names, checkpoint_dir=str(ckpt)),
        ExpandStage(class_names, cfg.inpaint.n_variants, cfg.seed, cfg.generate.io),
        InpaintStage(cfg.inpaint, class_names),
    ], cfg.inpaint.n_variants)


def generation_stages(cfg: RaydbbConfig, class_names: list[str], ckpt: Path, tau: np.ndarray,
                      repainter: Repainter | None = None) -> list[Stage]:
    """The generation pipeline as a plain list: load, the repainter's stages (default
    :func:`diffusion_repainter`), prune, write — or, with ``generate.layout=fused``, one
    :class:`~raydbb.engine.chain.ChainStage` holding them."""
    from raydbb.ddb.stages.prune import PruneStage

    painter = repainter or diffusion_repainter(cfg, class_names, None, ckpt)
    stages = [
        LoadStage(cfg.generate.io),
        *painter.stages,
        PruneStage(cfg.prune, classifier_dir=str(ckpt), tau=tau),
        WriteStage(cfg.out, {"classifier": str(ckpt)}, cfg.generate.io),
    ]
    return arrange(stages, cfg.generate.layout, cfg.generate.fused, "generate.fused", cfg.device)


def check_same_settings(cfg: RaydbbConfig, allow_changed: bool = False) -> None:
    """Refuse to add samples to a run folder whose manifest was made with other settings.

    The settings are the :data:`~raydbb.config.GENERATE_INPUTS` recorded in ``generate_config.yaml``
    and the digest of the inpainting model's files in ``generate_models.json`` (a model replaced
    under the same name is another setting). With ``allow_changed`` the change is appended to
    ``generate_changes.json`` (the run's provenance) and the run goes on.
    """
    from raydbb.config import GENERATE_INPUTS, changed_values, config_values, inpaint_model_stamp, load_config
    from raydbb.engine.manifest import part_files

    run = RunDir(cfg.out)
    if not run.generate_config.is_file() or not part_files(run.root):
        return
    recorded = json.loads(run.generate_models.read_text()) if run.generate_models.is_file() else {}
    old = {**config_values(load_config(run.generate_config), GENERATE_INPUTS),
           **{f"stamp.{k}": v for k, v in recorded.items()}}
    new = {**config_values(cfg, GENERATE_INPUTS),
           **{f"stamp.{k}": v for k, v in inpaint_model_stamp(cfg).items()}}
    changed = changed_values(old, new)
    if not changed:
        return
    if not allow_changed:
        shown = "; ".join(changed[:4]) + (f" (+{len(changed) - 4} more)" if len(changed) > 4 else "")
        raise ConfigError(f"{run.root} holds samples made with other settings ({shown}); use another out, "
                          "re-decide thresholds with raydbb prune, or pass --allow-changed to mix them "
                          "(recorded in generate_changes.json)")
    from raydbb import storage

    log = run.root / "generate_changes.json"
    history = json.loads(log.read_text()) if log.is_file() else []
    history.append({"at": time.strftime("%Y-%m-%d %H:%M:%S"), "changed": changed})
    storage.write_json(log, history)


def with_learned_tokens(cfg: RaydbbConfig) -> tuple[RaydbbConfig, str]:
    """``cfg`` with ``inpaint.tokens_dir`` pointed at ``OUT/tokens`` when it is unset and ``raydbb
    invert`` has written tokens there, as the pipeline does, and a line that says which prompts the
    run uses ("" when the config named the tokens)."""
    tokens = RunDir(cfg.out).tokens
    if cfg.inpaint.tokens_dir is not None:
        return cfg, ""
    if not tokens.is_dir():
        return cfg, (f"no learned tokens in {tokens}: prompts name the class only (run raydbb invert "
                     "first, or set inpaint.tokens_dir)")
    inpaint = cfg.inpaint.model_copy(update={"tokens_dir": str(tokens)})
    note = f"using the learned tokens in {tokens} (inpaint.tokens_dir)"
    return cfg.model_copy(update={"inpaint": inpaint}), note


def run_generate(cfg: RaydbbConfig, engine: str = "ray", progress: bool = True,
                 repainter: RepainterFactory = diffusion_repainter,
                 allow_changed: bool = False) -> dict[str, Any]:
    """The whole generate step for one config; returns the run summary. A run folder whose samples
    were made with other settings is refused (:func:`check_same_settings`)."""
    from raydbb.data.registry import load_records
    from raydbb.models.checkpoint import read_classifier_meta

    run = RunDir(cfg.out)
    tokens_note = ""
    if repainter is diffusion_repainter:  # the only one that prompts
        cfg, tokens_note = with_learned_tokens(cfg)
    check_same_settings(cfg, allow_changed)
    run.root.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(run.generate_config)
    from raydbb import storage
    from raydbb.config import inpaint_model_stamp

    storage.write_json(run.generate_models, inpaint_model_stamp(cfg))
    ckpt = classifier_dir(cfg, cfg.generate.classifier)
    records = load_records(cfg.data)
    meta_names = read_classifier_meta(ckpt).get("class_names")
    if meta_names and list(meta_names) != list(records.class_names):
        raise DataError(f"classifier {ckpt} was trained on classes {meta_names}, but the dataset has "
                        f"{records.class_names}")
    # Fail on config errors (class names, prompts, schedulers, tokens) before the scoring pass:
    # the stage constructors validate, and τ is not needed for that.
    class_quota(cfg.select, records.class_names, [0] * records.num_classes)
    names = records.class_names
    checked = generation_stages(cfg, names, ckpt, np.full(records.num_classes, 0.5),
                                repainter(cfg, names, records.frame.iloc[:0], ckpt))
    if tokens_note:  # after validation: a config error stays one line
        print(tokens_note, file=sys.stderr)
    on_gpus = [s.name for s in checked if s.resources.num_gpus > 0]
    if on_gpus and cfg.device == "cpu":
        print(f"device=cpu: {', '.join(on_gpus)} keep their GPU requests for placement but run their "
              "models on CPU (set device: cuda to use the GPUs)", file=sys.stderr)
    start_engine(engine, cfg.ray, progress)
    if engine == "ray":  # a plan the cluster cannot hold fails now, not after the scoring pass
        from raydbb.engine.adapter import check_placement

        check_placement(scoring_stages(cfg, ckpt))
        check_placement(checked)
    scores = score_training_set(cfg, records, ckpt, engine, progress)
    tau = class_tau(scores, records.num_classes)
    write_tau(run.root, records.class_names, tau, str(ckpt))
    write_token_pool(run.root, token_pool(scores, records, cfg.select, cfg.seed))
    selected = select_majority(scores, records.class_names, cfg.select)
    run.select.mkdir(parents=True, exist_ok=True)
    selected.to_csv(run.selected, index=False)
    frame = records.frame.set_index("sample_id").loc[selected["sample_id"]].reset_index()
    painter = repainter(cfg, names, frame, ckpt)
    summary = generate_samples(
        source_rows(frame), generation_stages(cfg, names, ckpt, tau, painter), run.root,
        class_names=records.class_names, n_variants=painter.n_variants, engine=engine,
        rows_per_part=cfg.generate.manifest_rows_per_part, flush_seconds=cfg.generate.flush_seconds,
        block_rows=cfg.generate.block_rows, progress=progress)
    summary["scored"] = len(scores)
    summary["unreadable_train_images"] = int((~np.isfinite(scores["loss"].to_numpy(dtype=float))).sum())
    summary["selected"] = {name: int((selected["label"] == y).sum())
                           for y, name in enumerate(records.class_names)}
    summary["tau"] = {name: float(t) for name, t in zip(records.class_names, tau, strict=True)}
    summary["manifest_rows_total"] = len(read_manifest(run.root, resolve_paths=False))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The closing summary printed by ``raydbb generate``."""
    lines = [f"raydbb generate -> {summary['out']} ({summary['engine']} engine)"]
    if "selected" in summary:
        sel = ", ".join(f"{k}: {v}" for k, v in summary["selected"].items())
        tau = ", ".join(f"{k}: {v:.3f}" for k, v in summary["tau"].items())
        lines.append(f"  scored {summary['scored']} training images ({summary['unreadable_train_images']} "
                     f"unreadable); selected sources {sel}; tau {tau}")
    lines += [f"  expected samples   {summary['expected']}",
              f"  skipped (resume)   {summary['skipped_resume']}",
              *format_stats(summary)]
    if "manifest_rows_total" in summary:
        lines.append(f"  manifest rows      {summary['manifest_rows_total']} (read with "
                     "raydbb.engine.manifest.read_manifest or pandas.read_parquet)")
    return "\n".join(lines)
