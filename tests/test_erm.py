"""ERM through Ray Train on CPU on a tiny fixture; the checkpoint is read back by ``raydbb evaluate``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from raydbb.cli import main
from raydbb.config import load_config
from raydbb.data.registry import load_records
from raydbb.errors import ConfigError, DataError
from raydbb.models.checkpoint import load_classifier, save_classifier
from raydbb.models.classifier import build_classifier
from raydbb.training.erm import _raise_worker_error, fit_classifier, train_erm
from raydbb.training.worker import FitSpec

COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220)}  # the class: a square in the middle
BACKGROUNDS = {"grass": (60, 160, 60), "sand": (200, 190, 120)}  # the spurious attribute
GROUP_NAMES = ["red/grass", "red/sand", "blue/grass", "blue/sand"]
METRIC_KEYS = {"worst_group_accuracy", "average_accuracy", "weighted_average_accuracy", "group_accuracy",
               "group_count"}


def _write_dataset(root, counts):
    """Generic CSV layout: 24 px images, ``counts[split][(class, background)]`` images per group."""
    rng = np.random.default_rng(0)
    rows = ["path,label,spurious,split"]
    for split, groups in counts.items():
        for (label, spurious), n in groups.items():
            for i in range(n):
                img = np.empty((24, 24, 3), dtype=np.uint8)
                img[:] = BACKGROUNDS[spurious]
                y, x = rng.integers(2, 10, size=2)
                img[y:y + 12, x:x + 12] = COLOURS[label]
                noise = rng.integers(-20, 21, size=img.shape)
                img = np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)
                rel = f"images/{split}_{label}_{spurious}_{i}.png"
                (root / "images").mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / rel)
                rows.append(f"{rel},{label},{spurious},{split}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    (root / "classes.json").write_text(json.dumps({"class_names": ["red", "blue"],
                                                   "spurious_names": ["grass", "sand"]}))
    return root


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    balanced = {g: 3 for g in [("red", "grass"), ("red", "sand"), ("blue", "grass"), ("blue", "sand")]}
    counts = {
        "train": {("red", "grass"): 12, ("red", "sand"): 2, ("blue", "grass"): 2, ("blue", "sand"): 8},
        "val": balanced,
        "test": balanced,
    }
    return _write_dataset(tmp_path_factory.mktemp("tiny"), counts)


def _config(dataset, out, *extra):
    return load_config(None, [
        f"out={out}", "data.name=csv", f"data.root={dataset}",
        "classifier.arch=small_cnn", "classifier.pretrained=false", "classifier.image_size=16",
        "classifier.width=4", "train.epochs=3", "train.batch_size=4", "train.lr=0.01",
        "train.optimizer=adam", "train.num_workers=2", "train.cpus_per_worker=1", *extra,
    ])


def test_erm_under_ray_train_then_evaluate(ray_local, tiny_dataset, tmp_path, capsys):
    cfg = _config(tiny_dataset, tmp_path / "run")
    result = train_erm(cfg)
    erm = tmp_path / "run" / "erm"
    assert result.checkpoint_dir == erm.resolve()
    assert {p.name for p in erm.iterdir()} >= {"model.safetensors", "classifier.json", "metrics.json"}
    assert not (tmp_path / "run" / ".ray_train").exists()  # Ray Train's scratch run state removed

    # Selection: the saved epoch has the best val worst-group accuracy of the history.
    history = result.history
    assert [h["epoch"] for h in history] == [1, 2, 3]
    best = max(h["val_worst_group_accuracy"] for h in history)
    chosen = next(h for h in history if h["epoch"] == result.best_epoch)
    assert chosen["val_worst_group_accuracy"] == best and chosen["selected"]
    assert all(np.isfinite(h["train_loss"]) for h in history)

    model, meta = load_classifier(erm)
    assert meta["epoch"] == result.best_epoch and meta["class_names"] == ["red", "blue"]
    assert meta["group_names"] == GROUP_NAMES and meta["spurious_names"] == ["grass", "sand"]
    assert meta["val_metrics"]["worst_group_accuracy"] == best

    # metrics.json layout: per split, the four fields (+ group counts), named groups.
    written = json.loads((erm / "metrics.json").read_text())
    assert set(written) == {"val", "test", "run"}
    for split in ("val", "test"):
        assert METRIC_KEYS <= set(written[split])
        assert set(written[split]["group_accuracy"]) == set(GROUP_NAMES)
        assert written[split]["group_count"] == dict.fromkeys(GROUP_NAMES, 3)
    assert written["val"] == meta["val_metrics"]
    assert written["run"]["best_epoch"] == result.best_epoch

    # `raydbb evaluate` reads the checkpoint back and gets the same numbers as the sharded
    # in-training evaluation (2 workers, counts summed across ranks).
    out_file = tmp_path / "eval" / "metrics.json"
    rc = main(["evaluate", "--checkpoint", str(erm), "--dataset", "csv", "--root", str(tiny_dataset),
               "--out", str(out_file)])
    assert rc == 0
    evaluated = json.loads(out_file.read_text())
    assert evaluated["val"] == written["val"] and evaluated["test"] == written["test"]
    printed = capsys.readouterr().out
    assert "weighted average (train group proportions)" in printed and "red/sand" in printed

    # The weighted average uses the TRAIN proportions (12, 2, 2, 8 of 24).
    acc = evaluated["test"]["group_accuracy"]
    weights = {"red/grass": 12, "red/sand": 2, "blue/grass": 2, "blue/sand": 8}
    expected = sum(weights[g] * acc[g] for g in GROUP_NAMES) / 24
    assert evaluated["test"]["weighted_average_accuracy"] == pytest.approx(expected)


def _weighted_loss(logits, labels, index):
    # Up-weights even rows of the training frame: a stand-in for DDB's per-row repaint weights.
    weights = 1.0 + (index % 2 == 0).float()
    return (torch.nn.functional.cross_entropy(logits, labels, reduction="none") * weights).mean()


def test_retrain_hook_head_only_keeps_backbone(ray_local, tiny_dataset, tmp_path):
    """The reuse path of reweighted retraining: start from a checkpoint, custom loss, head only.

    Runs in Ray Train's local mode (train.num_workers=0: the loop runs in this process).
    """
    cfg = _config(tiny_dataset, tmp_path / "run", "train.epochs=2", "train.num_workers=0")
    records = load_records(cfg.data)
    base = tmp_path / "base"
    torch.manual_seed(0)
    save_classifier(build_classifier(cfg.classifier, 2), base, {"class_names": ["red", "blue"]})
    spec = FitSpec(train=cfg.train, class_names=["red", "blue"], group_names=GROUP_NAMES,
                   train_group_fraction=None, init_checkpoint=str(base), head_only=True,
                   loss_fn=_weighted_loss, name="retrain")
    result = fit_classifier(spec, records.split("train"), records.split("val"), tmp_path / "retrain",
                            final_frames={"test": records.split("test")})
    before, _ = load_classifier(base)
    after, meta = load_classifier(tmp_path / "retrain")
    assert meta["head_only"] and meta["init_checkpoint"] == str(base) and meta["epoch"] == result.best_epoch
    for (name, a), b in zip(before.backbone.state_dict().items(), after.backbone.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name  # frozen backbone, BatchNorm statistics included
    assert not torch.equal(before.head.weight, after.head.weight)
    assert set(result.metrics) == {"val", "test"}
    assert result.metrics["val"]["weighted_average_accuracy"] is None  # no train fractions given


def test_unreadable_images_are_skipped_and_listed_or_refused_in_one_line(ray_local, tiny_dataset, tmp_path,
                                                                        capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dataset, broken)
    train_images = sorted((broken / "images").glob("train_*.png"))
    train_images[0].write_bytes(b"not a png")
    train_images[1].write_bytes(b"")
    truncated = sorted((broken / "images").glob("val_*.png"))[0]
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(DataError, match=r"^3 image\(s\) cannot be read, e\.g\. .*train\.bad_images=skip"):
        train_erm(_config(broken, tmp_path / "refused", "train.epochs=1", "train.num_workers=0",
                          "train.bad_images=refuse"))
    assert not (tmp_path / "refused" / "erm").exists()

    result = train_erm(_config(broken, tmp_path / "run", "train.epochs=1", "train.num_workers=0"))
    assert "training without 3 unreadable image(s) (train 2, val 1)" in capsys.readouterr().out
    skipped = pd.read_csv(result.checkpoint_dir / "skipped_images.csv")
    assert sorted(skipped["split"]) == ["train", "train", "val"]
    assert {Path(p).name for p in skipped["path"]} == {train_images[0].name, train_images[1].name,
                                                      truncated.name}
    assert skipped["reason"].str.contains("could not be decoded").all()
    assert sum(result.metrics["val"]["group_count"].values()) == 11  # 12 val images, one left out


def test_worker_errors_come_back_as_one_line():
    """What Ray Train raises when a worker fails (checked against a real run): the original
    exception per rank; a DataLoader process's copy carries the whole traceback as message."""
    from ray.train import WorkerGroupError

    plain = WorkerGroupError("rank 0 failed", {0: DataError("image x.png could not be decoded")})
    with pytest.raises(DataError, match=r"^image x.png could not be decoded$"):
        _raise_worker_error(plain)
    wrapped = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback:\n  File ...\n"
                        "raydbb.errors.DataError: image y.png could not be decoded\n")
    with pytest.raises(DataError, match=r"^image y.png could not be decoded$"):
        _raise_worker_error(WorkerGroupError("rank 1 failed", {1: wrapped}))
    other = WorkerGroupError("rank 0 failed", {0: RuntimeError("boom")})
    with pytest.raises(WorkerGroupError):
        _raise_worker_error(other)


def test_workers_that_cannot_fit_fail_before_training(ray_local, tiny_dataset, tmp_path):
    cfg = _config(tiny_dataset, tmp_path / "run", "train.use_gpu=true", "train.num_workers=1")
    if ray_local.cluster_resources().get("GPU", 0) == 0:
        with pytest.raises(ConfigError, match=r"train.use_gpu=true .* needs that many GPUs but Ray has 0"):
            train_erm(cfg)
    have = ray_local.cluster_resources()["CPU"]
    cfg = _config(tiny_dataset, tmp_path / "run", "train.num_workers=3", f"train.cpus_per_worker={have}")
    with pytest.raises(ConfigError, match=rf"needs {3 * have:g} CPUs but Ray has {have:g}"):
        train_erm(cfg)
    assert not (tmp_path / "run" / "erm").exists()



def test_same_config_and_seed_give_identical_metrics_and_weights(ray_local, tiny_dataset, tmp_path):
    # Two workers, augmentation on: initial weights, data order, augmentation and the sharded
    # validation all come from the seed, so two runs agree bit for bit on CPU.
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        train_erm(_config(tiny_dataset, out, "train.augment=true", "train.seed=3"))
    metrics = [json.loads((out / "erm" / "metrics.json").read_text()) for out in runs]
    for doc, out in zip(metrics, runs, strict=True):
        assert doc["run"].pop("checkpoint") == str((out / "erm").resolve())  # the one expected difference
        for row in doc["run"].get("history", []):
            row.pop("seconds", None)  # wall time per epoch
    assert metrics[0] == metrics[1]
    weights = [load_classifier(out / "erm")[0].state_dict() for out in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_evaluate_never_replaces_the_training_record(ray_local, tiny_dataset, tmp_path, capsys):
    cfg = _config(tiny_dataset, tmp_path / "run", "train.num_workers=0", "train.epochs=1")
    train_erm(cfg)
    erm = tmp_path / "run" / "erm"
    assert json.loads((erm / "classifier.json").read_text())["training"] == "finished"
    record = (erm / "metrics.json").read_text()
    assert main(["evaluate", "--checkpoint", str(erm), "--dataset", "csv", "--root", str(tiny_dataset)]) == 0
    assert (erm / "metrics.json").read_text() == record
    assert set(json.loads((erm / "evaluation-csv.json").read_text())) >= {"val", "test"}
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(erm), "--dataset", "csv", "--root", str(tiny_dataset),
                 "--out", str(erm / "metrics.json")]) == 2
    assert "training record" in capsys.readouterr().err
    assert (erm / "metrics.json").read_text() == record


_BATCHES_BEFORE_CRASH = {"left": None}


def _loss_that_can_crash(logits, labels, index):
    """Cross-entropy that raises once a set number of batches have run (a crash mid-epoch)."""
    left = _BATCHES_BEFORE_CRASH["left"]
    if left is not None:
        if left == 0:
            raise RuntimeError("simulated crash")
        _BATCHES_BEFORE_CRASH["left"] = left - 1
    return torch.nn.functional.cross_entropy(logits, labels)


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_a_crashed_training_resumes_from_its_last_epoch_with_the_same_result(tiny_dataset, tmp_path, capsys,
                                                                             monkeypatch, ema_decay):
    # With a weight average on, the average is part of the saved state: the resumed run selects
    # and saves the same averaged weights.
    records = load_records(_config(tiny_dataset, tmp_path).data)
    cfg = _config(tiny_dataset, tmp_path, "train.num_workers=0", "train.epochs=4", "train.augment=true",
                  f"train.ema_decay={ema_decay}").train
    spec = FitSpec(train=cfg, class_names=records.class_names, group_names=records.group_names(),
                   train_group_fraction=None, classifier=_config(tiny_dataset, tmp_path).classifier,
                   loss_fn=_loss_that_can_crash)

    def fit(out):
        return fit_classifier(spec, records.split("train"), records.split("val"), out,
                              final_frames={"test": records.split("test")})

    reference = fit(tmp_path / "reference" / "erm")
    monkeypatch.setitem(_BATCHES_BEFORE_CRASH, "left", 15)  # 6 batches an epoch: dies in epoch 3
    with pytest.raises(Exception, match="simulated crash"):
        fit(tmp_path / "run" / "erm")
    states = tmp_path / "run" / ".erm.resume"
    assert sorted(p.name for p in states.glob("*.pt")) == ["epoch-2-rank0.pt", "epoch-2.pt"]
    capsys.readouterr()

    monkeypatch.setitem(_BATCHES_BEFORE_CRASH, "left", None)
    resumed = fit(tmp_path / "run" / "erm")
    assert "resuming after epoch 2 of 4" in capsys.readouterr().out
    strip = [{k: v for k, v in row.items() if k != "seconds"}
             for run in (reference, resumed) for row in run.history]
    assert strip[:4] == strip[4:]
    assert resumed.metrics == reference.metrics and resumed.best_epoch == reference.best_epoch
    weights = [load_classifier(r.checkpoint_dir)[0].state_dict() for r in (reference, resumed)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not states.exists() and not (tmp_path / "run" / ".ray_train").exists()
    # Other settings never continue a saved state: the fingerprint differs.
    from raydbb.training import resume
    other = resume.fingerprint(FitSpec(**{**spec.__dict__, "train": cfg.model_copy(update={"lr": 0.5})}), 1,
                               [records.split("train"), records.split("val")])
    assert other != resume.fingerprint(spec, 1, [records.split("train"), records.split("val")])


def test_resume_fingerprint_leaves_out_fields_added_later_at_their_neutral_value():
    """A state saved before ``lr_schedule`` and ``ema_decay`` existed hashed a TrainConfig without
    them; at their neutral values the hash still matches, so an upgrade does not restart training."""
    from raydbb.config import RaydbbConfig, TrainConfig
    from raydbb.training.resume import _canonical

    before = {k: v for k, v in TrainConfig().model_dump(mode="json").items()
              if k not in ("lr_schedule", "ema_decay")}
    assert _canonical(TrainConfig()) == before
    assert _canonical(TrainConfig(ema_decay=0.5)) == {**before, "ema_decay": 0.5}
    # Nested sections too: the retrain section's copies of both fields.
    retrain = _canonical(RaydbbConfig())["retrain"]
    assert "lr_schedule" not in retrain and "ema_decay" not in retrain and "lr" in retrain


def test_cosine_lr_schedule_by_hand():
    """lr * (1 + cos(pi * (epoch - 1) / epochs)) / 2 per epoch; constant is lr throughout. The retrain
    section's schedule is what full retraining's train section gets."""
    from raydbb.config import TrainConfig, load_config
    from raydbb.ddb.retrain.run import retrain_train_config
    from raydbb.training.worker import epoch_lr

    cosine = TrainConfig(lr=0.4, epochs=4, lr_schedule="cosine")
    # cos(0) = 1, cos(pi/4) = 0.7071, cos(pi/2) = 0, cos(3pi/4) = -0.7071
    assert [round(epoch_lr(cosine, e), 4) for e in (1, 2, 3, 4)] == [0.4, 0.3414, 0.2, 0.0586]
    assert {epoch_lr(TrainConfig(lr=0.4, epochs=4), e) for e in (1, 2, 3, 4)} == {0.4}
    cfg = load_config(None, ["retrain.lr_schedule=cosine", "retrain.lr=0.01", "retrain.epochs=3"])
    train = retrain_train_config(cfg)
    assert (train.lr_schedule, train.lr, train.epochs) == ("cosine", 0.01, 3)
    assert cfg.train.lr_schedule == "constant"  # ERM's own schedule is untouched


def test_weight_average_by_hand():
    """The first update copies the weights; each later one is decay * average + (1 - decay) * weights,
    BatchNorm's running statistics included. retrain.ema_decay is what full retraining gets."""
    from raydbb.ddb.retrain.run import retrain_train_config
    from raydbb.training.worker import weight_average

    assert weight_average(torch.nn.Linear(1, 1), 0.0) is None
    model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    average = weight_average(model, 0.75)
    for weight, running_mean in ((1.0, 2.0), (3.0, 6.0), (5.0, 2.0)):
        with torch.no_grad():
            model[0].weight.fill_(weight)
        model[1].running_mean.fill_(running_mean)
        average.update_parameters(model)
    # 1 -> 0.75 * 1 + 0.25 * 3 = 1.5 -> 0.75 * 1.5 + 0.25 * 5 = 2.375; means 2 -> 3 -> 2.75
    assert average.module[0].weight.item() == pytest.approx(2.375)
    assert average.module[1].running_mean.item() == pytest.approx(2.75)
    cfg = load_config(None, ["retrain.ema_decay=0.99"])
    assert retrain_train_config(cfg).ema_decay == 0.99 and cfg.train.ema_decay == 0.0
