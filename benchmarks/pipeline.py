"""Timed pipeline runs: ``raydbb generate``'s stages over the benchmark's selected sources, with
each stage's busy time, and the steady state that a probe run and a full run separate from start-up.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.fixtures import CLASS_NAMES, Fixtures
from benchmarks.results import log
from raydbb.config import RaydbbConfig
from raydbb.engine.stage import Stage, num_rows


@dataclass
class PipelineRun:
    """One timed pass of a pipeline: rows out, wall time, and each stage's summed busy time."""

    engine: str
    rows: int = 0
    wall_s: float = 0.0
    stage_busy_s: dict[str, float] = field(default_factory=dict)
    stage_rows: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Rows per second, start-up included."""
        return self.rows / self.wall_s if self.wall_s > 0 else float("nan")

    def busy_ms_per_row(self, stage: str) -> float:
        """Mean busy time of ``stage`` per row it handled (per actor, while busy)."""
        n = self.stage_rows.get(stage, 0)
        return 1000 * self.stage_busy_s.get(stage, float("nan")) / n if n else float("nan")


@dataclass
class SteadyState:
    """A small *probe* run and a *full* run over all rows of the same pipeline.

    Both pay the same fixed cost (actor start-up and model loading, or the loop's ``setup()``,
    plus latency through the stages), so the extra rows of the full run over its extra time is
    the steady-state rate, whatever the granularity in which the engine hands back batches.
    ``startup_s`` is that fixed cost: the probe's wall time minus its rows at the steady rate.
    """

    probe: PipelineRun
    full: PipelineRun

    @property
    def engine(self) -> str:
        return self.full.engine

    @property
    def steady_rate(self) -> float:
        extra_s = self.full.wall_s - self.probe.wall_s
        return (self.full.rows - self.probe.rows) / extra_s if extra_s > 0 else float("nan")

    @property
    def startup_s(self) -> float:
        return self.probe.wall_s - self.probe.rows / self.steady_rate

    @property
    def total_rate(self) -> float:
        return self.full.rate


def generation_rows(cfg: RaydbbConfig, fx: Fixtures, engine: str = "loop") -> pd.DataFrame:
    """The selected source rows (real per-sample selection on the ERM scores), with ``todo``."""
    from raydbb.data.registry import load_records
    from raydbb.ddb.generate import plan_sources, score_training_set
    from raydbb.ddb.select import select_majority
    from raydbb.engine.stages.load import source_rows

    records = load_records(cfg.data)
    scores = score_training_set(cfg, records, fx.classifier, engine=engine, progress=False)
    selected = select_majority(scores, records.class_names, cfg.select)
    frame = records.frame.set_index("sample_id").loc[selected["sample_id"]].reset_index()
    planned, _, _ = plan_sources(source_rows(frame), records.class_names, cfg.inpaint.n_variants, set())
    return planned


def pipeline_stages(cfg: RaydbbConfig, fx: Fixtures, tau: np.ndarray | None = None) -> list[Stage]:
    """``raydbb generate``'s stage list (load, mask, expand, inpaint, prune, write) for ``cfg``."""
    from raydbb.ddb.generate import generation_stages

    return generation_stages(cfg, CLASS_NAMES, fx.classifier, np.array([0.5, 0.5]) if tau is None else tau)


def run_pipeline(stages: list[Stage], rows: pd.DataFrame, engine: str, out: Path, manifest: bool = True,
                 block_rows: int | None = None) -> PipelineRun:
    """Stream ``rows`` through ``stages`` with ``engine`` (``ray``/``loop``) exactly as ``raydbb
    generate`` does (:func:`raydbb.engine.executor.execute`, input blocks of ``block_rows`` or
    the engine's default; the manifest writer when ``manifest``). ``out`` is emptied first."""
    from raydbb.engine.executor import execute
    from raydbb.engine.manifest import ManifestWriter

    shutil.rmtree(out, ignore_errors=True)
    log(f"{engine}: {len(rows)} rows -> {out}")
    run = PipelineRun(engine=engine)
    start = time.perf_counter()
    with ManifestWriter(out) as writer:
        for batch in execute(stages, rows, engine, block_rows):
            if manifest:
                writer.add(batch)
            run.rows += num_rows(batch)
            for key, col in batch.items():
                if key.startswith("t_"):
                    values = np.asarray(col, dtype=np.float64)
                    run.stage_busy_s[key[2:]] = run.stage_busy_s.get(key[2:], 0.0) + float(np.nansum(values))
                    run.stage_rows[key[2:]] = run.stage_rows.get(key[2:], 0) + int(np.isfinite(values).sum())
    run.wall_s = time.perf_counter() - start
    log(f"{engine}: {run.rows} rows in {run.wall_s:.1f} s")
    return run


def measure_steady(make_stages: Callable[[], list[Stage]], rows: pd.DataFrame, engine: str, out: Path,
                   manifest: bool = True, probe_rows: int | None = None) -> SteadyState:
    """A probe run over the first ``probe_rows`` rows (default: the largest stage batch, so that
    every stage runs once with a full batch), then the full run over ``rows``; each with fresh
    stage objects (fresh actor pools) and the engine's own block sizing, as ``raydbb generate``."""
    probe_rows = probe_rows or max(s.batch_size for s in make_stages())
    if len(rows) <= probe_rows:
        raise ValueError(f"{len(rows)} rows: a steady-state measurement needs more than the probe's "
                         f"{probe_rows}")
    probe = run_pipeline(make_stages(), rows.iloc[:probe_rows], engine, out / "probe", manifest)
    full = run_pipeline(make_stages(), rows, engine, out / "full", manifest)
    return SteadyState(probe, full)
