"""Grad-CAM saliency (captum's ``LayerGradCam``) of a classifier, upsampled to the input size.

Shared by MaskTune and DaC. The layer is the backbone's last convolutional block (``layer4`` of a
ResNet, the last conv block of ``small_cnn``); the target is the image's label.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn


def gradcam_layer(model: nn.Module) -> nn.Module:
    """The last convolutional block of ``model.backbone``."""
    backbone = model.backbone
    if hasattr(backbone, "layer4"):
        return backbone.layer4
    blocks = [m for m in backbone.children() if any(isinstance(c, nn.Conv2d) for c in m.modules())]
    if not blocks:
        raise ValueError("no convolutional block in the backbone for Grad-CAM")
    return blocks[-1]


def gradcam(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps (N, S, S) of ``images`` (N,3,S,S in [0,1]) for class ``targets`` (ReLU'd)."""
    from captum.attr import LayerAttribution, LayerGradCam

    model.eval()
    cam = LayerGradCam(model, gradcam_layer(model))
    attr = cam.attribute(images, target=targets, relu_attributions=True)
    up = LayerAttribution.interpolate(attr, tuple(images.shape[-2:]), interpolate_mode="bilinear")
    return up[:, 0].detach()


Batch = tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]


def saliency_batches(model: nn.Module, frame: pd.DataFrame, image_size: int, device: str | torch.device,
                     batch_size: int) -> Iterator[Batch]:
    """Per batch: row positions, images (N,3,S,S), per-sample CE loss and Grad-CAM maps (N,S,S)."""
    from torch.utils.data import DataLoader

    from raydbb.data.torch_dataset import ImageRecords
    from raydbb.models.transforms import EvalTransform

    loader = DataLoader(ImageRecords(frame, EvalTransform(image_size)), batch_size=batch_size, shuffle=False)
    for images, labels, _, index in loader:
        images, labels = images.to(device), labels.to(device)
        model.eval()
        with torch.no_grad():
            loss = torch.nn.functional.cross_entropy(model(images), labels, reduction="none")
        yield index.numpy(), images.cpu(), loss.cpu(), gradcam(model, images, labels).cpu()


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3,S,S) float in [0,1] -> (S,S,3) uint8."""
    return (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def write_png(array: np.ndarray, path) -> str:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return str(path)
