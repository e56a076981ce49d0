"""Epoch states of a training run, so that a rerun after a crash continues where it stopped.

After every epoch each rank saves its random-number states (augmentation, data order) and rank 0
the model, the optimiser and the selection so far, in ``.<checkpoint folder>.resume/`` next to
the checkpoint folder. A rerun of the same training into the same folder loads the newest complete
epoch and goes on from the next one; the result is the same, bit for bit on CPU, as a run that was
never interrupted. A state written for other settings or other data (its fingerprint differs) is
discarded, never mixed in. The folder is removed when the run finishes.

Files are written to a temporary name and renamed (a crash leaves the previous epoch readable) and
read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from raydbb.config import Section, fingerprint_dump

MODEL_FILE = "epoch-{epoch}.pt"
RANK_FILE = "epoch-{epoch}-rank{rank}.pt"


def resume_dir(out_dir: str | Path) -> Path:
    """The epoch-state folder of the checkpoint folder ``out_dir``."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.resume"


def _canonical(obj: Any) -> Any:
    """A JSON-able form of ``obj`` that is the same in every process (pickles are not: sets, ids)."""
    if isinstance(obj, Section):
        return fingerprint_dump(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _canonical(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return sorted((str(k), _canonical(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return [_canonical(v) for v in obj]
    if isinstance(obj, set | frozenset):
        return sorted(map(str, obj))
    if isinstance(obj, torch.Tensor | np.ndarray):
        array = obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else obj
        return [str(array.dtype), list(array.shape), hashlib.sha256(array.tobytes()).hexdigest()]
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if callable(obj) and hasattr(obj, "__qualname__"):  # a plain function: its name is its identity
        return f"{obj.__module__}.{obj.__qualname__}"
    state = obj.__getstate__() if hasattr(obj, "__getstate__") else vars(obj)
    return [f"{type(obj).__module__}.{type(obj).__qualname__}", _canonical(state)]


def fingerprint(spec: Any, world: int, frames: list[pd.DataFrame]) -> str:
    """Hash of everything that must match for a saved state to be continued: the training spec
    (settings, loss and its tables, start weights), the number of workers and every frame's rows."""
    digest = hashlib.sha256(json.dumps([_canonical(spec), world]).encode())
    for frame in frames:
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:20]


def _rng_state(loader_generator: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "loader": loader_generator.get_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": random.getstate()}


def _set_rng_state(state: dict[str, Any], loader_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    loader_generator.set_state(state["loader"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_rank_state(folder: Path, epoch: int, rank: int, key: str, loader_generator: torch.Generator) -> None:
    """Every rank, after ``epoch``: its random-number states (before the epoch's barrier)."""
    folder.mkdir(parents=True, exist_ok=True)
    _save({"fingerprint": key, "rng": _rng_state(loader_generator)},
          folder / RANK_FILE.format(epoch=epoch, rank=rank))


def save_model_state(folder: Path, epoch: int, key: str, state: dict[str, Any]) -> None:
    """Rank 0, after ``epoch``'s barrier: model, optimiser and selection; older epochs are dropped."""
    _save({"fingerprint": key, "epoch": epoch, **state}, folder / MODEL_FILE.format(epoch=epoch))
    for old in folder.glob("epoch-*.pt"):
        if int(old.stem.split("-")[1]) < epoch:
            old.unlink(missing_ok=True)


def latest_state(folder: Path, key: str, rank: int,
                 loader_generator: torch.Generator) -> tuple[int, dict[str, Any] | None]:
    """The newest epoch saved with fingerprint ``key`` and rank 0's model state of it, after restoring
    this rank's random-number states of that epoch; ``(0, None)`` when there is none (start afresh)."""
    epochs = sorted((int(p.stem.split("-")[1]) for p in folder.glob("epoch-*.pt") if "rank" not in p.stem),
                    reverse=True)
    for epoch in epochs:
        state = torch.load(folder / MODEL_FILE.format(epoch=epoch), weights_only=True)
        if state["fingerprint"] == key:
            rank_state = torch.load(folder / RANK_FILE.format(epoch=epoch, rank=rank), weights_only=True)
            _set_rng_state(rank_state["rng"], loader_generator)
            return epoch, state
    return 0, None


def discard(folder: Path) -> None:
    """Remove the epoch states (the run finished, or they belong to other settings)."""
    shutil.rmtree(folder, ignore_errors=True)
