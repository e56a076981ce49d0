"""DDB with an ideal inpainter on the synthetic benchmark: perfect counterfactual repaints.

The synthetic benchmark can redraw any of its samples with the *other* bird on the same background
in the same pose (:func:`raydbb.data.synthetic.render_sample` with the other label): exactly the
repaint DDB asks the diffusion inpainter for. :func:`run_oracle_generate` runs the generate step
with that redraw in place of the mask and inpaint stages — everything else is the real engine:
per-sample ERM losses and the majority selection (``select``), τ, the prune stage (every score
recorded, ``prune`` thresholds applied), the PNG writer and the Parquet manifest, resumable. So
``raydbb retrain`` and ``raydbb tune`` run on its output exactly as on a diffusion run, and the
result bounds what retraining can gain on this benchmark when the repaints are perfect.

    python -m raydbb.tools.oracle --config jobs/configs/synthetic.yaml [section.field=value ...]

:func:`run_oracle` (``--end-to-end``; ``raydbb compare --methods oracle``) runs the whole workflow
around it: ERM, this generate step, retraining and evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raydbb.config import RaydbbConfig, StageResources
from raydbb.ddb.generate import Repainter, format_summary, run_generate
from raydbb.ddb.stages.expand import ExpandStage
from raydbb.engine.stage import Batch, Stage, empty_image, empty_mask, num_rows, object_column, pending_rows
from raydbb.errors import ConfigError, DataError, RaydbbError
from raydbb.workflow import GENERATE, INVERT, Step, generate_step, pipeline_steps, run_steps

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


def oracle_repainter(cfg: RaydbbConfig, class_names: list[str], sources: pd.DataFrame,
                     ckpt: Path) -> Repainter:
    """The generate step's repainter with perfect counterfactuals: expand, then redraw each source
    with the target class's bird (one variant: the redraw is deterministic)."""
    from raydbb.data.synthetic import PARAMS_FILE

    params_file = Path(cfg.data.root) / PARAMS_FILE
    if cfg.data.name != "synthetic" or not params_file.is_file():
        raise RaydbbError(f"data.root={cfg.data.root}: perfect counterfactuals need the synthetic benchmark "
                          f"(data.name=synthetic and {PARAMS_FILE} in the folder)")
    params = json.loads(params_file.read_text())
    columns = (sources["sample_id"], sources["path"], sources["spurious"])
    index = {str(sid): (synthetic_index(path), int(sp)) for sid, path, sp in zip(*columns, strict=True)}
    return Repainter([ExpandStage(class_names, 1, cfg.seed, cfg.generate.io),
                      CounterfactualStage(index, params["seed"], params["size"], cfg.mask.resources)], 1)


def run_oracle_generate(cfg: RaydbbConfig, engine: str = "ray", progress: bool = True) -> dict[str, Any]:
    """The generate step with perfect counterfactuals into ``cfg.out`` (see the module docstring)."""
    return run_generate(cfg, engine, progress, repainter=oracle_repainter)


def oracle_config(cfg: RaydbbConfig) -> RaydbbConfig:
    """``cfg`` for the oracle: the originals are not round-tripped through the inpainter's VAE, since
    no repaint went through it (a patch on the originals alone would mark them instead). Refuses any
    dataset but the synthetic benchmark, before anything is trained: no other can redraw its images."""
    if cfg.data.name != "synthetic":
        raise ConfigError(f"data.name={cfg.data.name}: perfect counterfactuals exist only for the synthetic "
                          "benchmark (data.name=synthetic)")
    return cfg.model_copy(update={"retrain": cfg.retrain.model_copy(update={"round_trip_originals": False})})


def oracle_pipeline(cfg: RaydbbConfig) -> list[Step]:
    """The whole workflow's steps for ``cfg`` with perfect counterfactuals: no inversion (nothing is
    prompted), the generate step redraws instead of masking and inpainting; ERM, retraining and
    evaluation are the workflow's own."""
    generate = replace(GENERATE, help="select, redraw with the other bird, prune -> OUT/images, OUT/manifest",
                       run=partial(generate_step, repainter=oracle_repainter), stamps=None)
    return [generate if s.name == GENERATE.name else s for s in pipeline_steps(cfg) if s.name != INVERT.name]


def run_oracle(cfg: RaydbbConfig, progress: bool = True) -> dict[str, dict[str, Any]]:
    """DDB end to end with perfect counterfactuals in ``cfg.out`` (resumable like ``raydbb run``):
    the upper bound of what DDB's retraining reaches when every repaint is the ideal one."""
    cfg = oracle_config(cfg)
    return run_steps(cfg, progress=progress, pipeline=oracle_pipeline(cfg))


def main(argv: list[str] | None = None) -> int:
    """``python -m raydbb.tools.oracle --config FILE [overrides]``."""
    from raydbb.config import add_config_args, config_from_args

    parser = argparse.ArgumentParser(
        prog="python -m raydbb.tools.oracle",
        description="raydbb generate on the synthetic benchmark with perfect counterfactual repaints "
                    "(the other bird, same background and pose) instead of mask + inpaint.")
    add_config_args(parser)
    parser.add_argument("--engine", choices=["ray", "loop"], default="ray")
    parser.add_argument("--end-to-end", action="store_true",
                        help="run the whole workflow around it (ERM, this generate step, retraining "
                             "with the originals not round-tripped, evaluation), not the generate step alone")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        if args.end_to_end:
            run_oracle(cfg, progress=not args.no_progress)
            return 0
        summary = run_oracle_generate(cfg, args.engine, progress=not args.no_progress)
    except RaydbbError as err:
        print(f"raydbb: error: {err}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
