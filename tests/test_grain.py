"""Noise matching of decoded patches (inpaint.match_noise; raydbb.ddb.grain)."""

from __future__ import annotations

import numpy as np
import pytest

from raydbb.config import build_config
from raydbb.ddb.grain import MAD_TO_SIGMA, match_noise, noise_sigma
from raydbb.errors import ConfigError

ALL = np.ones((16, 16), dtype=bool)


def _grey_with_noise(rng, sigma, side):
    """A side x side x 3 uint8 image: grey 120 plus Gaussian noise of ``sigma`` grey levels."""
    return np.clip(np.rint(120 + rng.normal(0, sigma, (side, side, 3))), 0, 255).astype(np.uint8)


def _square(side, lo, hi):
    region = np.zeros((side, side), dtype=bool)
    region[lo:hi, lo:hi] = True
    return region


def test_sigma_of_flat_shading_and_streaks_is_zero():
    ramp = np.broadcast_to(np.arange(16, dtype=np.float64)[:, None, None] * 3, (16, 16, 3))
    streaks = np.broadcast_to(np.tile([10.0, 200.0], 8)[None, :, None], (16, 16, 3))  # vertical blades
    assert noise_sigma(ramp, ALL).tolist() == [0.0, 0.0, 0.0]
    assert noise_sigma(streaks, ALL).tolist() == [0.0, 0.0, 0.0]


def test_sigma_of_a_checkerboard_hand_computed():
    # Every 2x2 block is [[+1, -1], [-1, +1]]: (a - b - c + d) / 2 = 2, so sigma = 2 / 0.6745.
    board = np.where((np.arange(16)[:, None] + np.arange(16)[None, :]) % 2 == 0, 1.0, -1.0)[..., None]
    assert noise_sigma(board, ALL)[0] == pytest.approx(2 / MAD_TO_SIGMA)
    assert 2 / MAD_TO_SIGMA == pytest.approx(2.965, abs=1e-3)


def test_sigma_uses_only_whole_blocks_inside_the_region_and_needs_enough_of_them():
    rng = np.random.default_rng(0)
    image = np.zeros((64, 64, 1))
    image[:, 32:] = rng.normal(0, 10, (64, 32, 1))
    left = np.zeros((64, 64), dtype=bool)
    left[:, :33] = True  # column 32 is noisy but its blocks straddle the edge: left out
    assert noise_sigma(image, left).tolist() == [0.0]
    assert noise_sigma(image, ~left)[0] == pytest.approx(10, rel=0.1)
    few = np.zeros((64, 64), dtype=bool)
    few[:6, :10] = True  # 3 x 5 = 15 whole blocks
    assert noise_sigma(image, few) is None


def test_patch_gets_the_noise_of_its_surroundings_and_nothing_else_changes():
    source, region = _grey_with_noise(np.random.default_rng(1), 8, 64), _square(64, 16, 48)
    patched = source.copy()
    patched[region] = 120  # a decoder's smooth fill
    out = match_noise(patched, source, region, np.random.default_rng(2))
    assert (out[~region] == source[~region]).all()
    assert noise_sigma(out, region) == pytest.approx(noise_sigma(source, ~region), rel=0.15)
    assert abs(out[region].astype(float).mean() - 120) < 1  # zero-mean noise
    again = match_noise(patched, source, region, np.random.default_rng(2))
    assert (again == out).all()  # the seed decides the noise


def test_patch_already_as_noisy_is_left_alone_and_a_tiny_surround_changes_nothing():
    rng = np.random.default_rng(3)
    source, region = _grey_with_noise(rng, 4, 32), _square(32, 8, 24)
    noisy = np.where(region[..., None], _grey_with_noise(rng, 12, 32), source)
    assert (match_noise(noisy, source, region, np.random.default_rng(0)) == noisy).all()
    almost_all = np.ones((32, 32), dtype=bool)
    almost_all[:2, :2] = False  # one block outside: no estimate of the surroundings
    flat = np.full_like(source, 120)
    assert (match_noise(flat, source, almost_all, np.random.default_rng(0)) == flat).all()


def test_match_noise_needs_paste_back_one_line():
    with pytest.raises(ConfigError) as err:
        build_config({"inpaint": {"match_noise": True, "paste_back": False}})
    assert "inpaint.match_noise=true with inpaint.paste_back=false" in str(err.value)
    assert "\n" not in str(err.value)
