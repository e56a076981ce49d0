"""Classifier checkpoints: ``model.safetensors`` + ``classifier.json`` (config and metadata).

``classifier.json`` holds what is needed to rebuild the module (``arch``, ``width``,
``image_size``, ``num_classes``) plus whatever the caller adds (class names, spurious names,
validation metrics, the training config). Loading never unpickles anything.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raydbb import storage
from raydbb.config import ClassifierConfig
from raydbb.errors import RaydbbError

WEIGHTS_FILE = "model.safetensors"
META_FILE = "classifier.json"
FORMAT = "raydbb-classifier/1"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, storage.creation_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_classifier(model: nn.Module, out_dir: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a :class:`~raydbb.models.classifier.Classifier`, possibly DDP-wrapped).

    Files are written atomically; ``classifier.json`` goes last, so a folder that has it is complete.
    ``meta`` must be JSON-serialisable; its keys may not override the architecture fields.
    """
    from safetensors.torch import save_file

    model = unwrap(model)
    cfg: ClassifierConfig = model.config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    _atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(state, tmp, metadata={"format": FORMAT}))
    arch_fields = {
        "format": FORMAT,
        "arch": cfg.arch,
        "width": cfg.width,
        "image_size": cfg.image_size,
        "num_classes": model.num_classes,
    }
    clash = sorted(set(arch_fields) & set(meta or {}))
    if clash:
        raise ValueError(f"meta may not override {clash}")
    doc = {**arch_fields, **(meta or {})}
    text = json.dumps(doc, indent=2, sort_keys=False)
    _atomic_write(out / META_FILE, lambda tmp: Path(tmp).write_text(text + "\n"))
    return out


IN_PROGRESS = "in_progress"
FINISHED = "finished"
"""Values of ``classifier.json``'s ``training`` key: a training run rewrites its folder with each
newly selected epoch (``in_progress``) and marks it ``finished`` when it ends. Checkpoints without
the key (saved by other code) count as finished."""


def mark_finished(ckpt_dir: str | Path) -> None:
    """Record in ``classifier.json`` that the training run writing ``ckpt_dir`` has finished."""
    meta = read_classifier_meta(ckpt_dir)
    meta["training"] = FINISHED
    text = json.dumps(meta, indent=2)
    _atomic_write(Path(ckpt_dir) / META_FILE, lambda tmp: Path(tmp).write_text(text + "\n"))


def require_finished(ckpt_dir: str | Path, field_name: str) -> dict[str, Any]:
    """``classifier.json`` of a checkpoint whose training finished; one line for one a killed or
    still running training run left behind."""
    meta = read_classifier_meta(ckpt_dir)
    if meta.get("training") == IN_PROGRESS:
        raise RaydbbError(f"checkpoint {ckpt_dir} is from a training run that has not finished (epoch "
                          f"{meta.get('epoch', '?')} selected so far); rerun its training, or set "
                          f"{field_name} to a finished checkpoint")
    return meta


def read_classifier_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    """The parsed ``classifier.json`` of a checkpoint folder (one-line error when absent/invalid)."""
    path = Path(ckpt_dir) / META_FILE
    if not path.is_file():
        raise RaydbbError(f"checkpoint {ckpt_dir}: missing {META_FILE}; expected a folder written by "
                          "raydbb train-erm (model.safetensors + classifier.json)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RaydbbError(f"checkpoint {path}: invalid JSON ({err.msg} at line {err.lineno})") from err
    if meta.get("format") != FORMAT:
        raise RaydbbError(f"checkpoint {path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_classifier(ckpt_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the classifier of a checkpoint folder, load its weights strictly, eval mode.

    Returns ``(model, meta)`` where ``meta`` is the full ``classifier.json``.
    """
    from safetensors.torch import load_file

    from raydbb.models.classifier import build_classifier

    meta = read_classifier_meta(ckpt_dir)
    weights = Path(ckpt_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise RaydbbError(f"checkpoint {ckpt_dir}: missing {WEIGHTS_FILE}")
    cfg = ClassifierConfig(arch=meta["arch"], width=meta["width"], image_size=meta["image_size"],
                           pretrained=False)
    model = build_classifier(cfg, int(meta["num_classes"]))
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as err:  # size mismatch, missing/unexpected keys, or an unreadable file
        first = next((ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), str(err).splitlines()[0])
        raise RaydbbError(f"checkpoint {ckpt_dir}: {WEIGHTS_FILE} does not fit {META_FILE} (arch="
                          f"{meta['arch']}, width={meta['width']}, num_classes={meta['num_classes']}): "
                          f"{first}") from None
    return model.to(device).eval(), meta
