"""The original training images retraining uses: as they are, or round-tripped through the
inpainter's VAE inside their masks (``retrain.round_trip_originals``; the why is in
:mod:`raydbb.ddb.stages.round_trip`).

The round-tripped images are written once per run under ``OUT/round_trip/<key>/``, where the key
names the model (by its files' digest), the dilation and the working resolution: a rerun reuses
them, and another model or setting gets a folder of its own instead of mixing with the old one.
"""

from __future__ import annotations

import pandas as pd

from raydbb.config import RaydbbConfig, inpaint_model_stamp
from raydbb.errors import ConfigError
from raydbb.rundir import RunDir
from raydbb.storage import json_digest


def round_trip_key(cfg: RaydbbConfig) -> str:
    """12 hex digits naming the model (files' digest), ``mask.dilate``, ``inpaint.resolution`` and,
    when on, ``inpaint.match_noise`` (left out when off, so earlier folders keep their key)."""
    what = {**inpaint_model_stamp(cfg), "dilate": cfg.mask.dilate, "resolution": cfg.inpaint.resolution}
    if cfg.inpaint.match_noise:
        what["match_noise"] = True
    return json_digest(what, 12)


def missing_masks(train: pd.DataFrame) -> str | None:
    """The one-line problem when some of ``train``'s images have no object mask to round-trip inside
    (checked by ``--dry-run`` too); None when every image has one."""
    masks = train["mask"] if "mask" in train.columns else pd.Series(None, index=train.index)
    missing = int((masks.isna() | (masks.astype(str) == "")).sum())
    if not missing:
        return None
    return (f"retrain.round_trip_originals=true: {missing} of {len(train)} training images have no object "
            "mask; expected the dataset to give one per image (its mask column), or set "
            "retrain.round_trip_originals=false")


def training_originals(cfg: RaydbbConfig, train: pd.DataFrame, progress: bool = True) -> pd.DataFrame:
    """``train`` (the records' training split) with ``path`` pointing at the images retraining
    reads: unchanged, or with ``retrain.round_trip_originals`` the round-tripped copies."""
    if not cfg.retrain.round_trip_originals:
        return train
    problem = missing_masks(train)
    if problem:
        raise ConfigError(problem)
    from raydbb.ddb.stages.round_trip import RoundTripStage
    from raydbb.engine.executor import execute, start_engine
    from raydbb.engine.stage import on_device

    out_dir = RunDir(cfg.out).round_trip(round_trip_key(cfg))
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = RoundTripStage(cfg.inpaint.model, cfg.mask.dilate, out_dir, cfg.inpaint.resolution,
                           cfg.inpaint.match_noise, resources=cfg.inpaint.resources)
    on_device([stage], cfg.device)
    start_engine("ray", cfg.ray, progress)
    paths: dict[str, str] = {}
    for batch in execute([stage], train.loc[:, ["sample_id", "path", "mask"]].reset_index(drop=True)):
        paths.update(zip(batch["sample_id"], batch["round_trip_path"], strict=True))
    print(f"originals round-tripped through the VAE of {cfg.inpaint.model} inside their masks "
          f"(dilated {cfg.mask.dilate} px): {len(paths)} images in {out_dir}")
    return train.assign(path=train["sample_id"].map(paths))
