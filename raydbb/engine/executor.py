"""The one executor: stream rows through a plain list of stages, on Ray or in a local loop.

``engine="ray"`` maps the stages onto Ray Data actor pools (:func:`raydbb.engine.adapter.build_dataset`);
``engine="loop"`` runs the same stage objects one after another in this process
(:func:`raydbb.engine.adapter.run_loop`, the test and benchmark baseline). Every caller that streams
rows — generation, the token pool's mask pass, the scoring pass, tools — goes through :func:`execute`,
so the choice between the two lives in one place.

:func:`stream_to_manifest` is the resumable writing loop on top: pending rows in, manifest parts out,
with the run's :class:`~raydbb.engine.stats.RunStats`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from raydbb.config import RayConfig, StageResources
from raydbb.engine.adapter import auto_block_rows, build_dataset, node_names, run_loop, source_dataset
from raydbb.engine.chain import ChainStage, stage_names
from raydbb.engine.manifest import ManifestWriter
from raydbb.engine.stage import Batch, Stage, on_device
from raydbb.engine.stats import RunStats
from raydbb.errors import ConfigError, RaydbbError
from raydbb.progress import TenthsLog

ENGINES = ("ray", "loop")
LAYOUTS = ("pools", "fused")


def check_engine(engine: str) -> None:
    """One line for an engine name that is neither ``ray`` nor ``loop``."""
    if engine not in ENGINES:
        raise RaydbbError(f"engine {engine!r}: expected one of {list(ENGINES)}")


def start_engine(engine: str, ray_cfg: RayConfig, progress: bool = True) -> None:
    """Connect to (or start) Ray when ``engine="ray"``; nothing for the loop."""
    check_engine(engine)
    if engine != "ray":
        return
    import ray

    from raydbb.ray_utils import absorb_actor_restart_notice, init_ray, quiet_progress_notice

    init_ray(ray_cfg)
    absorb_actor_restart_notice()
    # Ray Data's per-operator progress (bars on a terminal, log lines in a job's log)
    ray.data.DataContext.get_current().enable_progress_bars = progress
    if not progress:
        quiet_progress_notice()


def execute(stages: list[Stage], rows: pd.DataFrame, engine: str = "ray",
            block_rows: int | None = None) -> Iterator[Batch]:
    """Stream ``rows`` through ``stages`` and yield the last stage's output batches.

    With Ray, ``block_rows`` (default :func:`~raydbb.engine.adapter.auto_block_rows`) sets the
    rows per input block: the unit Ray Data schedules, overlaps and keeps in flight.
    """
    check_engine(engine)
    if engine == "loop":
        yield from run_loop(stages, rows, block_rows)
        return
    block = block_rows or auto_block_rows(len(rows), stages)
    ds = build_dataset(source_dataset(rows, block), stages)
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


def arrange(stages: list[Stage], layout: str, pool: StageResources, pool_field: str,
            device: str = "cuda") -> list[Stage]:
    """``stages`` as the adapter should map them: unchanged for ``layout=pools``, else one
    :class:`ChainStage` on the pool ``pool`` (the config field ``pool_field``, for errors).
    ``device="cpu"`` runs every model on CPU, GPU requests or not (:func:`on_device`)."""
    if layout not in LAYOUTS:
        raise ConfigError(f"layout {layout!r}: expected one of {list(LAYOUTS)}")
    on_device(stages, device)
    if layout == "pools":
        return stages
    on_gpu = [s.name for s in stages if s.resources.num_gpus > 0]
    if on_gpu and pool.num_gpus == 0:
        raise ConfigError(f"generate.layout=fused with {pool_field}.num_gpus=0, but {', '.join(on_gpu)} "
                          "run on GPUs: give the fused pool GPUs or set their resources.num_gpus=0")
    return [ChainStage(stages, pool)]


def stream_to_manifest(rows: pd.DataFrame, stages: list[Stage], out: str | Path, *, total: int,
                       engine: str = "ray", rows_per_part: int = 2000, flush_seconds: float = 60.0,
                       block_rows: int | None = None, progress: bool = True) -> RunStats:
    """Run ``stages`` (ending in a writer of manifest rows) over ``rows`` into ``out``'s manifest.

    ``total`` is the number of manifest rows expected (for the progress bar). The manifest parts
    are flushed every ``rows_per_part`` rows or ``flush_seconds``, atomically.
    """
    stats = RunStats(stage_names(stages))
    writer = ManifestWriter(out, rows_per_part, flush_seconds)
    log = TenthsLog("generate:", total, "samples")
    with writer, tqdm(total=total, desc="generate", unit="sample", disable=not progress) as bar:
        if len(rows):
            done = 0
            for batch in execute(stages, rows, engine, block_rows):
                writer.add(batch)
                added = stats.add(batch)
                bar.update(added)
                done += added
                if not progress:
                    log(done)
    stats.finish(writer.parts, node_names() if engine == "ray" else None)
    return stats
