"""Batched, mask-summed integrated gradients against captum's per-image IntegratedGradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients
from torch import nn

from raydbb.ddb.ig import mask_ig_scores, path_ig_scores, quadrature
from raydbb.errors import ConfigError
from raydbb.models.transforms import mask_to_model, to_model_input

SIZE = 16  # classifier input size; source images are larger, so the resize path is exercised


def tiny_cnn(seed: int = 0, num_classes: int = 3) -> nn.Module:
    """A small CNN with BatchNorm (eval mode) and smooth activations, random weights from a seed."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Softplus(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.Tanh(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, num_classes),
    )
    with torch.no_grad():
        for layer in (model[0], model[3], model[7]):  # larger weights: scores well above rounding
            layer.weight.mul_(4.0)
        # non-trivial running statistics, so eval-mode BatchNorm matters
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def random_case(n: int, seed: int = 1, hw: tuple[int, int] = (40, 36)):
    rng = np.random.default_rng(seed)
    sources = rng.integers(0, 256, size=(n, *hw, 3), dtype=np.uint8)
    masks = np.zeros((n, *hw), dtype=np.uint8)
    repaints = sources.copy()
    for i in range(n):
        top, left = rng.integers(0, hw[0] // 2), rng.integers(0, hw[1] // 2)
        masks[i, top:top + hw[0] // 2, left:left + hw[1] // 2] = 1
        # repaint only inside the mask, as a pasted-back inpainting does
        noise = rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8)
        repaints[i][masks[i] == 1] = noise[masks[i] == 1]
    targets = rng.integers(0, 3, size=n)
    return sources, repaints, masks, targets


def captum_scores(model, sources, repaints, masks, targets, steps, method):
    """The reference: captum called once per image with its defaults except steps/method."""
    ig = IntegratedGradients(model)
    out = []
    for src, rep, m, t in zip(sources, repaints, masks, targets, strict=True):
        x = to_model_input([src], SIZE)
        xp = to_model_input([rep], SIZE)
        attr = ig.attribute(xp, baselines=x, target=int(t), n_steps=steps, method=method)
        out.append(float((attr[0].sum(0) * mask_to_model(m, SIZE)).sum()))
    return np.array(out)


@pytest.mark.parametrize(
    "method,steps", [("gausslegendre", 8), ("riemann_trapezoid", 10), ("riemann_right", 5)]
)
def test_matches_captum_per_image(method, steps):
    model = tiny_cnn()
    sources, repaints, masks, targets = random_case(6)
    ours = mask_ig_scores(model, sources, repaints, masks, targets, steps=steps, method=method,
                          batch_size=7, image_size=SIZE)
    ref = captum_scores(model, sources, repaints, masks, targets, steps, method)
    assert ours.dtype == np.float64 and ours.shape == (6,)
    assert np.abs(ref).max() > 1e-3  # the case is not trivially zero
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6)


def test_completeness_over_all_pixels():
    """With an all-ones mask the score is the total IG: f(x')_y' - f(x)_y' for enough steps."""
    model = tiny_cnn(seed=3)
    sources, repaints, _, targets = random_case(4, seed=5)
    ones = np.ones(sources.shape[:3], dtype=np.uint8)
    scores = mask_ig_scores(model, sources, repaints, ones, targets, steps=32, batch_size=64, image_size=SIZE)
    with torch.no_grad():
        gap = (model(to_model_input(repaints, SIZE)) - model(to_model_input(sources, SIZE)))
    expected = gap[torch.arange(4), torch.as_tensor(targets)].double().numpy()
    assert np.abs(expected).min() > 1e-3
    np.testing.assert_allclose(scores, expected, rtol=1e-3, atol=1e-5)


def test_changes_outside_the_mask_score_zero():
    """A repaint that differs only outside the mask (away from its edge) scores 0, full-image IG does not."""
    model = tiny_cnn(seed=4)
    rng = np.random.default_rng(7)
    source = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    repaint = source.copy()
    repaint[:, 24:] = 255 - repaint[:, 24:]  # change the right quarter only
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:, :12] = 1  # mask on the left: the resize keeps a gap between the two
    inside = mask_ig_scores(model, [source], [repaint], [mask], [1], steps=8, image_size=SIZE)
    whole = mask_ig_scores(model, [source], [repaint], [np.ones_like(mask)], [1], steps=8, image_size=SIZE)
    assert inside[0] == pytest.approx(0.0, abs=1e-9)
    assert abs(whole[0]) > 1e-3


def test_batch_of_five_equals_five_singles():
    model = tiny_cnn(seed=2)
    sources, repaints, masks, targets = random_case(5, seed=9)
    batched = mask_ig_scores(model, sources, repaints, masks, targets, steps=6, batch_size=8, image_size=SIZE)
    singles = np.concatenate([
        mask_ig_scores(model, sources[i:i + 1], repaints[i:i + 1], masks[i:i + 1], targets[i:i + 1],
                       steps=6, batch_size=4, image_size=SIZE)
        for i in range(5)
    ])
    np.testing.assert_allclose(batched, singles, rtol=1e-5, atol=1e-7)


def test_soft_mask_weights_and_mixed_sizes():
    """Rows may have different source sizes; the resized mask weights edge pixels fractionally."""
    model = tiny_cnn(seed=5)
    a = random_case(1, seed=11, hw=(40, 36))
    b = random_case(1, seed=12, hw=(24, 30))
    rows = [np.concatenate([a[k], b[k]]) if k == 3 else [a[k][0], b[k][0]] for k in range(4)]
    ours = mask_ig_scores(model, *rows, steps=8, image_size=SIZE)
    ref = captum_scores(model, *rows, steps=8, method="gausslegendre")
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6)
    weights = mask_to_model(b[2][0], SIZE)
    assert ((weights > 0) & (weights < 1)).any()  # the case really has fractional edge weights


def test_weights_at_model_resolution_are_a_plain_masked_sum():
    model = tiny_cnn(seed=6)
    torch.manual_seed(0)
    x, xp = torch.rand(2, 3, SIZE, SIZE), torch.rand(2, 3, SIZE, SIZE)
    w = (torch.rand(2, SIZE, SIZE) > 0.5).float()
    ours = path_ig_scores(model, x, xp, w, [0, 2], steps=12, method="riemann_middle", batch_size=5)
    attr = IntegratedGradients(model).attribute(xp, baselines=x, target=[0, 2], n_steps=12,
                                                method="riemann_middle")
    np.testing.assert_allclose(ours, (attr.sum(1) * w).sum((1, 2)).double().numpy(), rtol=1e-4, atol=1e-6)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="prune.ig_method='simpson'"):
        quadrature(8, "simpson")
    with pytest.raises(ConfigError, match="prune.ig_steps=1: riemann_left needs at least 2 steps"):
        quadrature(1, "riemann_left")
    alphas, sizes = quadrature(1, "gausslegendre")
    assert alphas.tolist() == [0.5] and sizes.tolist() == [1.0]
    model = tiny_cnn().train()
    with pytest.raises(ValueError, match="eval mode"):
        path_ig_scores(model, torch.zeros(1, 3, SIZE, SIZE), torch.ones(1, 3, SIZE, SIZE),
                       torch.ones(1, SIZE, SIZE), [0])
