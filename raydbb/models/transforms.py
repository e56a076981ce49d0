"""The one deterministic preprocessing every model input goes through, plus train augmentation.

Evaluation, majority selection, pruning and integrated gradients must all see the *same* pixels,
so every one of them calls :func:`to_model_input` (and :func:`mask_to_model` for masks): a plain
bilinear, antialiased resize of the whole image to ``image_size x image_size`` with values in
[0, 1]. No crop, so a mask covers the same pixels before and after preprocessing, and no
normalisation: ImageNet normalisation lives inside the classifier module.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from raydbb.errors import DataError

# Waterbirds/GroupDRO-style augmentation: random resized crop of 70-100 % of the area + h-flip.
CROP_SCALE = (0.7, 1.0)
CROP_RATIO = (0.75, 4.0 / 3.0)


def _check_image(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(
            f"image of shape {image.shape} and dtype {image.dtype}: expected uint8 HxWx3 RGB"
        )
    return image


def _resize(chw: torch.Tensor, image_size: int) -> torch.Tensor:
    """Resize an (N,C,H,W) float tensor to (N,C,S,S), bilinear with antialiasing."""
    if chw.shape[-2:] == (image_size, image_size):
        return chw
    return F.interpolate(chw, size=(image_size, image_size), mode="bilinear", antialias=True,
                         align_corners=False)


def to_model_input(images: np.ndarray | Sequence[np.ndarray], image_size: int) -> torch.Tensor:
    """uint8 HxWx3 RGB arrays -> float tensor (N,3,S,S) in [0, 1] (bilinear, antialiased resize).

    ``images`` is an (N,H,W,3) uint8 array or a sequence of HxWx3 arrays of any sizes (e.g. an
    object column of a Ray Data batch). Deterministic: the same array always gives the same tensor.
    """
    if isinstance(images, np.ndarray) and images.dtype != object and images.ndim == 4:
        if images.shape[3] != 3 or images.dtype != np.uint8:
            raise DataError(f"images of shape {images.shape} and dtype {images.dtype}: "
                            "expected uint8 NxHxWx3 RGB")
        batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
        return _resize(batch, image_size).clamp_(0.0, 1.0)
    out = torch.empty((len(images), 3, image_size, image_size), dtype=torch.float32)
    for i, image in enumerate(images):
        # A copy where the array is read-only (Arrow-backed batches): torch warns about those.
        array = np.ascontiguousarray(_check_image(image))
        chw = torch.from_numpy(array if array.flags.writeable else array.copy()).permute(2, 0, 1)
        out[i] = _resize(chw.float().div_(255.0)[None], image_size)[0]
    return out.clamp_(0.0, 1.0)


def mask_to_model(mask: np.ndarray, image_size: int) -> torch.Tensor:
    """HxW mask (bool or {0,1}/{0,255} ints; nonzero = foreground) -> float (S,S) in [0, 1].

    Uses the same resize as :func:`to_model_input`, so mask and image stay aligned; edge pixels
    get fractional weights.
    """
    if mask.ndim != 2:
        raise DataError(f"mask of shape {mask.shape}: expected a 2-D HxW array")
    m = torch.from_numpy(np.ascontiguousarray(mask != 0)).float()[None, None]
    return _resize(m, image_size)[0, 0].clamp_(0.0, 1.0)


class EvalTransform:
    """Per-sample transform for datasets: HxWx3 uint8 -> (3,S,S) float via :func:`to_model_input`."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return to_model_input([image], self.image_size)[0]


class TrainTransform:
    """Training augmentation: random resized crop (70-100 % area) to SxS and a horizontal flip.

    Randomness comes from torch's global RNG, so a seeded process (and seeded DataLoader workers)
    gives the same augmentation stream.
    """

    def __init__(self, image_size: int, augment: bool = True) -> None:
        self.image_size = image_size
        self.augment = augment

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        if not self.augment:
            return to_model_input([image], self.image_size)[0]
        from torchvision.transforms import RandomResizedCrop

        chw = torch.from_numpy(np.ascontiguousarray(_check_image(image))).permute(2, 0, 1)
        chw = chw.float().div_(255.0)
        top, left, h, w = RandomResizedCrop.get_params(chw, scale=list(CROP_SCALE), ratio=list(CROP_RATIO))
        crop = _resize(chw[None, :, top:top + h, left:left + w], self.image_size)[0]
        if torch.rand(()) < 0.5:
            crop = crop.flip(-1)
        return crop.clamp_(0.0, 1.0)
