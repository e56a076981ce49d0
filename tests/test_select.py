"""Majority selection, τ and token pool on hand-built score vectors; the score stage on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from raydbb.config import ClassifierConfig, SelectConfig
from raydbb.data.records import RecordSet, make_frame
from raydbb.ddb.select import (
    class_quota,
    class_tau,
    read_tau,
    select_majority,
    token_pool,
    write_tau,
    write_token_pool,
)
from raydbb.errors import ConfigError, DataError

CLASSES = ["landbird", "waterbird"]


def _scores(rows: list[tuple[str, int, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["sample_id", "label", "loss", "p_true"])


def test_selection_is_per_sample_not_per_batch() -> None:
    # Class 0 scored in two batches of four. Batch A has the single lowest loss but the higher
    # mean (3.775 vs 1.0), so ranking by batch-mean loss would take batch B first; per sample,
    # a0 (0.1) must be selected, then the lowest of B (ties broken by id: b0).
    losses = {"a0": 0.1, "a1": 5.0, "a2": 5.0, "a3": 5.0, "b0": 1.0, "b1": 1.0, "b2": 1.0, "b3": 1.0}
    scores = _scores([(k, 0, v, np.exp(-v)) for k, v in losses.items()] + [("w0", 1, 0.3, 0.7)])
    picked = select_majority(scores, CLASSES, SelectConfig(fraction=0.25))
    assert picked[picked["label"] == 0]["sample_id"].tolist() == ["a0", "b0"]
    assert picked[picked["label"] == 1]["sample_id"].tolist() == ["w0"]


def test_count_fraction_and_per_class_fraction() -> None:
    rng = np.random.default_rng(0)
    rows = [(f"l{i}", 0, float(v), 0.5) for i, v in enumerate(rng.permutation(10))]
    rows += [(f"w{i}", 1, float(v), 0.5) for i, v in enumerate(rng.permutation(20))]
    scores = _scores(rows)
    # fraction: ceil(0.3 * 10) = 3 (not 4 from 0.30000000000000004 * 10), ceil(0.3 * 20) = 6
    sel = select_majority(scores, CLASSES, SelectConfig(fraction=0.3))
    assert sel.groupby("label").size().tolist() == [3, 6]
    assert sorted(sel[sel["label"] == 0]["loss"]) == [0.0, 1.0, 2.0]
    # count wins over fraction
    sel = select_majority(scores, CLASSES, SelectConfig(fraction=0.3, count=4))
    assert sel.groupby("label").size().tolist() == [4, 4]
    # per-class fraction by name wins for that class; the other keeps the count
    cfg = SelectConfig(count=4, per_class_fraction={"waterbird": 0.5})
    assert class_quota(cfg, CLASSES, [10, 20]) == [4, 10]
    # a count larger than a class is capped
    assert class_quota(SelectConfig(count=50), CLASSES, [10, 20]) == [10, 20]


def test_unknown_class_in_per_class_fraction_is_one_line_error() -> None:
    cfg = SelectConfig(per_class_fraction={"seabird": 0.5})
    with pytest.raises(ConfigError, match=r"per_class_fraction: unknown class 'seabird'"):
        class_quota(cfg, CLASSES, [3, 3])


def test_unreadable_images_are_not_selected_and_not_in_tau() -> None:
    scores = _scores([("a", 0, 0.5, 0.9), ("b", 0, 1.0, 0.7), ("bad", 0, np.nan, np.nan),
                      ("c", 1, 2.0, 0.2), ("d", 1, 1.0, 0.4), ("e", 1, 0.3, 0.6)])
    sel = select_majority(scores, CLASSES, SelectConfig(fraction=1.0))
    assert "bad" not in set(sel["sample_id"])
    assert len(sel) == 5
    tau = class_tau(scores, 2)
    np.testing.assert_allclose(tau, [0.8, 0.4])
    assert np.isnan(class_tau(scores, 3)[2])


def test_tau_and_token_pool_files(tmp_path) -> None:
    frame = make_frame(
        sample_id=["a", "b", "c", "d", "va", "vb", "vc"],
        path=[f"/x/{i}.png" for i in "abcd"] + ["/x/va.png", "/x/vb.png", "/x/vc.png"],
        label=[0, 0, 1, 1, 0, 0, 1],
        split=["train"] * 4 + ["val"] * 3,
        # train: class 0 mostly spurious 0 -> minority spurious 1; class 1 mostly 1 -> minority 0
        spurious=[0, 0, 1, 1, 1, 0, 0],
        n_spurious=2,
    )
    records = RecordSet("toy", frame, CLASSES, ["land", "water"])
    scores = _scores([("a", 0, 0.2, 0.8), ("b", 0, 1.5, 0.3), ("c", 1, 0.1, 0.9), ("d", 1, 3.0, 0.1)])

    pools = token_pool(scores, records, SelectConfig(token_pool_size=1))
    assert pools["landbird"]["sample_id"].tolist() == ["b"]  # highest loss of its class
    assert pools["waterbird"]["sample_id"].tolist() == ["d"]
    paths = write_token_pool(tmp_path, pools)
    back = pd.read_csv(paths["landbird"])
    assert back["path"].tolist() == ["/x/b.png"] and back["loss"].tolist() == [1.5]

    val = token_pool(scores, records, SelectConfig(token_pool_source="val_minority", token_pool_size=5))
    assert val["landbird"]["sample_id"].tolist() == ["va"]  # class 0, spurious 1 (rare in train)
    assert val["waterbird"]["sample_id"].tolist() == ["vc"]

    tau = class_tau(scores, 2)
    write_tau(tmp_path, CLASSES, tau, "/ckpt")
    doc = json.loads((tmp_path / "tau.json").read_text())
    assert doc["by_class"] == pytest.approx({"landbird": 0.55, "waterbird": 0.5})
    np.testing.assert_allclose(read_tau(tmp_path), [0.55, 0.5])


def test_val_minority_needs_spurious_labels() -> None:
    frame = make_frame(["a", "v"], ["/a.png", "/v.png"], [0, 0], ["train", "val"])
    records = RecordSet("toy", frame, ["only"])
    with pytest.raises(DataError, match="no spurious labels"):
        token_pool(_scores([("a", 0, 0.1, 0.9)]), records, SelectConfig(token_pool_source="val_minority"))


def test_score_stage_gives_per_sample_cross_entropy(tmp_path) -> None:
    import torch

    from raydbb.ddb.stages.score import ScoreStage
    from raydbb.engine.stage import empty_image, object_column
    from raydbb.models.checkpoint import save_classifier
    from raydbb.models.classifier import build_classifier
    from raydbb.models.transforms import to_model_input

    torch.manual_seed(0)
    cfg = ClassifierConfig(arch="small_cnn", pretrained=False, image_size=16, width=4)
    model = build_classifier(cfg, 2).eval()
    save_classifier(model, tmp_path / "erm", {"class_names": CLASSES})
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, 20, 3), dtype=np.uint8) for h in (16, 24, 20)]
    labels = np.array([0, 1, 1, 0])
    stage = ScoreStage(tmp_path / "erm")
    stage.resources.model_batch_size = 2  # two forward passes of 2 and 1 images
    stage.setup()
    out = stage({"source_id": np.array(["a", "b", "c", "bad"], dtype=object),
                 "source_label": labels,
                 "source_image": object_column([*images, empty_image()]),
                 "prune_reason": np.array(["", "", "", "error:image_read"], dtype=object)})
    with torch.no_grad():
        logits = model(to_model_input(images, 16))
    expected = torch.nn.functional.cross_entropy(logits, torch.as_tensor(labels[:3]), reduction="none")
    np.testing.assert_allclose(out["loss"][:3], expected.numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["p_true"][:3], np.exp(-expected.numpy()), rtol=1e-5)
    assert np.isnan(out["loss"][3]) and np.isnan(out["p_true"][3])
    assert "source_image" not in out
