"""Several stages run one after another inside one call: the plain loop's inner step, and the
``fused`` layout's single stage.

With ``generate.layout=fused`` the adapter sees one :class:`ChainStage` holding every generation
stage, so each actor of its pool loads every model and runs load → mask → … → write on its own
blocks. On a CPU node with few cores that beats one pool per model stage: no batch crosses a
process boundary between stages, and no core waits for a stage that has nothing to do (each actor
is busy with whatever its block needs next). On GPU nodes separate pools (``layout=pools``) let
each model stage get its own GPUs and batch sizes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from raydbb.config import StageResources
from raydbb.engine.stage import Batch, Stage, num_rows, object_column, timed_call


def slices(batch: Batch, size: int) -> Iterator[Batch]:
    """Consecutive row slices of ``batch`` of at most ``size`` rows."""
    for start in range(0, num_rows(batch), size):
        yield {key: col[start:start + size] for key, col in batch.items()}


def run_chain(stages: Sequence[Stage], batch: Batch) -> list[Batch]:
    """Push ``batch`` through ``stages`` in order, each stage seeing slices of at most its
    ``batch_size`` (timed as ``t_<stage>``); returns the last stage's output batches."""
    batches = [batch]
    for stage in stages:
        batches = [timed_call(stage, piece) for b in batches for piece in slices(b, stage.batch_size)]
    return batches


def concat_columns(batches: Sequence[Batch]) -> Batch:
    """Row-wise concatenation of batches with the same columns (object columns stay 1-D)."""
    if len(batches) == 1:
        return batches[0]
    return {key: object_column([item for b in batches for item in b[key]])
            if any(b[key].dtype == object for b in batches) else np.concatenate([b[key] for b in batches])
            for key in batches[0]}


def stage_names(stages: Sequence[Stage]) -> list[str]:
    """Names of ``stages`` in running order, a chain's inner stages before the chain itself."""
    return [name for s in stages for name in (stage_names(s.stages) if isinstance(s, ChainStage) else [])
            + [s.name]]


class ChainStage(Stage):
    """``stages`` as one stage with the chain's own ``resources`` (pool size, CPUs, GPUs, rows per
    call). Each inner stage keeps its batch size, device and ``t_<stage>`` timing."""

    name = "fused"

    def __init__(self, stages: Sequence[Stage], resources: StageResources) -> None:
        super().__init__(resources)
        self.stages = list(stages)

    def setup(self) -> None:
        for stage in self.stages:
            stage.setup()

    def __call__(self, batch: Batch) -> Batch:
        out = run_chain(self.stages, batch)
        rows = [b for b in out if num_rows(b)]
        if rows:
            return concat_columns(rows)
        return out[0] if out else batch  # nothing came out: an empty batch, as a stage returns
