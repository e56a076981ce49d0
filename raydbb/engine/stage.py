"""The stage contract: a small, Ray-free class the adapter maps onto Ray Data.

A stage declares its resources and batch sizes (from config, never guessed from the machine that
builds the pipeline), loads its model once in :meth:`Stage.setup`, and transforms dict-of-numpy
batches in :meth:`Stage.__call__`. Batches carry numpy arrays, encoded bytes and scalars only.

Rows that an earlier stage already decided (``prune_reason`` set, e.g. ``no_mask`` or
``error:...``) must pass through later stages unchanged, so that every sample reaches the manifest.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from raydbb.config import StageResources

Batch = dict[str, np.ndarray]

#: Per-row columns the Ray adapter adds for the run summary, by stage name: the node that ran the
#: stage, the worker's peak resident and GPU memory so far (MiB), the actor's model load time (s)
NODE_PREFIX = "node_"
RSS_PREFIX = "rss_"
GPU_PREFIX = "gpu_"
SETUP_PREFIX = "setup_"
TELEMETRY_PREFIXES = ("t_", NODE_PREFIX, RSS_PREFIX, GPU_PREFIX, SETUP_PREFIX)


class Stage:
    """Base class for pipeline stages.

    Subclasses set :attr:`name`, keep constructor arguments picklable (configs, paths, ids: the
    object is shipped to Ray actors before :meth:`setup` runs), and implement :meth:`__call__`.
    ``stateful = False`` marks cheap, model-free stages that run as plain Ray tasks.
    """

    name: str = "stage"
    stateful: bool = True
    #: models on CPU whatever GPUs the stage asks Ray for (``device: cpu``; see :func:`on_device`)
    cpu_only: bool = False

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

    @property
    def device(self) -> str:
        """``"cuda"`` when the config gives this stage GPUs (and :attr:`cpu_only` is off), else
        ``"cpu"`` (never probed)."""
        return "cuda" if self.resources.num_gpus > 0 and not self.cpu_only else "cpu"

    def setup(self) -> None:
        """Load models; runs once per actor (or once per process for a plain loop)."""

    def __call__(self, batch: Batch) -> Batch:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Name, resources and batch sizes, for logs and the run summary."""
        return {"name": self.name, "stateful": self.stateful, **self.resources.model_dump()}


def on_device(stages: list[Stage], device: str) -> list[Stage]:
    """Apply the run's ``device``: with ``"cpu"`` mark ``stages`` :attr:`~Stage.cpu_only` (their GPU
    requests stay, so Ray still places them on GPU nodes, but their models run on CPU, e.g. to
    rehearse a GPU cluster's plan without GPUs); with ``"cuda"`` a stage uses CUDA when it asks GPUs."""
    if device == "cpu":
        for stage in stages:
            stage.cpu_only = True
    return stages


def num_rows(batch: Batch) -> int:
    """Number of rows in a batch (0 for an empty dict)."""
    return len(next(iter(batch.values()))) if batch else 0


def object_column(items: Sequence[np.ndarray]) -> np.ndarray:
    """A 1-D object array holding one array per row.

    ``np.array(list_of_arrays)`` would stack same-shaped arrays into one block (or fail on ragged
    ones); this never does, so image columns look the same whatever the shapes in the batch.
    Ray Data stores such a column as a variable-shaped tensor and hands it back as an object
    array (or, when all rows share a shape, as a stacked array: index rows, never assume either).
    """
    col = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        col[i] = item
    return col


def empty_image() -> np.ndarray:
    """Placeholder for "no image" in an image column (Ray Data cannot store ``None`` there)."""
    return np.zeros((0, 0, 3), dtype=np.uint8)


def empty_mask() -> np.ndarray:
    """Placeholder for "no mask" in a mask column."""
    return np.zeros((0, 0), dtype=np.uint8)


def is_empty(array: Any) -> bool:
    """True for a missing/placeholder array (``None`` or zero-sized)."""
    return array is None or np.asarray(array).size == 0


def timed_call(stage: Stage, batch: Batch) -> Batch:
    """Call ``stage`` on ``batch`` and record its wall time per row as ``t_<stage.name>``.

    A stage that measures itself (e.g. model time only) sets that column and is left alone.
    Both executors (Ray adapter and plain loop) go through here, so their timings compare.
    """
    start = time.perf_counter()
    out = stage(batch)
    key = f"t_{stage.name}"
    n = num_rows(out)
    if key not in out and n:
        out[key] = np.full(n, (time.perf_counter() - start) / n, dtype=np.float64)
    return out


def pending_rows(batch: Batch) -> np.ndarray:
    """Boolean index of rows no earlier stage has decided (empty ``prune_reason``)."""
    n = num_rows(batch)
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
