"""Classifier training under Ray Train, with model selection on validation worst-group accuracy.

:func:`fit_classifier` is the reusable loop: it takes a training frame of records (any frame
:class:`~raydbb.data.torch_dataset.ImageRecords` reads: ``path``, ``label``, ``group`` plus any
extra columns), a validation frame, and a per-batch loss callable ``loss_fn(logits, labels,
index)`` where ``index`` holds the batch rows' positions in the training frame — so a loss can
look up per-row information (e.g. "is a generated repaint") prepared from the frame. Plain ERM
(:func:`train_erm`) uses the mean cross-entropy; DDB's reweighted retraining passes its own loss
and starts from the ERM checkpoint.

The same code runs on CPU workers here and on GPU workers on a cluster: ``train.use_gpu``,
``train.num_workers`` and ``train.cpus_per_worker`` only change the Ray Train ``ScalingConfig``.
Each worker builds its own loader from the records (a seeded ``DistributedSampler`` shards the
rows by rank); validation is sharded too and the per-group counts are summed across workers, so
every worker takes the same selection decision.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import pandas as pd

from raydbb.config import RayConfig, RaydbbConfig, TrainConfig
from raydbb.data.scan import SKIPPED_FILE, drop_unreadable, write_skipped
from raydbb.errors import ConfigError, DataError, RaydbbError
from raydbb.models.checkpoint import META_FILE, mark_finished
from raydbb.rundir import RunDir
from raydbb.training import resume
from raydbb.training.worker import FitResult, FitSpec, train_loop_per_worker


def scaling_config(cfg: TrainConfig):
    """Ray Train workers from the train config: CPU workers here, GPU workers by ``use_gpu``.

    Fractional ``cpus_per_worker`` lets workers share a small machine. (Ray Train v2's
    controller needs no CPU of its own, so workers can use every CPU Ray has.)
    """
    from ray.train import ScalingConfig

    resources: dict[str, float] = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    return ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources)


def check_workers_fit(cfg: TrainConfig) -> None:
    """Fail in one line when a single-node Ray instance cannot hold the requested workers.

    Ray Train would otherwise wait forever for resources that never appear (e.g. ``use_gpu``
    on a machine without GPUs). Multi-node clusters are not checked: they may scale up.
    """
    import ray

    if cfg.num_workers == 0 or len([n for n in ray.nodes() if n.get("Alive")]) != 1:
        return
    have = ray.cluster_resources()
    need_cpu = cfg.num_workers * cfg.cpus_per_worker
    if need_cpu > have.get("CPU", 0):
        raise ConfigError(
            f"train.num_workers={cfg.num_workers} x train.cpus_per_worker={cfg.cpus_per_worker} needs "
            f"{need_cpu:g} CPUs but Ray has {have.get('CPU', 0):g}; lower them (fractions are fine) or "
            "raise ray.num_cpus")
    if cfg.use_gpu and cfg.num_workers > have.get("GPU", 0):
        raise ConfigError(f"train.use_gpu=true with train.num_workers={cfg.num_workers} needs that many GPUs "
                          f"but Ray has {have.get('GPU', 0):g}; set train.use_gpu=false or fewer workers")


def _raise_worker_error(err: Exception) -> None:
    """Re-raise a user error (bad image, diverged loss) from a worker as the one-line error it is.

    Ray Train wraps worker exceptions in a ``WorkerGroupError``; a torch DataLoader process
    re-raises the original type with the whole traceback as its message, whose last line is
    the original one-line message.
    """
    failures = getattr(err, "worker_failures", None) or {}
    for failure in failures.values():
        cause = failure
        while cause is not None and not isinstance(cause, RaydbbError):
            cause = cause.__cause__
        if isinstance(cause, RaydbbError):
            lines = [line for line in str(cause).splitlines() if line.strip()] or [""]
            last = lines[-1]
            prefix = f"{type(cause).__module__}.{type(cause).__name__}: "
            raise type(cause)(last[len(prefix):] if last.startswith(prefix) else last) from err
    raise err


def fit_classifier(
    spec: FitSpec,
    train_frame: pd.DataFrame,
    val_frame: pd.DataFrame,
    out_dir: str | Path,
    final_frames: dict[str, pd.DataFrame] | None = None,
    storage_dir: str | Path | None = None,
    ray_config: RayConfig | None = None,
) -> FitResult:
    """Train under Ray Train ``TorchTrainer``; the selected checkpoint ends up in ``out_dir``.

    Every epoch is validated on ``val_frame``; the epoch with the best validation worst-group
    accuracy is selected and written to ``out_dir`` as soon as it is selected. ``final_frames``
    (``{split: frame}``) are evaluated with the selected weights on the training workers. Ray
    Train's run state lives in ``storage_dir`` (default: ``.ray_train`` next to ``out_dir``;
    shared storage on a multi-node cluster) and is removed after a successful run. Ray is
    started (or joined) with ``ray_config`` after the inputs are validated, unless already up.
    """
    import ray
    from ray.train import LoggingConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from raydbb.models.classifier import find_imagenet_weights
    from raydbb.ray_utils import init_ray

    if len(train_frame) == 0:
        raise DataError("no training rows: the dataset's train split is empty")
    if len(val_frame) == 0:
        raise DataError("no validation rows: model selection needs a val split")
    if spec.classifier is not None and spec.classifier.pretrained:
        find_imagenet_weights(spec.classifier)  # fail here, in one line, not inside a worker
    frames, skipped = drop_unreadable({"train": train_frame, "val": val_frame, **(final_frames or {})},
                                      spec.train.bad_images)
    if not skipped.empty:
        counts = ", ".join(f"{s} {n}" for s, n in skipped["split"].value_counts(sort=False).items())
        print(f"[{spec.name}] training without {len(skipped)} unreadable image(s) ({counts}); "
              f"listed in {Path(out_dir) / SKIPPED_FILE}", flush=True)
    train_frame, val_frame = frames.pop("train"), frames.pop("val")
    final_frames = frames
    out_dir = Path(out_dir).resolve()
    storage = Path(storage_dir).resolve() if storage_dir else out_dir.parent / ".ray_train"
    run_name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"

    init_ray(ray_config or RayConfig())  # no-op when the caller already connected
    check_workers_fit(spec.train)
    refs = {
        "train": ray.put(train_frame.reset_index(drop=True)),
        "val": ray.put(val_frame.reset_index(drop=True)),
        "final": ray.put({k: v.reset_index(drop=True) for k, v in (final_frames or {}).items()}),
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec, "out_dir": str(out_dir), **refs},
        scaling_config=scaling_config(spec.train),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(storage),  # Ray Train requires an absolute path or URI
            logging_config=LoggingConfig(log_level="WARNING"),  # our own per-epoch line instead
        ),
    )
    try:
        result = trainer.fit()
    except Exception as err:  # a worker's DataError/RaydbbError becomes one line again
        _raise_worker_error(err)
    if result.return_value is None or not (out_dir / META_FILE).is_file():
        raise RaydbbError(f"training run {run_name} finished without a checkpoint in {out_dir}")
    write_skipped(skipped, out_dir)
    mark_finished(out_dir)
    resume.discard(resume.resume_dir(out_dir))
    for leftover in [storage / run_name, *_killed_runs(storage, spec.name)]:
        shutil.rmtree(leftover, ignore_errors=True)
    with contextlib.suppress(OSError):  # other runs may still use it
        storage.rmdir()
    value = result.return_value
    return FitResult(out_dir, value["best_epoch"], value["metrics"], value["history"])


def _killed_runs(storage: Path, name: str) -> list[Path]:
    """Ray Train folders of earlier ``name`` runs whose process is gone (killed before cleaning up)."""
    dead = []
    for folder in storage.glob(f"{name}-*-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            dead.append(folder)
    return dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def erm_spec(cfg: RaydbbConfig, records) -> FitSpec:
    """The :class:`FitSpec` of plain ERM for ``cfg`` on ``records`` (a RecordSet)."""
    from raydbb.training.metrics import train_group_fractions

    group_names = records.group_names()
    fractions = train_group_fractions(records.split("train")["group"].to_numpy(), len(group_names))
    return FitSpec(
        train=cfg.train,
        class_names=list(records.class_names),
        group_names=group_names,
        train_group_fraction=fractions,
        classifier=cfg.classifier,
        meta={"spurious_names": list(records.spurious_names), "dataset": records.name,
              "data_root": str(cfg.data.root), "method": "erm"},
    )


def train_erm(cfg: RaydbbConfig) -> FitResult:
    """ERM on ``cfg.data``: best checkpoint and ``metrics.json`` (val, test) in ``OUT/erm/``."""
    from raydbb.data.registry import load_records
    from raydbb.training.evaluate import write_metrics

    records = load_records(cfg.data)
    out_dir = RunDir(cfg.out).erm
    spec = erm_spec(cfg, records)
    result = fit_classifier(spec, records.split("train"), records.split("val"), out_dir,
                            final_frames={"test": records.split("test")}, ray_config=cfg.ray)
    write_metrics(out_dir / "metrics.json", result.metrics,
                  run={"checkpoint": str(out_dir), "dataset": records.name, "data_root": str(cfg.data.root),
                       "best_epoch": result.best_epoch, "selection": "val worst_group_accuracy",
                       "history": result.history})
    return result
