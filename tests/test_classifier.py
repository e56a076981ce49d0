"""Classifier construction, ImageNet weight loading (local files only), checkpoints, preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from raydbb.config import ClassifierConfig, load_config
from raydbb.errors import ConfigError, DataError, RaydbbError
from raydbb.models.checkpoint import load_classifier, save_classifier
from raydbb.models.classifier import IMAGENET_MEAN, IMAGENET_STD, build_classifier
from raydbb.models.transforms import EvalTransform, TrainTransform, mask_to_model, to_model_input


@pytest.fixture
def empty_hub(tmp_path):
    """Point the torch hub cache at an empty folder (restored afterwards)."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def _torchvision_resnet18_file(path, seed=0):
    from torchvision.models import resnet18

    torch.manual_seed(seed)
    net = resnet18(weights=None)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(net.state_dict(), str(path))
    else:
        torch.save(net.state_dict(), path)
    net.fc = nn.Identity()
    return net.eval()


def test_pretrained_without_weights_is_one_clear_line(empty_hub):
    cfg = ClassifierConfig(arch="resnet18", pretrained=True)
    expected = r"provide classifier.weights=PATH or set classifier.pretrained=false"
    with pytest.raises(ConfigError, match=expected) as err:
        build_classifier(cfg, 2)
    assert "\n" not in str(err.value) and "resnet18-f37072fd.pth" in str(err.value)


def test_missing_or_wrong_weights_file(tmp_path, empty_hub):
    with pytest.raises(ConfigError, match=r"classifier.weights=.*nope.pth: file not found"):
        build_classifier(ClassifierConfig(arch="resnet18", weights=str(tmp_path / "nope.pth")), 2)
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(ConfigError, match=r"not torchvision resnet18 weights"):
        build_classifier(ClassifierConfig(arch="resnet18", weights=str(bad)), 2)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=r"not a readable torch weights file"):
        build_classifier(ClassifierConfig(arch="resnet18", weights=str(junk)), 2)


def test_config_rejects_weights_with_pretrained_false():
    with pytest.raises(ConfigError, match=r"classifier.weights is set but classifier.pretrained=false"):
        load_config(None, ["classifier.weights=/x.pth", "classifier.pretrained=false"])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_loaded_from_local_file_and_normalised_inside(tmp_path, empty_hub, suffix):
    path = tmp_path / f"r18{suffix}"
    reference = _torchvision_resnet18_file(path)
    model = build_classifier(ClassifierConfig(arch="resnet18", weights=str(path), image_size=32), 3).eval()
    assert model.head.out_features == 3 and model.head.in_features == 512
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    normalised = (x - mean) / std
    with torch.no_grad():
        assert torch.allclose(model.features(x), reference(normalised), atol=1e-5)
        assert torch.allclose(model(x), model.head(model.features(x)))


def test_weights_found_in_torch_hub_cache(empty_hub):
    (empty_hub / "checkpoints").mkdir(parents=True)
    reference = _torchvision_resnet18_file(empty_hub / "checkpoints" / "resnet18-f37072fd.pth", seed=3)
    model = build_classifier(ClassifierConfig(arch="resnet18", pretrained=True), 2)
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)


def test_small_cnn_checkpoint_round_trip_is_bit_identical(tmp_path):
    torch.manual_seed(0)
    cfg = ClassifierConfig(arch="small_cnn", pretrained=False, image_size=32, width=8)
    model = build_classifier(cfg, 2)
    model.train()
    model(torch.rand(4, 3, 32, 32))  # move BatchNorm running statistics off their init
    model.eval()
    save_classifier(model, tmp_path / "ckpt", {"class_names": ["a", "b"], "val_metrics": {"x": 1.0}})
    loaded, meta = load_classifier(tmp_path / "ckpt")
    assert meta["arch"] == "small_cnn" and meta["width"] == 8 and meta["image_size"] == 32
    assert meta["num_classes"] == 2 and meta["class_names"] == ["a", "b"]
    assert not loaded.training
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        assert torch.equal(model.features(x), loaded.features(x))
    doc = json.loads((tmp_path / "ckpt" / "classifier.json").read_text())
    assert doc["val_metrics"] == {"x": 1.0}


def test_load_classifier_errors(tmp_path):
    with pytest.raises(RaydbbError, match=r"missing classifier.json"):
        load_classifier(tmp_path)
    model = build_classifier(ClassifierConfig(arch="small_cnn", pretrained=False, width=4), 2)
    with pytest.raises(ValueError, match=r"meta may not override \['arch'\]"):
        save_classifier(model, tmp_path, {"arch": "x"})


def test_to_model_input_resizes_deterministically_and_aligns_masks():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 40, 40, 3), dtype=np.uint8)
    batch = to_model_input(images, 20)
    assert batch.shape == (3, 3, 20, 20) and batch.dtype == torch.float32
    assert 0.0 <= float(batch.min()) and float(batch.max()) <= 1.0
    assert torch.equal(batch, to_model_input(list(images), 20))  # array and list paths agree
    assert torch.equal(EvalTransform(20)(images[1]), batch[1])
    # Same size: no resampling, exact /255.
    assert torch.equal(to_model_input(images, 40)[0], torch.from_numpy(images[0]).permute(2, 0, 1) / 255.0)
    # A mask goes through the same resize as an image whose pixels are the mask.
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:23, 11:30] = True
    as_image = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)
    assert torch.allclose(mask_to_model(mask, 20), to_model_input([as_image], 20)[0, 0], atol=1e-6)
    with pytest.raises(DataError, match=r"expected uint8 HxWx3 RGB"):
        to_model_input([np.zeros((4, 4), dtype=np.uint8)], 8)


def test_train_transform_is_seeded_and_in_range():
    image = np.random.default_rng(1).integers(0, 256, size=(48, 40, 3), dtype=np.uint8)
    torch.manual_seed(0)
    a = [TrainTransform(32)(image) for _ in range(3)]
    torch.manual_seed(0)
    b = [TrainTransform(32)(image) for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(x.shape == (3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1 for x in a)
    assert not torch.equal(a[0], a[1])  # augmentation actually varies
    assert torch.equal(TrainTransform(32, augment=False)(image), EvalTransform(32)(image))
