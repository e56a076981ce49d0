"""Mask-summed integrated gradients for the attribution prune rule (paper Eq. 4-5; docs/method.md, step 6).

For a repaint x' of source x with target class y', the score is

    IG(x') = sum_{c, p} m_p * (x'_{cp} - x_{cp}) * int_0^1 d f_{y'}(x + a (x' - x)) / d x_{cp} da

where f_{y'} is the classifier's *logit* for y' (captum's default: the model's raw output), the
baseline is the source x, both x and x' go through the same deterministic preprocessing
(:func:`raydbb.models.transforms.to_model_input`), and m is the mask resized with the same resize
(:func:`raydbb.models.transforms.mask_to_model`). m is used as a *soft weight*, not binarised: a
model pixel that the source-resolution mask covers by 30 % counts 30 %. That keeps the score
consistent under resizing (the image difference bleeding across the mask edge in the resize is
down-weighted exactly as much as the mask edge itself) and reduces to a plain sum over the mask
when the mask is already at model resolution.

The integral uses captum's quadrature (``captum.attr._utils.approximation_methods``: the same
alphas and step sizes ``IntegratedGradients.attribute(..., n_steps, method)`` uses), so a score
equals ``(captum_attr.sum(channels) * m).sum()`` of captum's per-image attribution up to float
rounding. Unlike a per-image captum call, every forward/backward pass here holds
``batch_size`` path points taken from *many* images and steps at once (the flat list of
(image, step) pairs is cut into full chunks), and the attribution map is never materialised: each
point contributes the directional derivative grad·((x' - x) ⊙ m) weighted by its step size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from captum.attr._utils.approximation_methods import SUPPORTED_METHODS, approximation_parameters

from raydbb.errors import ConfigError
from raydbb.models.transforms import mask_to_model, to_model_input


def quadrature(steps: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Captum's (alphas, step sizes) for ``steps`` points of ``method`` (float64 arrays)."""
    if method not in SUPPORTED_METHODS:
        raise ConfigError(f"prune.ig_method={method!r}: expected one of {', '.join(SUPPORTED_METHODS)}")
    if steps < 1 or (steps < 2 and method.startswith("riemann")):
        raise ConfigError(f"prune.ig_steps={steps}: {method} needs at least "
                          f"{2 if method.startswith('riemann') else 1} steps")
    step_sizes_fn, alphas_fn = approximation_parameters(method)
    return np.asarray(alphas_fn(steps), dtype=np.float64), np.asarray(step_sizes_fn(steps), dtype=np.float64)


def path_ig_scores(
    model: torch.nn.Module,
    baselines: torch.Tensor,
    inputs: torch.Tensor,
    weights: torch.Tensor,
    targets: Sequence[int] | np.ndarray | torch.Tensor,
    steps: int = 16,
    method: str = "gausslegendre",
    batch_size: int = 64,
) -> np.ndarray:
    """Weighted-sum IG scores of model-ready tensors (see the module docstring).

    ``baselines`` and ``inputs`` are (N,C,H,W) model inputs (source and repaint), ``weights`` is
    (N,H,W) (or (N,C,H,W)) and multiplies the attribution before the sum, ``targets`` holds the
    class y' per row. ``batch_size`` path points go through the model per forward/backward pass.
    The model must be in eval mode, so that rows of a chunk do not influence each other (BatchNorm
    batch statistics would make a score depend on its chunk-mates). Returns float64 (N,).
    """
    if model.training:
        raise ValueError("path_ig_scores needs the model in eval mode (call model.eval())")
    if baselines.shape != inputs.shape or baselines.ndim != 4:
        raise ValueError(f"baselines {tuple(baselines.shape)} and inputs {tuple(inputs.shape)}: "
                         "expected equal (N,C,H,W) shapes")
    n = inputs.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    alphas, step_sizes = quadrature(steps, method)
    param = next(model.parameters(), None)
    device = param.device if param is not None else inputs.device
    dtype = param.dtype if param is not None and param.is_floating_point() else inputs.dtype
    x = baselines.to(device=device, dtype=dtype)
    diff = inputs.to(device=device, dtype=dtype) - x
    w = weights.to(device=device, dtype=dtype)
    direction = diff * (w[:, None] if w.ndim == 3 else w)
    target = torch.as_tensor(np.asarray(targets), dtype=torch.long, device=device)
    alpha_t = torch.as_tensor(alphas, dtype=dtype, device=device)

    # Flat (image, step) pairs, image-major; each chunk of batch_size pairs is one forward/backward.
    total = n * steps
    values = []
    with torch.enable_grad():
        for start in range(0, total, batch_size):
            flat = torch.arange(start, min(start + batch_size, total), device=device)
            row, step = flat // steps, flat % steps
            # Same expression as captum (baseline + alpha * (input - baseline)) for matching rounding.
            points = (x[row] + alpha_t[step].view(-1, 1, 1, 1) * diff[row]).requires_grad_(True)
            logits = model(points)
            picked = logits.gather(1, target[row].view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(picked, points)
            values.append((grad * direction[row]).flatten(1).sum(1).detach())
    per_point = torch.cat(values).double().cpu().numpy().reshape(n, steps)
    return per_point @ step_sizes


def mask_ig_scores(
    model: torch.nn.Module,
    sources: np.ndarray | Sequence[np.ndarray],
    repaints: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray],
    targets: Sequence[int] | np.ndarray,
    steps: int = 16,
    method: str = "gausslegendre",
    batch_size: int = 64,
    *,
    image_size: int,
) -> np.ndarray:
    """IG of the target class from source (baseline) to repaint, summed over the mask, per row.

    ``sources``/``repaints`` are uint8 HxWx3 arrays (per row sizes may differ, but a source and its
    repaint must have the same size), ``masks`` HxW arrays (nonzero = inside), ``targets`` the class
    y' per row, ``image_size`` the classifier's input size. Returns float64 (N,).
    """
    if not (len(sources) == len(repaints) == len(masks) == len(targets)):
        raise ValueError("sources, repaints, masks and targets must have the same length")
    if len(sources) == 0:
        return np.zeros(0, dtype=np.float64)
    weights = torch.stack([mask_to_model(np.asarray(m), image_size) for m in masks])
    return path_ig_scores(
        model,
        to_model_input(sources, image_size),
        to_model_input(repaints, image_size),
        weights,
        targets,
        steps=steps,
        method=method,
        batch_size=batch_size,
    )
