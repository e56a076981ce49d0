"""Mask stage: dataset / attribution / text (tiny GroundingDINO + SAM) sources, dilation, degenerate masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raydbb.config import ClassifierConfig, MaskConfig, StageResources
from raydbb.data.images import write_png_atomic
from raydbb.ddb.stages.mask import MaskStage, degenerate_reason, dilate_mask
from raydbb.engine.stage import empty_image, object_column
from raydbb.errors import ConfigError
from raydbb.models.checkpoint import save_classifier
from raydbb.models.classifier import build_classifier
from raydbb.models.small_langsam import build_tiny_langsam

CLASSES = ["landbird", "waterbird"]


def _batch(images, labels, mask_paths=None, reasons=None):
    n = len(images)
    return {
        "source_id": np.array([f"s{i}" for i in range(n)], dtype=object),
        "source_label": np.asarray(labels, dtype=np.int64),
        "source_image": object_column(images),
        "dataset_mask_path": np.array(mask_paths or [""] * n, dtype=object),
        "prune_reason": np.array(reasons or [""] * n, dtype=object),
        "error": np.full(n, "", dtype=object),
    }


def _images(n, h=24, w=40, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def _dataset_stage(**kw):
    return MaskStage(MaskConfig(source="dataset", min_area=0.0, max_area=1.0, **kw), CLASSES)


def test_dilate_disk_on_hand_built_masks():
    point = np.zeros((11, 11), np.uint8)
    point[5, 5] = 1
    # Radius-2 disk: offsets with dx²+dy² <= 4 -> 1 + 4 + 4 + 4 = 13 pixels.
    assert dilate_mask(point, 2).sum() == 13
    assert dilate_mask(point, 0).sum() == 1
    rect = np.zeros((12, 12), np.uint8)
    rect[4:7, 4:8] = 1  # 3 x 4
    grown = dilate_mask(rect, 1)
    # Radius 1 adds one pixel on each side but not the diagonal corners: 5*6 - 4 = 26.
    assert grown.sum() == 26 and grown.dtype == np.uint8
    assert grown[3, 3] == 0 and grown[3, 4] == 1 and grown[5, 8] == 1


def test_degenerate_reasons():
    m = np.zeros((10, 10), np.uint8)
    assert degenerate_reason(m, 0.0, 1.0) == "empty mask"
    m[0, 0] = 1
    assert "min_area" in degenerate_reason(m, 0.02, 1.0)
    assert degenerate_reason(m, 0.01, 1.0) == ""
    assert "max_area" in degenerate_reason(np.ones((10, 10), np.uint8), 0.0, 0.95)


def test_dataset_source_reads_each_rows_mask(tmp_path):
    images = _images(6)
    a = np.zeros((24, 40), bool)
    a[2:10, 3:9] = True
    b = np.zeros((24, 40), bool)
    b[12:20, 20:38] = True
    small = np.zeros((12, 20), bool)  # half-size file: resized (nearest) to the image
    small[0:6, 0:10] = True
    write_png_atomic(tmp_path / "a.png", a)
    write_png_atomic(tmp_path / "b.png", b)
    write_png_atomic(tmp_path / "small.png", small)
    write_png_atomic(tmp_path / "empty.png", np.zeros((24, 40), bool))
    paths = [str(tmp_path / p) for p in ("b.png", "a.png", "small.png", "empty.png", "missing.png")] + [""]
    batch = _batch(images, [1, 0, 1, 1, 0, 1], paths)
    batch["prune_reason"][5] = "error:image_read"
    batch["source_image"][5] = empty_image()
    out = _dataset_stage()(batch)

    np.testing.assert_array_equal(out["mask"][0], b.astype(np.uint8))
    np.testing.assert_array_equal(out["mask"][1], a.astype(np.uint8))
    assert out["mask"][2].shape == (24, 40) and out["mask"][2][:12, :20].all() and out["mask"][2].sum() == 240
    assert list(out["prune_reason"]) == ["", "", "", "no_mask", "error:mask_read", "error:image_read"]
    assert out["error"][3] == "empty mask" and "missing.png" in out["error"][4]
    assert list(out["mask_source"]) == ["dataset"] * 5 + [""]
    assert out["mask"][5].shape == (0, 0)  # already-decided row: placeholder, untouched reason
    assert all(m.dtype == np.uint8 for m in out["mask"])
    assert (out["source_image"][0] == images[0]).all()  # other columns pass through


def test_dataset_source_dilates_and_checks_area(tmp_path):
    m = np.zeros((24, 40), bool)
    m[10, 20] = True
    write_png_atomic(tmp_path / "dot.png", m)
    out = _dataset_stage(dilate=2)(_batch(_images(1), [0], [str(tmp_path / "dot.png")]))
    assert out["mask"][0].sum() == 13 and out["prune_reason"][0] == ""
    # The area check sees the dilated mask: 13 / 960 = 0.0135.
    stage = MaskStage(MaskConfig(source="dataset", dilate=2, min_area=0.02), CLASSES)
    out = stage(_batch(_images(1), [0], [str(tmp_path / "dot.png")]))
    assert out["prune_reason"][0] == "no_mask" and "0.0135 < mask.min_area=0.02" in out["error"][0]
    # A row without a dataset mask is a recorded skip, not a crash.
    out = _dataset_stage()(_batch(_images(1), [0], [""]))
    assert out["prune_reason"][0] == "no_mask" and "dataset_mask_path" in out["error"][0]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig(arch="small_cnn", pretrained=False, image_size=32, width=8), 2)
    return save_classifier(model, tmp_path_factory.mktemp("erm"), {"class_names": CLASSES})


def test_attribution_quantile_sets_area_share(classifier_dir):
    images = _images(4, h=40, w=56, seed=1)
    shares = {}
    masks = {}
    for q in (0.5, 0.8, 0.9):
        cfg = MaskConfig(source="attribution", attribution_quantile=q, min_area=0.0, max_area=1.0,
                         resources=StageResources(model_batch_size=3))
        out = MaskStage(cfg, CLASSES, checkpoint_dir=classifier_dir)(_batch(images, [0, 1, 0, 1]))
        assert list(out["prune_reason"]) == [""] * 4
        assert all(m.shape == (40, 56) and set(np.unique(m)) <= {0, 1} for m in out["mask"])
        assert out["mask_model"][0] == str(classifier_dir)
        shares[q] = [m.mean() for m in out["mask"]]
        masks[q] = out["mask"]
    for q, values in shares.items():
        np.testing.assert_allclose(values, 1 - q, atol=1.5 / (40 * 56) + 1e-9)
    # Same attribution map, higher quantile: a subset of the pixels.
    assert all((hi <= lo).all() for hi, lo in zip(masks[0.9], masks[0.8], strict=True))


def test_attribution_needs_a_checkpoint():
    with pytest.raises(ConfigError, match="mask.source=attribution needs the ERM checkpoint"):
        MaskStage(MaskConfig(source="attribution"), CLASSES)


@pytest.fixture(scope="module")
def langsam(tmp_path_factory):
    return build_tiny_langsam(tmp_path_factory.mktemp("langsam"))


def _text_stage(langsam, **kw):
    det, seg = langsam
    cfg = MaskConfig(source="text", detector=str(det), segmenter=str(seg), min_area=0.0, max_area=1.0,
                     resources=StageResources(model_batch_size=2), **kw)
    return MaskStage(cfg, CLASSES)


def test_text_source_plumbing(langsam):
    images = _images(2, h=24, w=40) + _images(1, h=32, w=32, seed=3)
    batch = _batch(images + [empty_image()], [0, 1, 1, 0], reasons=["", "", "", "error:image_read"])
    stage = _text_stage(langsam, box_threshold=0.0, text_threshold=0.0)
    out = stage(batch)
    # A random detector finds arbitrary boxes; SAM turns the best one into a binary mask per image.
    assert [m.shape for m in out["mask"]] == [(24, 40), (24, 40), (32, 32), (0, 0)]
    assert all(set(np.unique(m)) <= {0, 1} and m.dtype == np.uint8 for m in out["mask"])
    assert list(out["mask_source"]) == ["text"] * 3 + [""]
    assert out["mask_model"][0] == f"{langsam[0]}+{langsam[1]}"
    assert list(out["prune_reason"]) == ["", "", "", "error:image_read"]
    assert all(m.any() for m in out["mask"][:3])
    # Deterministic: the same batch gives the same masks.
    again = stage(batch)
    assert all((a == b).all() for a, b in zip(out["mask"], again["mask"], strict=True))


@pytest.mark.parametrize("thresholds", [{"box_threshold": 1.0}, {"text_threshold": 1.0}])
def test_text_source_no_box_is_no_mask(langsam, thresholds):
    out = _text_stage(langsam, **thresholds)(_batch(_images(3), [0, 1, 0]))
    assert list(out["prune_reason"]) == ["no_mask"] * 3
    assert "no box for 'landbird.'" in out["error"][0] and "no box for 'waterbird.'" in out["error"][1]
    assert all(m.shape == (24, 40) and m.sum() == 0 for m in out["mask"])


def test_text_prompts_override_class_names(langsam):
    det, seg = langsam
    cfg = MaskConfig(source="text", detector=str(det), segmenter=str(seg), text_prompts={"waterbird": "Bird"})
    stage = MaskStage(cfg, CLASSES)
    assert stage.detector_prompt(1) == "bird." and stage.detector_prompt(0) == "landbird."
    with pytest.raises(ConfigError, match=r"mask.text_prompts: unknown class names \['heron'\]"):
        MaskStage(MaskConfig(source="text", text_prompts={"heron": "bird"}), CLASSES)


@pytest.mark.gpu
def test_text_source_on_cuda(langsam):
    det, seg = langsam
    cfg = MaskConfig(source="text", detector=str(det), segmenter=str(seg), box_threshold=0.0,
                     text_threshold=0.0, min_area=0.0, max_area=1.0, resources=StageResources(num_gpus=1))
    stage = MaskStage(cfg, CLASSES)
    out = stage(_batch(_images(2), [0, 1]))
    assert next(stage._models["det"].parameters()).device.type == "cuda"
    assert [m.shape for m in out["mask"]] == [(24, 40), (24, 40)]
