"""The stage contract: a small, Ray-free class the adapter maps onto Ray Data.

A stage declares its resources and batch sizes (from config, never guessed from the machine that
builds the pipeline), loads its model once in :meth:`Stage.setup`, and transforms dict-of-numpy
batches in :meth:`Stage.__call__`. Batches carry numpy arrays, encoded bytes and scalars only.

Rows that an earlier stage already decided (``prune_reason`` set, e.g. ``no_mask`` or
``error:...``) must pass through later stages unchanged, so that every sample reaches the manifest.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from raydbb.config import StageResources

Batch = dict[str, np.ndarray]


class Stage:
    """Base class for pipeline stages.

    Subclasses set :attr:`name`, keep constructor arguments picklable (configs, paths, ids: the
    object is shipped to Ray actors before :meth:`setup` runs), and implement :meth:`__call__`.
    ``stateful = False`` marks cheap, model-free stages that run as plain Ray tasks.
    """

    name: str = "stage"
    stateful: bool = True

    def __init__(self, resources: StageResources | None = None) -> None:
        self.resources = resources or StageResources()

    @property
    def batch_size(self) -> int:
        """Rows handed to one :meth:`__call__`."""
        return self.resources.batch_size

    @property
    def model_batch_size(self) -> int:
        """Images per forward pass inside one call (may differ from :attr:`batch_size`)."""
        return self.resources.model_batch_size

    def setup(self) -> None:
        """Load models; runs once per actor (or once per process for a plain loop)."""

    def __call__(self, batch: Batch) -> Batch:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Name, resources and batch sizes, for logs and the run summary."""
        return {"name": self.name, "stateful": self.stateful, **self.resources.model_dump()}


def pending_rows(batch: Batch) -> np.ndarray:
    """Boolean index of rows no earlier stage has decided (empty ``prune_reason``)."""
    n = len(next(iter(batch.values()))) if batch else 0
    if "prune_reason" not in batch:
        return np.ones(n, dtype=bool)
    return np.array([not r for r in batch["prune_reason"]], dtype=bool)


def run_local(stages: list[Stage], batch: Batch) -> Batch:
    """Run stages in this process, one after another: the plain-loop reference for tests/benchmarks."""
    for stage in stages:
        stage.setup()
    for stage in stages:
        batch = stage(batch)
    return batch
