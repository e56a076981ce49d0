"""DDB with an ideal inpainter on the synthetic benchmark: perfect counterfactual repaints.

The synthetic benchmark can redraw any of its samples with the *other* bird on the same background
in the same pose (:func:`raydbb.data.synthetic.render_sample` with the other label): exactly the
repaint DDB asks the diffusion inpainter for. :func:`run_oracle_generate` runs the generate step
with that redraw in place of the mask and inpaint stages — everything else is the real engine:
per-sample ERM losses and the majority selection (``select``), τ, the prune stage (every score
recorded, ``prune`` thresholds applied), the PNG writer and the Parquet manifest, resumable. So
``raydbb retrain`` and ``raydbb tune`` run on its output exactly as on a diffusion run, and the
result bounds what retraining can gain on this benchmark when the repaints are perfect.

    python -m raydbb.oracle --config jobs/configs/synthetic.yaml [section.field=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from raydbb.config import RaydbbConfig, StageResources
from raydbb.engine.stage import Batch, Stage, empty_image, empty_mask, num_rows, object_column, pending_rows
from raydbb.errors import DataError, RaydbbError

ORACLE_MODEL = "synthetic-counterfactual"


def synthetic_index(path: str) -> int:
    """The sample index in a synthetic benchmark file name (``images/train_00012.png`` -> 12)."""
    stem = Path(path).stem
    try:
        return int(stem.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        raise DataError(f"{path}: not a synthetic benchmark image name (<split>_<index>.png)") from None


class CounterfactualStage(Stage):
    """Adds ``mask`` and ``image`` to expanded rows: the source redrawn with the target class's bird.

    ``sources`` maps ``source_id`` to ``(index, spurious)`` in the benchmark's training split;
    ``seed``/``size`` are the benchmark's drawing parameters. The mask is the union of both birds
    (every pixel that changed). Rows decided upstream pass through with empty image and mask.
    """

    name = "counterfactual"
    stateful = False

    def __init__(self, sources: dict[str, tuple[int, int]], seed: int, size: int,
                 resources: StageResources | None = None) -> None:
        super().__init__(resources)
        self.sources = dict(sources)
        self.seed, self.size = int(seed), int(size)

    def __call__(self, batch: Batch) -> Batch:
        from raydbb.data.synthetic import render_sample

        n = num_rows(batch)
        todo = pending_rows(batch)
        images, masks = [empty_image()] * n, [empty_mask()] * n
        for i in np.flatnonzero(todo):
            index, spurious = self.sources[str(batch["source_id"][i])]
            source, target = (render_sample(self.seed, "train", index, int(label), spurious, self.size)
                              for label in (batch["source_label"][i], batch["target_label"][i]))
            images[i] = target.image
            masks[i] = (source.mask | target.mask).astype(np.uint8)
        return {**batch, "image": object_column(images), "mask": object_column(masks),
                "mask_source": np.full(n, "oracle", dtype=object),
                "inpaint_model": np.full(n, ORACLE_MODEL, dtype=object)}


def run_oracle_generate(cfg: RaydbbConfig, engine: str = "ray", progress: bool = True) -> dict[str, Any]:
    """The generate step with perfect counterfactuals into ``cfg.out`` (see the module docstring)."""
    from raydbb.data.registry import load_records
    from raydbb.data.synthetic import PARAMS_FILE
    from raydbb.engine.pipeline import (
        SELECT_DIR,
        classifier_dir,
        generate_samples,
        score_training_set,
        source_rows,
    )
    from raydbb.engine.select import class_tau, select_majority, write_tau
    from raydbb.engine.stages.expand import ExpandStage
    from raydbb.engine.stages.load import LoadStage
    from raydbb.engine.stages.prune import PruneStage
    from raydbb.engine.stages.write import WriteStage

    params_file = Path(cfg.data.root) / PARAMS_FILE
    if cfg.data.name != "synthetic" or not params_file.is_file():
        raise RaydbbError(f"data.root={cfg.data.root}: perfect counterfactuals need the synthetic benchmark "
                          f"(data.name=synthetic and {PARAMS_FILE} in the folder)")
    params = json.loads(params_file.read_text())
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out / "generate_config.yaml")  # raydbb prune reads its defaults from here
    records = load_records(cfg.data)
    ckpt = classifier_dir(cfg)
    if engine == "ray":
        from raydbb.ray_utils import init_ray

        init_ray(cfg.ray)
    scores = score_training_set(cfg, records, ckpt, engine, progress)
    tau = class_tau(scores, records.num_classes)
    write_tau(out, records.class_names, tau, str(ckpt))
    selected = select_majority(scores, records.class_names, cfg.select)
    (out / SELECT_DIR).mkdir(parents=True, exist_ok=True)
    selected.to_csv(out / SELECT_DIR / "selected.csv", index=False)
    frame = records.frame.set_index("sample_id").loc[selected["sample_id"]].reset_index()
    sources = {str(sid): (synthetic_index(path), int(sp))
               for sid, path, sp in zip(frame["sample_id"], frame["path"], frame["spurious"], strict=True)}
    io = cfg.generate.io
    stages = [
        LoadStage(io),
        ExpandStage(records.class_names, 1, cfg.seed, io),
        CounterfactualStage(sources, params["seed"], params["size"], cfg.mask.resources),
        PruneStage(cfg.prune, classifier_dir=str(ckpt), tau=tau),
        WriteStage(cfg.out, {"classifier": str(ckpt)}, io),
    ]
    summary = generate_samples(source_rows(frame), stages, out, class_names=records.class_names, n_variants=1,
                               engine=engine, rows_per_part=cfg.generate.manifest_rows_per_part,
                               flush_seconds=cfg.generate.flush_seconds, progress=progress)
    summary["scored"] = len(scores)
    summary["unreadable_train_images"] = int((~np.isfinite(scores["loss"].to_numpy(dtype=float))).sum())
    summary["selected"] = {name: int((selected["label"] == y).sum())
                           for y, name in enumerate(records.class_names)}
    summary["tau"] = {name: float(t) for name, t in zip(records.class_names, tau, strict=True)}
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m raydbb.oracle --config FILE [overrides]``."""
    from raydbb.commands import add_config_args, config_from_args
    from raydbb.engine.pipeline import format_summary

    parser = argparse.ArgumentParser(
        prog="python -m raydbb.oracle",
        description="raydbb generate on the synthetic benchmark with perfect counterfactual repaints "
                    "(the other bird, same background and pose) instead of mask + inpaint.")
    add_config_args(parser)
    parser.add_argument("--engine", choices=["ray", "loop"], default="ray")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        summary = run_oracle_generate(config_from_args(args), args.engine, progress=not args.no_progress)
    except RaydbbError as err:
        print(f"raydbb: error: {err}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
