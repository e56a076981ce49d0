"""The token pool of each class, ready for textual inversion: images, their masks, skip reasons.

Pools are the select step's ``OUT/token_pool/<class>.csv``. Under ``invert.mask_mode=object`` each
pool image goes through the generation pipeline's own load and mask stages, so a token is learned
under the masks it is later used with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from raydbb.config import RaydbbConfig
from raydbb.data.records import RecordSet
from raydbb.ddb.tokens import read_json
from raydbb.errors import DataError
from raydbb.ids import safe_join, sanitize_id
from raydbb.rundir import RunDir
from raydbb.storage import write_json


@dataclass(frozen=True)
class PoolImage:
    """One token-pool image, its object mask (``None`` when there is none) and, when an earlier
    step rejected it (unreadable image, degenerate mask), the reason it is skipped."""

    path: str
    mask: str | None = None
    skip: str = ""


def read_token_pool(csv_path: str | Path) -> pd.DataFrame:
    """Read a token-pool CSV as the select step writes it: ``path`` and optional ``mask`` and
    ``sample_id`` columns (relative paths are relative to the CSV's folder; a missing sample_id
    is derived from the path). A missing file or column is a one-line :class:`DataError`."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"token pool {csv_path} not found; expected the select step's CSV")
    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    if "path" not in frame.columns:
        raise DataError(f"token pool {csv_path}: missing column 'path'; found {list(frame.columns)}")

    def resolve(p: str) -> str:
        return str(Path(p) if Path(p).is_absolute() else (csv_path.parent / p).resolve()) if p else ""

    paths = [resolve(p) for p in frame["path"]]
    return pd.DataFrame({
        "sample_id": frame["sample_id"] if "sample_id" in frame.columns else [sanitize_id(p) for p in paths],
        "path": paths,
        "mask": [resolve(m) for m in frame["mask"]] if "mask" in frame.columns else "",
    })


def prepare_pools(
    cfg: RaydbbConfig, records: RecordSet, engine: str = "ray", progress: bool = True
) -> dict[str, list[PoolImage]]:
    """The token pool of every class to invert, ready for :func:`plan_jobs`.

    Pools are the select step's ``OUT/token_pool/<class>.csv``; when one is missing they are
    written now, exactly as ``raydbb generate`` does (scores of the ERM checkpoint, cached in
    ``OUT/select``). Under ``invert.mask_mode=object`` every pool image then goes through the
    generation pipeline's own load and mask stages (``mask`` config: dataset / text / attribution
    masks, dilation, area limits), so the token is learned under the masks it will be used with;
    rejected images become recorded skips. Masks are written once to ``OUT/tokens/pool_masks``.
    """
    names = cfg.invert.classes or records.class_names
    if any(not RunDir(cfg.out).token_pool_csv(n).is_file() for n in names):
        _write_token_pools(cfg, records, engine, progress)
    frames = {n: read_token_pool(RunDir(cfg.out).token_pool_csv(n)) for n in names}
    if cfg.invert.mask_mode == "full":
        return {n: [PoolImage(p) for p in f["path"]] for n, f in frames.items()}
    masks = _pool_masks(cfg, records.class_names, frames, engine)
    return {n: [masks[i] for i in f["sample_id"]] for n, f in frames.items()}


def _write_token_pools(cfg: RaydbbConfig, records: RecordSet, engine: str, progress: bool) -> None:
    from raydbb.ddb.generate import classifier_dir, score_training_set
    from raydbb.ddb.select import token_pool, write_token_pool
    from raydbb.engine.executor import start_engine

    ckpt = classifier_dir(cfg, cfg.generate.classifier)
    start_engine(engine, cfg.ray, progress)
    scores = score_training_set(cfg, records, ckpt, engine, progress)
    write_token_pool(cfg.out, token_pool(scores, records, cfg.select, cfg.seed))


def _pool_masks(cfg: RaydbbConfig, class_names: list[str], frames: dict[str, pd.DataFrame],
                engine: str) -> dict[str, PoolImage]:
    """``{sample_id: PoolImage}`` with the mask stage's mask (or skip reason) for every pool image."""
    from raydbb.data.images import write_png_atomic
    from raydbb.ddb.generate import classifier_dir
    from raydbb.ddb.stages.mask import MaskStage
    from raydbb.engine.executor import execute, start_engine
    from raydbb.engine.stage import on_device
    from raydbb.engine.stages.load import LoadStage, source_rows

    folder = RunDir(cfg.out).pool_masks
    index_path = folder / "index.json"
    index = read_json(index_path) or {}
    mask_cfg = cfg.mask.model_dump(mode="json")
    done = index.get("rows", {}) if index.get("mask_config") == mask_cfg else {}
    rows = pd.concat([f.assign(label=class_names.index(n)) for n, f in frames.items()], ignore_index=True)
    rows = rows.drop_duplicates("sample_id")
    todo = rows[~rows["sample_id"].isin(done)]
    if len(todo):
        ckpt = classifier_dir(cfg, cfg.generate.classifier) if cfg.mask.source == "attribution" else None
        mask = MaskStage(cfg.mask, class_names, checkpoint_dir=ckpt)
        stages = on_device([LoadStage(cfg.generate.io), mask], cfg.device)
        start_engine(engine, cfg.ray)
        frame = todo.assign(split="train", mask=[m or None for m in todo["mask"]])
        for batch in execute(stages, source_rows(frame), engine):
            for i, sid in enumerate(batch["source_id"]):
                reason = str(batch["prune_reason"][i])
                if reason:
                    done[str(sid)] = {"mask": "", "skip": f"{reason}: {batch['error'][i]}".rstrip(": ")}
                    continue
                path = safe_join(folder, f"{sanitize_id(str(sid))}.png")
                write_png_atomic(path, np.asarray(batch["mask"][i]).astype(bool))
                done[str(sid)] = {"mask": str(path), "skip": ""}
        folder.mkdir(parents=True, exist_ok=True)
        write_json(index_path, {"mask_config": mask_cfg, "rows": done})
    paths = dict(zip(rows["sample_id"], rows["path"], strict=True))
    return {sid: PoolImage(paths[sid], done[sid]["mask"] or None, done[sid]["skip"]) for sid in paths}
