"""The embedded synthetic spurious-correlation benchmark (a Waterbirds look-alike, no downloads).

Two bird classes — ``landbird`` (plump, upright, legs, short beak, mostly warm colours) and
``waterbird`` (long flat body, long neck and beak, mostly white/grey/dark plumage; the colour
schemes overlap, so the shape matters) — are drawn with per-instance pose, size and colour on two
background families — ``land`` (green/brown fields with grass streaks) and
``water`` (blue with wave stripes). In the training split the background agrees with the class for
``train_correlation`` of each class and about three quarters of the birds are landbirds (the
Waterbirds proportions); validation and test have the four groups in equal numbers.

Every sample is drawn from its own random streams derived from ``(seed, split, index)``, so the
files do not depend on the order or the process they are made in, and the same seed gives the same
bytes. Background, pose and bird appearance use separate streams: :func:`render_sample` with the
other label redraws the *same* background and pose with the other bird (a perfect counterfactual,
useful to measure what an ideal repaint would do). Birds are painted with hard edges over the
background, so the mask is exactly the set of pixels where the image differs from
:attr:`SyntheticSample.background`.

The result is written in the generic CSV layout (``metadata.csv`` with ``path,label,spurious,
split,mask``, ``classes.json``), read by the same code path as a user's own dataset.
"""

from __future__ import annotations

import colorsys
import csv
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from raydbb.data.records import SPLITS
from raydbb.errors import DataError

CLASS_NAMES = ("landbird", "waterbird")
SPURIOUS_NAMES = ("land", "water")
LANDBIRD_FRACTION = 0.75  # share of landbirds in train (Waterbirds: 3682 of 4795 = 0.77)
# Defaults: small enough for a CPU demo (about 20 s to draw, an ERM epoch in well under a minute),
# large enough to keep a few dozen minority samples in train (37 waterbird/land and 112
# landbird/water, like Waterbirds' 56 and 184) and 150 (val) / 300 (test) per group, so a group
# accuracy has a standard error under 4 (val) / 3 (test) points.
DEFAULT_N_TRAIN = 3000
DEFAULT_N_VAL = 600
DEFAULT_N_TEST = 1200
PARAMS_FILE = "synthetic.json"
GENERATOR_VERSION = 4  # bump when the drawing changes, so old folders are not mistaken for new ones
_MIN_SIZE = 32


@dataclass(frozen=True)
class SyntheticSample:
    """One drawn sample: ``image`` and ``background`` uint8 ``HxWx3``, ``mask`` bool ``HxW``.

    ``mask`` is True exactly where ``image`` differs from ``background``.
    """

    image: np.ndarray
    mask: np.ndarray
    background: np.ndarray


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def group_counts(split: str, n: int, train_correlation: float = 0.95,
                 landbird_fraction: float = LANDBIRD_FRACTION) -> dict[tuple[int, int], int]:
    """Number of samples per ``(label, spurious)`` group in one split of ``n`` samples.

    Train: ``round(n * landbird_fraction)`` landbirds, the rest waterbirds; within each class
    ``round(n_class * train_correlation)`` sit on their own background (landbird on land, waterbird
    on water), the rest on the other. Rounding is half-up. Val/test: ``n // 4`` per group, the
    remainder going to the groups in order (landbird/land, landbird/water, waterbird/land, ...).
    """
    if split == "train":
        n_class = [_round_half_up(n * landbird_fraction)]
        n_class.append(n - n_class[0])
        counts = {}
        for label, total in enumerate(n_class):
            majority = _round_half_up(total * train_correlation)
            counts[(label, label)] = majority
            counts[(label, 1 - label)] = total - majority
        return dict(sorted(counts.items()))
    if split in ("val", "test"):
        groups = [(y, s) for y in range(2) for s in range(2)]
        return {g: n // 4 + (1 if i < n % 4 else 0) for i, g in enumerate(groups)}
    raise DataError(f"unknown split {split!r}; expected one of {list(SPLITS)}")


# ---------------------------------------------------------------------------------------------
# Drawing. Everything works on float32 [0, 1] images over a pixel-centre grid.


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """HSV (hue in degrees) to an RGB float32 triple."""
    return np.array(colorsys.hsv_to_rgb((h % 360.0) / 360.0, s, v), dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a ``(cells+1)^2`` random lattice, smoothstep-interpolated to ``size^2``."""
    lattice = rng.random((cells + 1, cells + 1)).astype(np.float32)
    t = (np.arange(size, dtype=np.float32) + 0.5) * (cells / size)
    i = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i
    f = f * f * (3 - 2 * f)
    rows = lattice[i] * (1 - f)[:, None] + lattice[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _land(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    green = _hsv(rng.uniform(70, 135), rng.uniform(0.45, 0.85), rng.uniform(0.35, 0.75))
    brown = _hsv(rng.uniform(20, 42), rng.uniform(0.4, 0.75), rng.uniform(0.25, 0.55))
    # Patches of grass and soil; the exponent moves the mix towards one of the two per image.
    mix = _smooth_noise(rng, size, int(rng.integers(2, 6))) ** rng.uniform(0.4, 2.0)
    img = mix[..., None] * green + (1 - mix[..., None]) * brown
    # Grass blades: noise stretched vertically (short vertical streaks).
    blade = max(2, size // int(rng.integers(10, 20)))
    streaks = rng.normal(size=(size // blade + 2, size)).astype(np.float32)
    offset = rng.integers(0, blade, size=size)
    rows = (np.arange(size)[:, None] + offset[None, :]) // blade
    shade = 1 + rng.uniform(0.08, 0.2) * streaks[rows, np.arange(size)[None, :]]
    img = img * shade[..., None]
    return img + rng.normal(0, 0.025, size=img.shape).astype(np.float32)


def _water(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    base = _hsv(rng.uniform(185, 228), rng.uniform(0.45, 0.9), rng.uniform(0.45, 0.85))
    deep = base * rng.uniform(0.55, 0.8)
    depth = (yy / size)[..., None] if rng.random() < 0.5 else (1 - yy / size)[..., None]
    img = base * (1 - depth) + deep * depth
    # Wave stripes: horizontal sinusoids, slightly tilted and wobbling along x.
    wavelength = size * rng.uniform(0.06, 0.14)
    tilt = rng.uniform(-0.15, 0.15)
    wobble_len = size * rng.uniform(0.2, 0.6)
    wobble = rng.uniform(0.3, 1.2) * np.sin(2 * np.pi * xx / wobble_len + rng.uniform(0, 6.3))
    phase = 2 * np.pi * (yy + tilt * xx) / wavelength + wobble + rng.uniform(0, 6.3)
    wave = np.sin(phase)
    img = img * (1 + rng.uniform(0.08, 0.2) * wave)[..., None]
    crest = np.clip((wave - 0.85) / 0.15, 0, 1) * rng.uniform(0.1, 0.35)  # light glints on crests
    img = img + crest[..., None]
    return img + rng.normal(0, 0.02, size=img.shape).astype(np.float32)


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float,
             angle: float = 0.0) -> np.ndarray:
    c, s = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
    du, dv = u - cu, v - cv
    a, b = c * du + s * dv, -s * du + c * dv
    return (a / ru) ** 2 + (b / rv) ** 2 <= 1.0


def _capsule(u: np.ndarray, v: np.ndarray, p: tuple[float, float], q: tuple[float, float],
             half_width: float) -> np.ndarray:
    pu, pv = p
    du, dv = q[0] - pu, q[1] - pv
    t = np.clip(((u - pu) * du + (v - pv) * dv) / (du * du + dv * dv), 0.0, 1.0)
    return (u - pu - t * du) ** 2 + (v - pv - t * dv) ** 2 <= half_width**2


def _triangle(u: np.ndarray, v: np.ndarray, a: tuple[float, float], b: tuple[float, float],
              c: tuple[float, float]) -> np.ndarray:
    def side(p: tuple[float, float], q: tuple[float, float]) -> np.ndarray:
        return (q[0] - p[0]) * (v - p[1]) - (q[1] - p[1]) * (u - p[0])

    d1, d2, d3 = side(a, b), side(b, c), side(c, a)
    neg = (d1 < 0) | (d2 < 0) | (d3 < 0)
    pos = (d1 > 0) | (d2 > 0) | (d3 > 0)
    return ~(neg & pos)


Layers = list[tuple[np.ndarray, np.ndarray]]  # (bool region, RGB colour) painted in order


# Plumage schemes shared by both classes, with class-dependent odds: colour alone predicts the class
# 93 % of the time (balanced), so a classifier must use the shape to be right on every group —
# harder to learn than the background, which is what makes ERM lean on the background.
_SCHEMES = ("warm", "brown", "white", "grey", "dark")
_SCHEME_ODDS = {0: (0.82, 0.1, 0.02, 0.04, 0.02), 1: (0.02, 0.04, 0.36, 0.3, 0.28)}


def _plumage(rng: np.random.Generator, scheme: str) -> np.ndarray:
    if scheme == "warm":
        return _hsv(rng.uniform(-5, 55), rng.uniform(0.6, 0.95), rng.uniform(0.6, 0.95))
    if scheme == "brown":
        return _hsv(rng.uniform(18, 40), rng.uniform(0.35, 0.65), rng.uniform(0.3, 0.55))
    tone = {"white": (0.85, 1.0), "grey": (0.45, 0.7), "dark": (0.1, 0.3)}[scheme]
    return _hsv(rng.uniform(0, 360), rng.uniform(0, 0.12), rng.uniform(*tone))


def _colours(rng: np.random.Generator, label: int,
             odds: tuple[float, ...] | None = None) -> dict[str, np.ndarray]:
    """Body, wing, head/neck and beak colours of one bird (``odds``: scheme odds, default the class's)."""
    body = _plumage(rng, _SCHEMES[rng.choice(len(_SCHEMES), p=_SCHEME_ODDS[label] if odds is None else odds)])
    wing = body * rng.uniform(0.35, 0.65) if rng.random() < 0.7 else _plumage(rng, "dark")
    head = body if rng.random() < 0.6 else _plumage(rng, _SCHEMES[rng.integers(len(_SCHEMES))])
    beak = _hsv(rng.uniform(25, 50), rng.uniform(0.75, 1.0), rng.uniform(0.8, 1.0)) \
        if rng.random() < 0.5 else _plumage(rng, "dark")
    return {"body": body, "wing": wing.astype(np.float32), "head": head, "beak": beak}


def _landbird(rng: np.random.Generator, u: np.ndarray, v: np.ndarray,
              odds: tuple[float, ...] | None = None) -> Layers:
    """Perched songbird in bird-local units (u forward, v down, body within radius ~1): plump
    upright body, round head, short beak, tail pointing down, legs."""
    c = _colours(rng, 0, odds)
    legs = _hsv(30, 0.3, rng.uniform(0.15, 0.35))
    plump = rng.uniform(0.9, 1.1)
    return [
        (_triangle(u, v, (-0.35, 0.3), (-0.3, 0.05), (-0.88, 0.62)), c["wing"]),  # tail
        (_capsule(u, v, (0.0, 0.4), (0.03, 0.82), 0.05) | _capsule(u, v, (0.17, 0.38), (0.2, 0.82), 0.05),
         legs),
        (_ellipse(u, v, 0.0, 0.1, 0.46 * plump, 0.37 * plump, -25), c["body"]),
        (_ellipse(u, v, -0.07, 0.12, 0.33, 0.18, -25), c["wing"]),
        (_ellipse(u, v, 0.36, -0.42, 0.25, 0.24), c["head"]),
        (_triangle(u, v, (0.55, -0.52), (0.55, -0.34), (0.82, -0.44)), c["beak"]),
        (_ellipse(u, v, 0.43, -0.48, 0.07, 0.07), np.zeros(3, np.float32)),  # eye
    ]


def _waterbird(rng: np.random.Generator, u: np.ndarray, v: np.ndarray,
               odds: tuple[float, ...] | None = None) -> Layers:
    """Duck/heron-like bird: long flat body, long neck, small head, long beak, no legs."""
    c = _colours(rng, 1, odds)
    lean = rng.uniform(-0.1, 0.12)
    return [
        (_triangle(u, v, (-0.6, 0.12), (-0.62, 0.32), (-0.97, 0.06)), c["wing"]),  # tail
        (_ellipse(u, v, -0.1, 0.3, 0.62, 0.24, 4), c["body"]),
        (_ellipse(u, v, -0.18, 0.24, 0.42, 0.13, 4), c["wing"]),
        (_capsule(u, v, (0.32, 0.2), (0.48 + lean, -0.45), 0.09), c["head"]),
        (_ellipse(u, v, 0.53 + lean, -0.55, 0.18, 0.13), c["head"]),
        (_triangle(u, v, (0.64 + lean, -0.61), (0.64 + lean, -0.49), (1.0 + lean, -0.54)), c["beak"]),
        (_ellipse(u, v, 0.58 + lean, -0.58, 0.06, 0.06), np.zeros(3, np.float32)),  # eye
    ]


def _streams(seed: int, split: str, index: int) -> list[np.random.Generator]:
    """Independent (background, pose, appearance) generators for one sample."""
    seq = np.random.SeedSequence(seed, spawn_key=(0, SPLITS.index(split), index))
    return [np.random.default_rng(s) for s in seq.spawn(3)]


def render_sample(seed: int, split: str, index: int, label: int, spurious: int,
                  size: int = 64) -> SyntheticSample:
    """Draw one sample; a pure function of its arguments (same arguments, same pixels).

    Changing only ``label`` keeps the background and the pose and swaps the bird; changing only
    ``spurious`` keeps the bird and swaps the background family.
    """
    if label not in (0, 1) or spurious not in (0, 1):
        raise DataError(f"label={label}, spurious={spurious}: expected 0 or 1 for both")
    bg_rng, pose_rng, look_rng = _streams(seed, split, index)
    return _draw(_land if spurious == 0 else _water, label, bg_rng, pose_rng, look_rng, size)


def _draw(background_fn, label: int, bg_rng: np.random.Generator, pose_rng: np.random.Generator,
          look_rng: np.random.Generator, size: int, radius: tuple[float, float] = (0.17, 0.25),
          tilt_deg: float = 15.0, odds: tuple[float, ...] | None = None) -> SyntheticSample:
    """Paint bird ``label`` over ``background_fn``'s background; ``radius`` (share of the side),
    ``tilt_deg`` and ``odds`` (plumage scheme odds, None = the class's) set the pose and look ranges."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    background = background_fn(bg_rng, size, yy, xx)
    background = np.clip(np.rint(background * 255), 0, 255).astype(np.uint8)

    # Pose: half-extent in pixels, centre (bird fully inside: parts reach 1.15 half-extents), facing, tilt.
    radius = size * pose_rng.uniform(*radius)
    reach = 1.15 * radius
    cx, cy = pose_rng.uniform(reach + 1, size - reach - 1, size=2)
    facing = 1.0 if pose_rng.random() < 0.5 else -1.0
    tilt = np.deg2rad(pose_rng.uniform(-tilt_deg, tilt_deg))
    # Shapes are evaluated only in the bird's bounding window (most of the cost otherwise).
    window = np.s_[int(cy - reach) - 1:int(cy + reach) + 2, int(cx - reach) - 1:int(cx + reach) + 2]
    du, dv = (xx[window] - cx) / radius, (yy[window] - cy) / radius
    u = (np.cos(tilt) * du + np.sin(tilt) * dv) * facing
    v = -np.sin(tilt) * du + np.cos(tilt) * dv

    layers = (_landbird if label == 0 else _waterbird)(look_rng, u, v, odds)
    image = background.astype(np.float32) / 255
    crop = image[window]
    mask = np.zeros((size, size), dtype=bool)
    crop_mask = mask[window]
    light = 1 + 0.12 * np.clip(-v, -1, 1)  # lit from above: a soft vertical gradient on the bird
    grain = 1 + look_rng.normal(0, 0.03, size=u.shape).astype(np.float32)  # feather texture
    shade = (light * grain).astype(np.float32)
    for region, colour in layers:
        crop[region] = colour * shade[region][:, None]
        crop_mask |= region
    image = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    # Where a bird pixel happens to round to the background's value, flip its lowest red bit so
    # the mask stays exactly "pixels that differ from the background".
    same = mask & (image == background).all(axis=-1)
    image[same, 0] ^= 1
    return SyntheticSample(image=image, mask=mask, background=background)


# ---------------------------------------------------------------------------------------------
# The pretraining corpus: the miniature world's "ImageNet". Same bird generator, no bias, more
# places. Its streams live in their own SeedSequence namespace (spawn key 2; the benchmark uses 0
# for samples and 1 for the group order), so no pretraining image is a benchmark image or shares
# a background, pose or bird with one, whatever the seeds.


def _sky(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Open sky: a vertical gradient (day blue, haze or dusk) with soft clouds."""
    top = _hsv(rng.uniform(195, 235), rng.uniform(0.3, 0.8), rng.uniform(0.6, 0.95))
    bottom = _hsv(rng.uniform(0, 60) if rng.random() < 0.3 else rng.uniform(190, 230),
                  rng.uniform(0.05, 0.45), rng.uniform(0.75, 1.0))
    t = (yy / size)[..., None]
    img = top * (1 - t) + bottom * t
    cloud = np.clip((_smooth_noise(rng, size, int(rng.integers(2, 5))) - rng.uniform(0.45, 0.7)) * 3, 0, 1)
    img = img * (1 - cloud[..., None]) + rng.uniform(0.85, 1.0) * cloud[..., None]
    return img + rng.normal(0, 0.015, size=img.shape).astype(np.float32)


def _sand(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Sand or bare ground: pale yellow-grey with diagonal ripples and grain."""
    base = _hsv(rng.uniform(30, 55), rng.uniform(0.15, 0.5), rng.uniform(0.55, 0.9))
    angle = rng.uniform(0, np.pi)
    ripple = np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / (size * rng.uniform(0.05, 0.2))
                    + rng.uniform(0, 6.3))
    shade = 1 + rng.uniform(0.03, 0.1) * ripple + 0.15 * (_smooth_noise(rng, size, 3) - 0.5)
    img = base * shade[..., None]
    return img + rng.normal(0, 0.04, size=img.shape).astype(np.float32)


def _plain(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A studio backdrop: one colour of any hue with a soft linear gradient."""
    base = _hsv(rng.uniform(0, 360), rng.uniform(0, 0.7), rng.uniform(0.2, 0.95))
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * (xx - size / 2) + np.sin(angle) * (yy - size / 2)) / size
    img = base * (1 + rng.uniform(0, 0.4) * ramp)[..., None]
    return img + rng.normal(0, 0.01, size=img.shape).astype(np.float32)


def _clutter(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Clutter: a blend of three random colours through value noise, plus a few random blocks."""
    colours = [_hsv(rng.uniform(0, 360), rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.95)) for _ in range(3)]
    a = _smooth_noise(rng, size, int(rng.integers(2, 8)))[..., None]
    b = _smooth_noise(rng, size, int(rng.integers(2, 8)))[..., None]
    img = colours[0] * a + colours[1] * (1 - a)
    img = img * b + colours[2] * (1 - b)
    for _ in range(int(rng.integers(0, 5))):
        y0, x0 = rng.integers(0, size, size=2)
        h, w = rng.integers(size // 10, size // 3, size=2)
        img[y0:y0 + h, x0:x0 + w] = _hsv(rng.uniform(0, 360), rng.uniform(0, 0.9), rng.uniform(0.2, 0.95))
    return img + rng.normal(0, 0.03, size=img.shape).astype(np.float32)


PRETRAIN_BACKGROUNDS = ("land", "water", "sky", "sand", "plain", "clutter")
_BACKGROUND_FNS = {"land": _land, "water": _water, "sky": _sky, "sand": _sand, "plain": _plain,
                   "clutter": _clutter}
_PRETRAIN_NAMESPACE = 2
_UNIFORM_ODDS = tuple([1.0 / len(_SCHEMES)] * len(_SCHEMES))


@dataclass(frozen=True)
class PretrainSample:
    """One pretraining sample: the drawing plus its bird class and background family index."""

    sample: SyntheticSample
    label: int
    background: int


def render_pretrain_sample(seed: int, index: int, size: int = 64,
                           colours: str = "uniform") -> PretrainSample:
    """Sample ``index`` of the pretraining corpus of ``seed``: a pure function of its arguments.

    The bird class and the background family (:data:`PRETRAIN_BACKGROUNDS`) are drawn
    independently and uniformly, so neither predicts the other (no class-background bias: both
    birds on land, on water and on four other kinds of place). Poses vary more than in the
    benchmark (size 0.12-0.27 of the side, tilt up to 30 degrees). ``colours="uniform"`` gives
    both classes the same plumage odds (the shape is the only class cue); ``"benchmark"`` keeps
    the benchmark's class-dependent odds. Streams are disjoint from every benchmark stream.
    """
    if colours not in ("uniform", "benchmark"):
        raise DataError(f"colours={colours!r}: expected 'uniform' or 'benchmark'")
    seq = np.random.SeedSequence(seed, spawn_key=(_PRETRAIN_NAMESPACE, index))
    meta_rng, bg_rng, pose_rng, look_rng = (np.random.default_rng(s) for s in seq.spawn(4))
    label = int(meta_rng.integers(2))
    background = int(meta_rng.integers(len(PRETRAIN_BACKGROUNDS)))
    fn = _BACKGROUND_FNS[PRETRAIN_BACKGROUNDS[background]]
    odds = _UNIFORM_ODDS if colours == "uniform" else None
    sample = _draw(fn, label, bg_rng, pose_rng, look_rng, size, radius=(0.12, 0.27), tilt_deg=30.0,
                   odds=odds)
    return PretrainSample(sample=sample, label=label, background=background)


def pretrain_arrays(seed: int, n: int, size: int = 64, colours: str = "uniform", start: int = 0,
                    progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples ``start..start+n-1`` of the pretraining corpus as arrays:
    ``images`` uint8 (n,size,size,3), ``labels`` int64 (n,), ``backgrounds`` int64 (n,)."""
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    backgrounds = np.empty(n, dtype=np.int64)
    for i in tqdm(range(n), desc="pretrain corpus", disable=not progress):
        s = render_pretrain_sample(seed, start + i, size, colours)
        images[i], labels[i], backgrounds[i] = s.sample.image, s.label, s.background
    return images, labels, backgrounds


# ---------------------------------------------------------------------------------------------
# Writing the dataset folder.


def _params(seed: int, train_correlation: float, n: dict[str, int], size: int,
            landbird_fraction: float) -> dict:
    return {
        "generator_version": GENERATOR_VERSION, "seed": seed, "train_correlation": train_correlation,
        "n_train": n["train"], "n_val": n["val"], "n_test": n["test"], "size": size,
        "landbird_fraction": landbird_fraction,
    }


def _validate(seed: int, train_correlation: float, n: dict[str, int], size: int,
              landbird_fraction: float) -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed={seed!r}: expected an integer >= 0")
    if not 0.0 <= train_correlation <= 1.0:
        raise DataError(f"train_correlation={train_correlation}: expected a value in [0, 1]")
    if not 0.0 <= landbird_fraction <= 1.0:
        raise DataError(f"landbird_fraction={landbird_fraction}: expected a value in [0, 1]")
    for split, count in n.items():
        if not isinstance(count, (int, np.integer)) or count < 0:
            raise DataError(f"n_{split}={count!r}: expected an integer >= 0")
    if sum(n.values()) == 0:
        raise DataError("n_train, n_val and n_test are all 0: expected at least one sample")
    if not isinstance(size, (int, np.integer)) or size < _MIN_SIZE:
        raise DataError(f"size={size!r}: expected an integer >= {_MIN_SIZE} (pixels per side)")


def _assignments(seed: int, split: str, n: int, train_correlation: float,
                 landbird_fraction: float) -> list[tuple[int, int]]:
    """(label, spurious) per index of a split: exact group counts in a seeded order."""
    pairs = [g for g, count in group_counts(split, n, train_correlation, landbird_fraction).items()
             for _ in range(count)]
    shuffle = np.random.SeedSequence(seed, spawn_key=(1, SPLITS.index(split)))
    order = np.random.default_rng(shuffle).permutation(n)
    return [pairs[i] for i in order]


def _rows(seed: int, n: dict[str, int], train_correlation: float,
          landbird_fraction: float) -> Iterator[tuple[str, int, int, int]]:
    for split in SPLITS:
        for index, (label, spurious) in enumerate(
                _assignments(seed, split, n[split], train_correlation, landbird_fraction)):
            yield split, index, label, spurious


def _save_png(path: Path, array: np.ndarray) -> None:
    # Plain save, not write_png_atomic: the whole folder is renamed into place when complete.
    Image.fromarray(array).save(path, format="PNG")


def _is_complete(folder: Path, params: dict) -> bool:
    meta, stored = folder / "metadata.csv", folder / PARAMS_FILE
    return meta.is_file() and stored.is_file() and json.loads(stored.read_text()) == params


def write_synthetic(
    out: str | Path,
    seed: int = 0,
    train_correlation: float = 0.95,
    n_train: int = DEFAULT_N_TRAIN,
    n_val: int = DEFAULT_N_VAL,
    n_test: int = DEFAULT_N_TEST,
    size: int = 64,
    landbird_fraction: float = LANDBIRD_FRACTION,
    progress: bool = True,
) -> Path:
    """Write the synthetic benchmark to ``out`` in the generic CSV layout and return ``out``.

    Layout: ``images/<split>_<index>.png`` (RGB), ``masks/<split>_<index>.png`` (0/255),
    ``metadata.csv`` (``path,label,spurious,split,mask``; label/spurious as names),
    ``classes.json`` and ``synthetic.json`` (the parameters). The folder is built next to ``out``
    and renamed into place when complete, so ``out`` is never half-written. If ``out`` already
    holds a complete benchmark with the same parameters, nothing is redone; if it holds anything
    else, a :class:`DataError` is raised rather than overwriting it.
    """
    out = Path(out)
    n = {"train": n_train, "val": n_val, "test": n_test}
    _validate(seed, train_correlation, n, size, landbird_fraction)
    params = _params(int(seed), float(train_correlation), {k: int(v) for k, v in n.items()}, int(size),
                     float(landbird_fraction))
    if _is_complete(out, params):
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not a synthetic benchmark with these parameters; "
                        "remove it or choose another output folder")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # our own leftover from an earlier crash in this process id
    try:
        (tmp / "images").mkdir(parents=True)
        (tmp / "masks").mkdir()
        rows = []
        total = sum(n.values())
        for split, index, label, spurious in tqdm(_rows(seed, n, train_correlation, landbird_fraction),
                                                  total=total, desc="synthetic", disable=not progress):
            sample = render_sample(seed, split, index, label, spurious, size)
            name = f"{split}_{index:05d}.png"
            _save_png(tmp / "images" / name, sample.image)
            _save_png(tmp / "masks" / name, sample.mask.astype(np.uint8) * 255)
            rows.append((f"images/{name}", CLASS_NAMES[label], SPURIOUS_NAMES[spurious], split,
                         f"masks/{name}"))
        classes = {"class_names": list(CLASS_NAMES), "spurious_names": list(SPURIOUS_NAMES)}
        (tmp / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")
        (tmp / PARAMS_FILE).write_text(json.dumps(params, indent=2) + "\n")
        with open(tmp / "metadata.csv", "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["path", "label", "spurious", "split", "mask"])
            writer.writerows(rows)
        if out.is_dir():
            out.rmdir()  # empty (checked above); rename needs the name free
        try:
            tmp.rename(out)
        except OSError:
            # Another process finished the same benchmark first: theirs is as good as ours.
            if not _is_complete(out, params):
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
