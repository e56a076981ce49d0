"""The benchmark inputs: real raydbb inputs built offline (no downloads) and cached on disk.

The synthetic benchmark at 64 px, the demo-sized ``small_cnn`` ERM classifier (briefly trained,
so its integrated-gradient paths bend like a real classifier's), a small SD-2-shaped inpainting
pipeline and tiny GroundingDINO + SAM checkpoints, all saved to folders and loaded back through
``from_pretrained`` like hub checkpoints. They are cached under ``RAYDBB_BENCH_DIR`` (default
``runs/bench``), where the benchmarks' run folders go too.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CLASS_NAMES = ["landbird", "waterbird"]


def bench_dir() -> Path:
    """Where fixtures and benchmark run folders live (``RAYDBB_BENCH_DIR``, default ``runs/bench``)."""
    return Path(os.environ.get("RAYDBB_BENCH_DIR", "runs/bench"))


@dataclass(frozen=True)
class Fixtures:
    """Folders of the benchmark inputs (see the module docstring)."""

    root: Path
    data: Path
    classifier: Path
    sd: Path
    detector: Path
    segmenter: Path
    image_size: int


def cached_build(folder: Path, params: dict[str, Any], build: Callable[[], Any]) -> None:
    """Run ``build`` (which writes ``folder``) unless ``folder`` holds a build with ``params``."""
    marker = folder / "bench_fixture.json"
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return
    shutil.rmtree(folder, ignore_errors=True)
    build()
    marker.write_text(json.dumps(params, sort_keys=True))


def synthetic_data(out: Path, **params: Any) -> Path:
    """:func:`raydbb.data.synthetic.write_synthetic` into ``out`` (a cached folder is reused); a
    folder written by another generator version is this cache's to redo."""
    from raydbb.data.synthetic import write_synthetic
    from raydbb.errors import DataError

    try:
        return write_synthetic(out, **params)
    except DataError:
        shutil.rmtree(out)
        return write_synthetic(out, **params)


def train_demo_classifier(data: Path, out: Path, image_size: int = 64, width: int = 16, epochs: int = 2,
                          seed: int = 0) -> Path:
    """The demo-sized ``small_cnn`` (``jobs/configs/synthetic.yaml``), trained for a few epochs.

    A plain in-process loop (no Ray Train start-up), because the benchmarks need a classifier whose
    logits depend on the image the way a trained one's do — not the best one. Saved with
    :func:`raydbb.models.checkpoint.save_classifier`.
    """
    import torch
    import torch.nn.functional as F

    from raydbb.config import ClassifierConfig, DataConfig
    from raydbb.data.images import read_image
    from raydbb.data.registry import load_records
    from raydbb.models.checkpoint import save_classifier
    from raydbb.models.classifier import build_classifier
    from raydbb.models.transforms import to_model_input

    train = load_records(DataConfig(name="synthetic", root=str(data))).split("train")
    x = to_model_input([read_image(p) for p in train["path"]], image_size)
    y = torch.tensor(train["label"].to_numpy(dtype=np.int64))
    torch.manual_seed(seed)
    model = build_classifier(ClassifierConfig(arch="small_cnn", pretrained=False, image_size=image_size,
                                              width=width), len(CLASS_NAMES))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return save_classifier(model.eval(), out, {"class_names": CLASS_NAMES, "bench": "demo small_cnn"})


def build_fixtures(root: Path | None = None, n_train: int = 1000, image_size: int = 64,
                   sd_sample_size: int = 16) -> Fixtures:
    """Build (once; cached by parameters) every benchmark input under ``root``."""
    from raydbb.models.small_langsam import build_tiny_langsam
    from raydbb.models.small_sd import build_small_inpaint_pipeline

    root = Path(root or bench_dir() / "fixtures")
    base = root / f"s{image_size}-n{n_train}"
    fx = Fixtures(root=base, data=base / "data", classifier=base / "erm", sd=base / f"sd{sd_sample_size}",
                  detector=base / "langsam" / "grounding_dino", segmenter=base / "langsam" / "sam",
                  image_size=image_size)
    synthetic_data(fx.data, seed=0, n_train=n_train, n_val=8, n_test=8, size=image_size, progress=False)
    data_params = json.loads((fx.data / "synthetic.json").read_text())
    width, epochs = 16, 2
    cached_build(fx.classifier,
                 {"image_size": image_size, "width": width, "epochs": epochs, "data": data_params},
                 lambda: train_demo_classifier(fx.data, fx.classifier, image_size, width, epochs))
    cached_build(fx.sd, {"sample_size": sd_sample_size},
                 lambda: build_small_inpaint_pipeline(fx.sd, seed=0, sample_size=sd_sample_size))
    cached_build(base / "langsam", {"langsam": 1}, lambda: build_tiny_langsam(base / "langsam", seed=0))
    return fx
