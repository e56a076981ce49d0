"""The per-worker training loop of :func:`raydbb.training.erm.fit_classifier` (runs inside Ray Train).

Each worker builds its own loader from the records (a seeded ``DistributedSampler`` shards the rows
by rank); validation is sharded too and the per-group counts are summed across workers, so every
worker takes the same model-selection decision (validation worst-group accuracy).
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from raydbb.config import ClassifierConfig, TrainConfig
from raydbb.errors import RaydbbError
from raydbb.models.checkpoint import IN_PROGRESS, save_classifier, unwrap
from raydbb.training import resume

BatchLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(logits (B,C), labels (B,), index (B,)) -> scalar``; index = rows of the train frame."""

BatchHook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``batch_fn(images, labels, index) -> (images, targets)``: rewrites a training batch before the
forward pass (e.g. mixup); ``targets`` may be class indices (B,) or class probabilities (B,C),
and go to ``loss_fn`` as its ``labels``. Randomness should come from torch's global RNG, which
each rank seeds."""


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the batch (plain ERM); ``index`` is unused."""
    return F.cross_entropy(logits, labels)


@dataclass
class FitSpec:
    """What one training run needs besides its data; picklable, shipped to every worker.

    Exactly one of ``classifier`` (build a fresh model) and ``init_checkpoint`` (start from the
    weights and architecture of a saved checkpoint folder, e.g. the ERM model) is set.
    ``head_only`` trains the linear head alone, with the backbone frozen in eval mode.
    ``final_splits`` are evaluated with the selected weights at the end (on the training
    devices); ``meta`` is added to the checkpoint's ``classifier.json``.
    ``batch_fn`` (optional, :data:`BatchHook`) rewrites each training batch before the forward
    pass; ``select_last`` keeps the last epoch instead of the best validation epoch (a model
    trained for a fixed number of epochs, e.g. JTT's identification model).
    """

    train: TrainConfig
    class_names: list[str]
    group_names: list[str]
    train_group_fraction: list[float] | None
    classifier: ClassifierConfig | None = None
    init_checkpoint: str | None = None
    head_only: bool = False
    loss_fn: BatchLoss = cross_entropy_loss
    meta: dict[str, Any] = field(default_factory=dict)
    name: str = "erm"
    batch_fn: BatchHook | None = None
    select_last: bool = False

    def __post_init__(self) -> None:
        if (self.classifier is None) == (self.init_checkpoint is None):
            raise ValueError("FitSpec needs exactly one of classifier and init_checkpoint")


@dataclass
class FitResult:
    """The selected checkpoint folder, its epoch, metrics per split and the per-epoch history."""

    checkpoint_dir: Path
    best_epoch: int
    metrics: dict[str, dict[str, Any]]
    history: list[dict[str, Any]]


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (model init and augmentation draw from these)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def selection_key(metrics: dict[str, Any]) -> tuple[float, float]:
    """Validation worst-group accuracy, ties broken by average accuracy.

    Without group labels there is no worst group; the average accuracy decides alone.
    """
    avg = metrics["average_accuracy"] or 0.0
    wga = metrics["worst_group_accuracy"]
    return (avg if wga is None else wga, avg)


def _epoch_line(epoch: int, epochs: int, loss: float, val: dict[str, Any], selected: bool,
                secs: float) -> str:
    def pct(v: float | None) -> str:
        return "  n/a" if v is None else f"{100 * v:5.1f}"

    return (f"epoch {epoch:>3}/{epochs}  loss {loss:.4f}  val avg {pct(val['average_accuracy'])}  "
            f"val WGA {pct(val['worst_group_accuracy'])}  {secs:5.1f}s" + ("  *selected" if selected else ""))


def _progress(line: str) -> None:
    """One line on the worker's stdout, which Ray streams to the driver.

    Written directly: Ray Train turns ``print`` into INFO logs, which the workers silence.
    """
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _all_reduce_sum(array: np.ndarray, device: torch.device) -> np.ndarray:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return array
    tensor = torch.as_tensor(array, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy()


def _sharded_metrics(model, frame: pd.DataFrame, spec: FitSpec, image_size: int, device: torch.device,
                     rank: int, world: int) -> dict[str, Any]:
    """Group metrics over the whole ``frame``: each rank predicts rows rank::world, counts are summed."""
    from raydbb.training.evaluate import predict
    from raydbb.training.metrics import count_correct, metrics_from_counts

    preds, labels, groups = predict(unwrap(model), frame, image_size, device, spec.train.batch_size,
                                    indices=range(rank, len(frame), world),
                                    num_workers=spec.train.loader_workers)
    counts = _all_reduce_sum(count_correct(preds, labels, groups, len(spec.group_names)), device)
    return metrics_from_counts(counts, spec.group_names, spec.train_group_fraction)


def _build_model(spec: FitSpec):
    from raydbb.models.checkpoint import load_classifier
    from raydbb.models.classifier import build_classifier

    if spec.init_checkpoint:
        model, _ = load_classifier(spec.init_checkpoint)
        return model
    return build_classifier(spec.classifier, len(spec.class_names))


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def epoch_lr(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (1-based): ``cfg.lr``, or with ``lr_schedule: cosine``
    ``lr * (1 + cos(pi * (epoch - 1) / epochs)) / 2``, from lr in the first epoch down towards 0.
    Set per epoch, so a resumed run needs no scheduler state."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return cfg.lr * (1.0 + math.cos(math.pi * (epoch - 1) / cfg.epochs)) / 2.0


def weight_average(model: torch.nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights and buffers (torch's ``AveragedModel``),
    or None when ``decay`` is 0. Its first update copies the weights; each later one moves the
    average ``1 - decay`` of the way towards them."""
    if decay == 0.0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker function: train, validate every epoch, keep the selected checkpoint.

    ``config``: ``spec`` (:class:`FitSpec`), ``out_dir`` and object refs ``train``/``val``/
    ``final`` to the training frame, the validation frame and ``{split: frame}`` evaluated with
    the selected weights at the end. Rank 0 writes each newly selected checkpoint to
    ``out_dir`` (on a multi-node cluster the run folder is shared storage). Returns (rank 0's
    value becomes ``Result.return_value``) the selected epoch, its metrics per split and the
    per-epoch history.
    """
    import ray
    import ray.train
    import ray.train.torch
    from torch.utils.data import DataLoader, DistributedSampler

    from raydbb.data.torch_dataset import ImageRecords
    from raydbb.models.transforms import TrainTransform

    spec: FitSpec = config["spec"]
    cfg = spec.train
    out_dir = Path(config["out_dir"])
    train_frame, val_frame, final_frames = ray.get([config["train"], config["val"], config["final"]])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if cfg.num_workers > 0:  # a Ray worker process of its own (not local mode in the driver)
        # Ray Train logs every report at INFO through the root logger; our own line per epoch is enough.
        logging.getLogger().setLevel(logging.WARNING)
        if device.type == "cpu":
            torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))

    seed_everything(cfg.seed)  # identical initial weights on every rank
    model = _build_model(spec)
    image_size = model.config.image_size
    if spec.head_only:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    model = ray.train.torch.prepare_model(model)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    # The model that is validated, selected and saved: the trained one, or its weight average.
    average = weight_average(unwrap(model), cfg.ema_decay)
    scored = model if average is None else average.module
    seed_everything(cfg.seed + 1000 * rank)  # distinct augmentation streams per rank
    loader_generator = torch.Generator().manual_seed(cfg.seed + rank)

    dataset = ImageRecords(train_frame, TrainTransform(image_size, cfg.augment))
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.loader_workers,
        # A trailing batch of one sample breaks BatchNorm; every rank has the same shard length.
        drop_last=len(sampler) > cfg.batch_size, pin_memory=device.type == "cuda",
        persistent_workers=cfg.loader_workers > 0,
        generator=loader_generator,
    )

    best_key, best_state, best_val, best_epoch = None, None, None, 0
    history = []
    states = resume.resume_dir(out_dir)
    fingerprint = resume.fingerprint(spec, world, [train_frame, val_frame])
    done, saved = resume.latest_state(states, fingerprint, rank, loader_generator)
    if saved is not None:
        unwrap(model).load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if average is not None:
            average.load_state_dict(saved["average"])
        best_key, best_val, best_epoch = tuple(saved["best_key"]), saved["best_val"], saved["best_epoch"]
        best_state, history = saved["best_state"], saved["history"]
        if rank == 0:
            _progress(f"[{spec.name}] resuming after epoch {done} of {cfg.epochs} ({states})")
    for epoch in range(done + 1, cfg.epochs + 1):
        start = time.time()
        sampler.set_epoch(epoch)
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr(cfg, epoch)
        model.train()
        if spec.head_only:
            unwrap(model).backbone.eval()  # frozen features: keep BatchNorm statistics fixed
        sums = np.zeros(2, dtype=np.float64)
        for images, labels, _, index in loader:
            images = images.to(device, non_blocking=True)
            labels, index = labels.to(device), index.to(device)
            if spec.batch_fn is not None:
                images, labels = spec.batch_fn(images, labels, index)
            loss = spec.loss_fn(model(images), labels, index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if average is not None:
                average.update_parameters(unwrap(model))
            sums += (loss.item() * len(labels), len(labels))
        sums = _all_reduce_sum(sums, device)
        train_loss = float(sums[0] / max(sums[1], 1))
        if not math.isfinite(train_loss):
            raise RaydbbError(f"training diverged in epoch {epoch} (loss {train_loss}); lower train.lr")

        val = _sharded_metrics(scored, val_frame, spec, image_size, device, rank, world)
        key = selection_key(val)
        selected = best_key is None or key > best_key or spec.select_last
        if selected:
            best_key, best_val, best_epoch = key, val, epoch
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in unwrap(scored).state_dict().items()}
        row = {"epoch": epoch, "train_loss": train_loss,
               "val_average_accuracy": val["average_accuracy"],
               "val_worst_group_accuracy": val["worst_group_accuracy"],
               "val_weighted_average_accuracy": val["weighted_average_accuracy"],
               "selected": selected, "seconds": round(time.time() - start, 2)}
        history.append(row)
        if rank == 0:
            _progress(_epoch_line(epoch, cfg.epochs, train_loss, val, selected, row["seconds"]))
        if selected and rank == 0:
            publish_checkpoint(scored, out_dir, _checkpoint_meta(spec, epoch, val))
        resume.save_rank_state(states, epoch, rank, fingerprint, loader_generator)
        ray.train.report(row)  # a barrier too: every rank reports once per epoch
        if rank == 0:  # after the barrier: every rank's state of this epoch is on disk
            resume.save_model_state(states, epoch, fingerprint, {
                "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "average": None if average is None else average.state_dict(),
                "best_key": list(best_key), "best_val": best_val, "best_epoch": best_epoch,
                "best_state": best_state, "history": history})

    unwrap(scored).load_state_dict(best_state)
    metrics = {"val": best_val}
    for split, frame in final_frames.items():
        if split != "val" and len(frame):
            metrics[split] = _sharded_metrics(scored, frame, spec, image_size, device, rank, world)
    return {"best_epoch": best_epoch, "metrics": metrics, "history": history}


def _checkpoint_meta(spec: FitSpec, epoch: int, val: dict[str, Any]) -> dict[str, Any]:
    return {
        "class_names": list(spec.class_names),
        "group_names": list(spec.group_names),
        "epoch": epoch,
        "selection": ("last epoch" if spec.select_last
                      else "val worst_group_accuracy (ties: val average_accuracy)"),
        "val_metrics": val,
        "train_config": spec.train.model_dump(mode="json"),
        "init_checkpoint": spec.init_checkpoint,
        "head_only": spec.head_only,
        "training": IN_PROGRESS,  # fit_classifier marks it finished once the run ends
        **spec.meta,
    }


def publish_checkpoint(model: torch.nn.Module, out_dir: Path, meta: dict[str, Any]) -> None:
    """Write a checkpoint to ``out_dir`` by swapping in a complete folder (never a half-written one).

    Whatever ``out_dir`` held before (an older selection, a previous run's metrics) is replaced.
    """
    tmp = out_dir.parent / f".{out_dir.name}.new-{os.getpid()}"
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # our own leftover from a crash (same pid)
    save_classifier(model, tmp, meta)
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
