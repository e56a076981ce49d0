"""Tiny DDB inputs for tests: a run folder shared by test_retrain.py and test_tune.py (built once
per test session), and :func:`untrained_inputs` for tests of the generate step itself.

``OUT/data``: the synthetic benchmark (32 px). ``OUT/erm``: a small_cnn trained by plain ERM (a
short in-process loop: the Ray Train path is covered by test_erm.py). ``OUT/manifest``,
``OUT/images``, ``OUT/masks``: the generate step with perfect counterfactual repaints
(:mod:`raydbb.tools.oracle`: real selection, τ, prune stage and writer; the plain-loop engine), with
every prune rule off, so the manifest keeps everything and records every score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from raydbb.config import RaydbbConfig, load_config

CLASSES = ["landbird", "waterbird"]
SIZE = 32
SEED = 0
N = {"n_train": 160, "n_val": 40, "n_test": 40}


@dataclass
class TinyRun:
    out: Path
    data: Path
    erm: Path


def base_overrides(run: TinyRun, out: Path) -> list[str]:
    """Config overrides for generating/retraining/tuning on the tiny run, writing into ``out``."""
    return [
        f"out={out}", "data.name=synthetic", f"data.root={run.data}", f"retrain.checkpoint={run.erm}",
        f"generate.classifier={run.erm}", "select.fraction=0.3", "prune.ig_steps=4",
        "classifier.arch=small_cnn", "classifier.pretrained=false", f"classifier.image_size={SIZE}",
        "classifier.width=8", "train.batch_size=32", "train.optimizer=adam", "train.augment=false",
        "train.num_workers=1", "train.cpus_per_worker=1", "train.seed=0",
    ]


def untrained_inputs(root: Path, n_train: int, erm: Path) -> tuple[Path, Path]:
    """What a generate run needs, at sizes that take seconds: the synthetic benchmark (``n_train``
    training images, 32 px) in ``root/data``, a random-weight small_cnn saved as the ERM checkpoint
    ``erm`` and a random-weight inpainting pipeline in ``root/sd``. Returns (data root, pipeline)."""
    from raydbb.config import ClassifierConfig
    from raydbb.data.synthetic import write_synthetic
    from raydbb.models.checkpoint import save_classifier
    from raydbb.models.classifier import build_classifier
    from raydbb.models.small_sd import build_small_inpaint_pipeline

    data = write_synthetic(root / "data", seed=0, n_train=n_train, n_val=4, n_test=4, size=SIZE,
                           progress=False)
    torch.manual_seed(0)
    arch = ClassifierConfig(arch="small_cnn", pretrained=False, image_size=SIZE, width=4)
    save_classifier(build_classifier(arch, 2), erm, {"class_names": CLASSES})
    return data, build_small_inpaint_pipeline(root / "sd", seed=0, sample_size=8)


def oracle_generate(run: TinyRun, out: Path, delta: float, prob_rule: bool) -> RaydbbConfig:
    """The generate step with perfect counterfactuals and the given thresholds into ``out``."""
    from raydbb.tools.oracle import run_oracle_generate

    cfg = load_config(None, [*base_overrides(run, out), f"prune.delta={delta}",
                             f"prune.prob_rule={prob_rule}"])
    run_oracle_generate(cfg, engine="loop", progress=False)
    return cfg


def _train_erm(data: Path, out: Path) -> None:
    from torch.utils.data import DataLoader

    from raydbb.config import ClassifierConfig, DataConfig
    from raydbb.data.registry import load_records
    from raydbb.data.torch_dataset import ImageRecords
    from raydbb.models.checkpoint import save_classifier
    from raydbb.models.classifier import build_classifier
    from raydbb.models.transforms import EvalTransform

    records = load_records(DataConfig(name="synthetic", root=str(data)))
    torch.manual_seed(SEED)
    arch = ClassifierConfig(arch="small_cnn", pretrained=False, image_size=SIZE, width=8)
    model = build_classifier(arch, 2)
    loader = DataLoader(ImageRecords(records.split("train"), EvalTransform(SIZE)), batch_size=32,
                        shuffle=True, generator=torch.Generator().manual_seed(SEED))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(2):
        for images, labels, _, _ in loader:
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    save_classifier(model.eval(), out, {"class_names": CLASSES, "group_names": records.group_names(),
                                        "spurious_names": list(records.spurious_names)})


def build_tiny_run(base: Path) -> TinyRun:
    """Build (or reuse, within one session) the tiny run folder under ``base``."""
    from raydbb.data.synthetic import write_synthetic

    out = base / "tiny_ddb_run"
    run = TinyRun(out, write_synthetic(out / "data", seed=SEED, size=SIZE, progress=False, **N), out / "erm")
    if not (run.erm / "classifier.json").is_file():
        _train_erm(run.data, run.erm)
    if not (out / "manifest").is_dir():
        oracle_generate(run, out, delta=float("-inf"), prob_rule=False)
    return run
