"""A tiny DDB run folder shared by test_retrain.py and test_tune.py (built once per test session).

``OUT/data``: the synthetic benchmark (32 px). ``OUT/erm``: a small_cnn trained by plain ERM (a
short in-process loop: the Ray Train path is covered by test_erm.py). ``OUT/manifest``,
``OUT/images``, ``OUT/masks``: a manifest in the generation layout whose repaints are the
benchmark's own perfect counterfactuals of majority-group training images (same background and
pose, the other bird: :func:`raydbb.data.synthetic.render_sample` with the other label), scored by
the real prune stage with every rule off, so the manifest keeps everything and records every score.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

CLASSES = ["landbird", "waterbird"]
SIZE = 32
SEED = 0
N = {"n_train": 160, "n_val": 40, "n_test": 40}
N_SOURCES = 48  # majority-group training images repainted


@dataclass
class TinyRun:
    out: Path
    data: Path
    erm: Path
    batch: dict  # the prune stage's input rows (source, repaint, mask), for re-running the stage
    tau: np.ndarray


def base_overrides(run: TinyRun, out: Path) -> list[str]:
    """Config overrides for retraining/tuning on the tiny run, writing into ``out``."""
    return [
        f"out={out}", "data.name=synthetic", f"data.root={run.data}", f"retrain.checkpoint={run.erm}",
        "classifier.arch=small_cnn", "classifier.pretrained=false", f"classifier.image_size={SIZE}",
        "classifier.width=8", "train.batch_size=32", "train.optimizer=adam", "train.augment=false",
        "train.num_workers=1", "train.cpus_per_worker=1", "train.seed=0", "prune.ig_steps=4",
    ]


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
    for _ in range(4):
        for images, labels, _, _ in loader:
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    save_classifier(model.eval(), out, {"class_names": CLASSES, "group_names": records.group_names(),
                                        "spurious_names": list(records.spurious_names)})


def _prune_batch(data: Path, out: Path) -> dict:
    """Stage input rows: majority-group sources, their counterfactual repaints, union masks."""
    from raydbb.data.images import write_png_atomic
    from raydbb.data.synthetic import render_sample
    from raydbb.engine.stage import object_column
    from raydbb.engine.stages.expand import make_sample_id

    meta = pd.read_csv(data / "metadata.csv")
    train = meta[(meta["split"] == "train") & (meta["label"].map(CLASSES.index) == meta["spurious"].map(
        ["land", "water"].index))].head(N_SOURCES)
    rows: dict[str, list] = {k: [] for k in ("sample_id", "source_id", "source_path", "source_label",
                                             "target_label", "source_image", "image", "mask", "image_path",
                                             "mask_path")}
    for _, r in train.iterrows():
        index = int(Path(r["path"]).stem.split("_")[1])
        label, spurious = CLASSES.index(r["label"]), ["land", "water"].index(r["spurious"])
        source = render_sample(SEED, "train", index, label, spurious, SIZE)
        repaint = render_sample(SEED, "train", index, 1 - label, spurious, SIZE)
        mask = source.mask | repaint.mask  # everything that changed lies inside
        source_id = Path(r["path"]).stem
        sid = make_sample_id(source_id, CLASSES[1 - label], 0)
        write_png_atomic(out / "images" / f"{sid}.png", repaint.image)
        write_png_atomic(out / "masks" / f"{source_id}.png", mask)
        values = {"sample_id": sid, "source_id": source_id, "source_path": str(data / r["path"]),
                  "source_label": label, "target_label": 1 - label, "source_image": source.image,
                  "image": repaint.image, "mask": mask.astype(np.uint8),
                  "image_path": f"images/{sid}.png", "mask_path": f"masks/{source_id}.png"}
        for key, value in values.items():
            rows[key].append(value)
    batch = {k: (object_column(v) if k in ("source_image", "image", "mask") else np.array(v))
             for k, v in rows.items()}
    n = len(batch["sample_id"])
    batch["prune_reason"] = np.array([""] * n, dtype=object)
    batch["error"] = np.array([""] * n, dtype=object)
    return batch


def class_tau(erm: Path, data: Path) -> np.ndarray:
    """τ_y of the ERM model on the training split (Eq. 3), via the engine's rule."""
    from raydbb.config import DataConfig
    from raydbb.data.images import read_image
    from raydbb.data.registry import load_records
    from raydbb.engine.prune_rules import compute_tau
    from raydbb.models.checkpoint import load_classifier
    from raydbb.models.transforms import to_model_input

    model, _ = load_classifier(erm)
    train = load_records(DataConfig(name="synthetic", root=str(data))).split("train")
    with torch.no_grad():
        probs = torch.softmax(model(to_model_input([read_image(p) for p in train["path"]], SIZE)), 1).numpy()
    labels = train["label"].to_numpy()
    return compute_tau(probs[np.arange(len(labels)), labels], labels, 2)


def run_prune_stage(erm: Path, batch: dict, tau: np.ndarray, delta: float, prob_rule: bool) -> dict:
    """The generation-time prune stage on ``batch`` (shipped through pickle as the adapter does)."""
    from raydbb.config import PruneConfig
    from raydbb.engine.stages.prune import PruneStage

    cfg = PruneConfig(delta=delta, prob_rule=prob_rule, ig_steps=4,
                      resources={"batch_size": 64, "model_batch_size": 64})
    stage = pickle.loads(pickle.dumps(PruneStage(cfg, classifier_dir=str(erm), tau=tau)))
    stage.setup()
    return stage(batch)


def build_tiny_run(base: Path) -> TinyRun:
    """Build (or reuse, within one session) the tiny run folder under ``base``."""
    from raydbb.data.synthetic import write_synthetic
    from raydbb.engine.manifest import ManifestWriter, manifest_columns

    out = base / "tiny_ddb_run"
    data = write_synthetic(out / "data", seed=SEED, size=SIZE, progress=False, **N)
    erm = out / "erm"
    if not (erm / "classifier.json").is_file():
        _train_erm(data, erm)
    batch = _prune_batch(data, out)
    tau = class_tau(erm, data)
    if not (out / "manifest").is_dir():
        scored = run_prune_stage(erm, batch, tau, delta=-math.inf, prob_rule=False)
        with ManifestWriter(out) as writer:
            writer.add(manifest_columns(scored, {"classifier": str(erm), "mask_source": "dataset"}))
    return TinyRun(out, data, erm, batch, tau)
