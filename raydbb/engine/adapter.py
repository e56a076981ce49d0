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

import resource
import sys
import time
from collections.abc import Iterable, Iterator

import numpy as np
import pandas as pd

from raydbb.engine.chain import run_chain
from raydbb.engine.placement import Node, placement_problems
from raydbb.engine.stage import (
    GPU_PREFIX,
    NODE_PREFIX,
    RSS_PREFIX,
    SETUP_PREFIX,
    Batch,
    Stage,
    num_rows,
    timed_call,
)
from raydbb.errors import RaydbbError


def _recorded_call(stage: Stage, batch: Batch, setup_s: float | None = None) -> Batch:
    """:func:`timed_call`, plus what the run summary reports per actor: the node that ran it
    (``node_<stage>``), this process's peak resident memory and, on CUDA, peak GPU memory so far
    (``rss_<stage>``/``gpu_<stage>``, MiB), and ``setup_s``, the model load time, on the first
    call of an actor (``setup_<stage>``)."""
    import ray

    out = timed_call(stage, batch)
    n = num_rows(out)
    if n:
        out[f"{NODE_PREFIX}{stage.name}"] = np.full(n, ray.get_runtime_context().get_node_id(), dtype=object)
        out[f"{RSS_PREFIX}{stage.name}"] = np.full(n, peak_rss_mib())
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            out[f"{GPU_PREFIX}{stage.name}"] = np.full(n, torch.cuda.max_memory_allocated() / 2**20)
        if setup_s is not None:
            out[f"{SETUP_PREFIX}{stage.name}"] = np.full(n, setup_s)
    return out


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _StageActor:
    """Actor body for a stateful stage: ``setup()`` once in the constructor, then timed calls."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        start = time.perf_counter()
        stage.setup()
        self.setup_s: float | None = time.perf_counter() - start

    def __call__(self, batch: Batch) -> Batch:
        out = _recorded_call(self.stage, batch, self.setup_s)
        self.setup_s = None  # reported once per actor
        return out


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
        return _recorded_call(stage, batch)

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
    if res.node_labels:  # e.g. the inpainting pool on the inpainting node group
        kwargs["label_selector"] = dict(res.node_labels)
    if stage.stateful:
        return ds.map_batches(
            _actor_class(stage),
            fn_constructor_args=(stage,),
            compute=ray.data.ActorPoolStrategy(size=res.actors),
            **kwargs,
        )
    return ds.map_batches(_task_fn(stage), **kwargs)


def alive_nodes() -> list[Node]:
    """The connected Ray cluster's alive nodes: CPUs, GPUs (totals) and labels."""
    import ray

    return [Node(n["NodeID"], float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)),
                 dict(n.get("Labels") or {})) for n in ray.nodes() if n.get("Alive")]


def node_names() -> dict[str, str]:
    """Every node the cluster has known (alive or lost), by id: a short id, its own labels, and
    "lost" for a node that left during the run; for the run summary."""
    import ray

    names = {}
    for n in ray.nodes():
        labels = ",".join(f"{k}={v}" for k, v in sorted((n.get("Labels") or {}).items())
                          if not k.startswith("ray.io/"))
        notes = [x for x in (labels, "" if n.get("Alive") else "lost") if x]
        names[n["NodeID"]] = n["NodeID"][:8] + (f" ({'; '.join(notes)})" if notes else "")
    return names


def check_placement(stages: list[Stage]) -> None:
    """Refuse, one line per stage, pools and tasks that the alive nodes of the connected cluster
    cannot hold (:mod:`raydbb.engine.placement`); Ray would wait for them forever."""
    problems = placement_problems(stages, alive_nodes())
    if problems:
        raise RaydbbError("\n".join(problems))


def build_dataset(ds, stages: list[Stage]):
    """Chain ``stages`` onto the Ray Dataset ``ds`` (lazy; consume with ``iter_batches``), after
    :func:`check_placement`."""
    check_placement(stages)
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
