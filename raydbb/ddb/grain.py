"""Noise matching: give a decoded patch the pixel noise of the photo around it.

A latent-diffusion decoder cannot reproduce per-pixel noise (sensor noise, film grain, fine
texture): it is incompressible, so the decoded region comes out smoother than the untouched pixels
around it. That is a seam a classifier can learn (docs/method.md). Compositors hide it by adding
grain to the inserted element until it matches the plate; this module does the same per channel:
it estimates the noise standard deviation of the source outside the patch and of the patch itself,
and adds zero-mean Gaussian noise inside the patch with the missing variance.

The estimator is the median absolute value of the finest diagonal Haar detail, divided by 0.6745
(the robust noise estimate of wavelet denoising): for i.i.d. noise of standard deviation σ each
coefficient has standard deviation σ, while smooth shading, straight edges and vertical or horizontal
streaks cancel in it. It is written here rather than taken from scikit-image because it must be
restricted to a region (``skimage.restoration.estimate_sigma`` takes no mask).
"""

from __future__ import annotations

import numpy as np

# Fewer 2x2 blocks than this and the estimate is too noisy to act on: the patch is left alone.
MIN_BLOCKS = 16
MAD_TO_SIGMA = 0.6745


def noise_sigma(image: np.ndarray, where: np.ndarray) -> np.ndarray | None:
    """Per-channel noise standard deviation (same units as ``image``) over the 2x2 blocks that lie
    wholly inside ``where`` (HxW bool); None where fewer than :data:`MIN_BLOCKS` blocks qualify."""
    h, w = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    x = image[:h, :w].astype(np.float64)
    a, b, c, d = x[0::2, 0::2], x[0::2, 1::2], x[1::2, 0::2], x[1::2, 1::2]
    diagonal = (a - b - c + d) / 2.0  # (h/2, w/2, C)
    m = where[:h, :w]
    inside = m[0::2, 0::2] & m[0::2, 1::2] & m[1::2, 0::2] & m[1::2, 1::2]
    if int(inside.sum()) < MIN_BLOCKS:
        return None
    return np.median(np.abs(diagonal[inside]), axis=0) / MAD_TO_SIGMA


def match_noise(patched: np.ndarray, source: np.ndarray, region: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """``patched`` (uint8 HxWx3, decoded inside ``region``, the source's pixels outside) with
    Gaussian noise added inside ``region`` so that its noise level matches the source's outside it.
    Channels whose patch is already as noisy as the surroundings are left as they are."""
    region = region.astype(bool)
    around = noise_sigma(source, ~region)
    within = noise_sigma(patched, region)
    if around is None or within is None:
        return patched
    missing = np.sqrt(np.maximum(around ** 2 - within ** 2, 0.0))
    noise = rng.standard_normal(patched.shape) * missing
    out = np.where(region[..., None], patched.astype(np.float64) + noise, patched)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
