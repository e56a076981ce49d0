"""The one adapter from Ray-free stages to Ray Data, and the plain loop it is measured against.

:func:`build_dataset` maps each stage onto ``Dataset.map_batches`` (numpy batches of the stage's
``batch_size``): model-holding stages (``stateful``) on a fixed-size actor pool whose actors run
``setup()`` once, cheap stages as plain Ray tasks. Ray Data streams blocks through all stages at
once, so loading, masking, inpainting, pruning and writing overlap. Nothing here depends on
whether Ray runs locally or on a cluster: that is :func:`raydbb.ray_utils.init_ray`'s business.

:func:`run_loop` runs the same stage objects one after another in this process — the baseline
for tests (same rows) and benchmarks (engine vs loop).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import numpy as np
import pandas as pd

from raydbb.engine.chain import run_chain
from raydbb.engine.stage import Batch, Stage, num_rows, timed_call

logger = logging.getLogger(__name__)


class _StageActor:
    """Actor body for a stateful stage: ``setup()`` once in the constructor, then timed calls."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        stage.setup()

    def __call__(self, batch: Batch) -> Batch:
        return timed_call(self.stage, batch)


def _actor_class(stage: Stage) -> type:
    # A subclass named after the stage, so Ray's progress bars and stats read "MapBatches(inpaint)".
    return type(stage.name, (_StageActor,), {})


def _task_fn(stage: Stage):
    ready = False

    def run(batch: Batch) -> Batch:
        nonlocal ready
        if not ready:  # once per worker process that deserialised this function
            stage.setup()
            ready = True
        return timed_call(stage, batch)

    run.__name__ = run.__qualname__ = stage.name
    return run


def map_stage(ds, stage: Stage):
    """``ds.map_batches`` for one stage (actor pool if stateful, tasks otherwise)."""
    import ray

    res = stage.resources
    kwargs = {
        "batch_size": stage.batch_size,
        "batch_format": "numpy",
        "num_cpus": res.num_cpus,
    }
    if res.num_gpus > 0:  # set only for GPU stages; CPU runs leave num_gpus unset
        kwargs["num_gpus"] = res.num_gpus
    if stage.stateful:
        return ds.map_batches(
            _actor_class(stage),
            fn_constructor_args=(stage,),
            compute=ray.data.ActorPoolStrategy(size=res.actors),
            **kwargs,
        )
    return ds.map_batches(_task_fn(stage), **kwargs)


def check_cpu_budget(stages: list[Stage], cluster_cpus: float | None) -> None:
    """Warn when the actor pools would take every CPU: tasks (read, load, write) would then stall."""
    if cluster_cpus is None:
        return
    actors = sum(s.resources.actors * s.resources.num_cpus for s in stages if s.stateful)
    tasks = max((s.resources.num_cpus for s in stages if not s.stateful), default=0.0)
    if actors + tasks > cluster_cpus:
        logger.warning(
            "actor pools reserve %.2f CPUs and tasks need %.2f, but the cluster has %.2f: the "
            "pipeline may stall; lower <stage>.resources.num_cpus/actors", actors, tasks, cluster_cpus)


def build_dataset(ds, stages: list[Stage]):
    """Chain ``stages`` onto the Ray Dataset ``ds`` (lazy; consume with ``iter_batches``)."""
    import ray

    check_cpu_budget(stages, ray.cluster_resources().get("CPU") if ray.is_initialized() else None)
    for stage in stages:
        ds = map_stage(ds, stage)
    return ds


def frame_to_batch(frame: pd.DataFrame) -> Batch:
    """A pandas frame as a dict of numpy columns (strings as object arrays, like Ray Data's)."""
    return {col: frame[col].to_numpy() for col in frame.columns}


def frame_blocks(frame: pd.DataFrame, block_rows: int) -> list[pd.DataFrame]:
    """Split a frame into consecutive blocks of at most ``block_rows`` rows."""
    return [frame.iloc[i:i + block_rows] for i in range(0, len(frame), block_rows)]


MAX_AUTO_BLOCK_ROWS = 64
MIN_AUTO_BLOCKS = 16


def auto_block_rows(n_rows: int, stages: list[Stage]) -> int:
    """Source rows per block when the config does not say.

    Ray Data schedules whole blocks (a stage's task cuts a block into ``batch_size`` calls), so
    blocks set both how early stages overlap and the per-task overhead (tens of ms on a busy
    2-core machine). Small runs get at least :data:`MIN_AUTO_BLOCKS` blocks of at least the
    smallest batch size; large runs get blocks of :data:`MAX_AUTO_BLOCK_ROWS` rows. Blocks are
    whole multiples of the smallest batch size: a 13-row block would reach a stage of batch size
    8 as a full call and a 5-row call, which costs nearly as much.
    """
    smallest = max(1, min((s.batch_size for s in stages), default=1))
    rows = max(smallest, min(MAX_AUTO_BLOCK_ROWS, -(-n_rows // MIN_AUTO_BLOCKS)))
    return -(-rows // smallest) * smallest


def source_dataset(frame: pd.DataFrame, block_rows: int):
    """A Ray Dataset holding ``frame`` in blocks of ``block_rows`` rows (exactly; no re-splitting).

    ``from_blocks`` puts the Arrow slices directly; ``from_pandas`` would run one remote metadata
    task per block, which costs seconds per thousand blocks.
    """
    import pyarrow as pa
    import ray

    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    step = max(1, block_rows)
    return ray.data.from_blocks([table.slice(i, step) for i in range(0, max(table.num_rows, 1), step)])


def run_loop(stages: list[Stage], rows: pd.DataFrame | Iterable[Batch],
             block_rows: int | None = None) -> Iterator[Batch]:
    """The plain sequential loop: ``setup()`` every stage once, then push each block of rows
    through the stages in order, each stage seeing slices of at most its ``batch_size``.

    ``rows`` is a frame (split into blocks of ``block_rows``, default the largest stage batch
    size, so every stage gets full batches) or an iterable of batches. Yields the last stage's
    output batches.
    """
    for stage in stages:
        stage.setup()
    if isinstance(rows, pd.DataFrame):
        size = block_rows or max((s.batch_size for s in stages), default=max(len(rows), 1))
        blocks: Iterable[Batch] = (frame_to_batch(b) for b in frame_blocks(rows.reset_index(drop=True), size))
    else:
        blocks = rows
    for block in blocks:
        yield from (b for b in run_chain(stages, block) if num_rows(b))


def concat_batches(batches: Iterable[Batch]) -> pd.DataFrame:
    """Concatenate scalar-column batches (e.g. manifest rows) into one pandas frame."""
    frames = [pd.DataFrame({k: list(v) if np.asarray(v).ndim > 1 else v for k, v in b.items()})
              for b in batches if num_rows(b)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
