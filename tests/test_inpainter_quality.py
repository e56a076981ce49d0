"""The inpainter quality gate's measures: the region judge's view, the background leak, the report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks import inpainter_quality as iq
from raydbb.data.synthetic import render_pretrain_sample, render_sample

INFO = {"nproc": 2, "cpu": "test cpu", "memory_gib": 1.0, "gpu": "none", "torch": "t", "ray": "r",
        "date": "2026-01-01 00:00 UTC"}


def test_masked_view_is_the_image_inside_and_grey_outside():
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 0:2] = True
    view = iq.masked_view(image, mask)
    np.testing.assert_array_equal(view[mask], image[mask])
    assert (view[~mask] == 128).all() and view.dtype == np.uint8


def test_the_judge_sees_only_the_mask_region():
    torch.manual_seed(0)
    judge = iq.RegionJudge(iq.judge_net(width=4))
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    masks = [np.zeros((32, 32), dtype=bool) for _ in range(3)]
    for i, m in enumerate(masks):
        m[4 + i:20, 6:18 + i] = True
    b = a.copy()
    for im, m in zip(b, masks, strict=True):  # anything outside the mask: water, land, noise
        im[~m] = rng.integers(0, 256, size=(int((~m).sum()), 3), dtype=np.uint8)
    la, lb = judge.logits(list(a), masks), judge.logits(list(b), masks)
    torch.testing.assert_close(la, lb, rtol=0, atol=0)
    c = a.copy()
    c[0][masks[0]] = 255 - c[0][masks[0]]  # inside the mask: the judge does see it
    assert not torch.equal(judge.logits(list(c), masks)[0], la[0])
    np.testing.assert_array_equal(judge.predict(list(a), masks), la.argmax(1).numpy())


def test_background_leak_hand_computed():
    # green (H 120, S 1, V .63), soil brown (H 30, S .67, V .47), water blue (H 225, S .85, V .78), white
    image = np.array([[[0, 160, 0], [120, 80, 40]], [[30, 75, 200], [250, 250, 250]]], dtype=np.uint8)
    np.testing.assert_array_equal(iq.in_palette(image, "land"), [[True, True], [False, False]])
    np.testing.assert_array_equal(iq.in_palette(image, "water"), [[False, False], [True, False]])
    everything = np.ones((2, 2), dtype=bool)
    assert iq.background_leak(image, everything, target=0) == pytest.approx(2 / 4)  # landbird: land
    assert iq.background_leak(image, everything, target=1) == pytest.approx(1 / 4)  # waterbird: water
    no_green = np.array([[False, True], [True, True]])
    assert iq.background_leak(image, no_green, target=0) == pytest.approx(1 / 3)
    assert iq.background_leak(image, np.array([[False, False], [False, True]]), target=1) == 0.0
    # A bright warm plumage (H 30, S .8, V .9) is not soil; an olive blend (H 70) is land.
    warm_olive = np.array([[[230, 138, 46], [110, 128, 40]]], dtype=np.uint8)
    np.testing.assert_array_equal(iq.in_palette(warm_olive, "land"), [[False, True]])
    with pytest.raises(ValueError, match="empty mask"):
        iq.background_leak(image, np.zeros((2, 2), dtype=bool), 0)


def test_palettes_match_the_generators_backgrounds_and_spare_its_birds():
    land, water, birds = [], [], {0: [], 1: []}
    for i in range(12):
        s = render_sample(7, "train", i, i % 2, 0)
        t = render_sample(7, "train", i, i % 2, 1)
        land.append((iq.in_palette(s.background, "land").mean(),
                     iq.in_palette(s.background, "water").mean()))
        water.append((iq.in_palette(t.background, "water").mean(),
                      iq.in_palette(t.background, "land").mean()))
        birds[i % 2].append(iq.in_palette(s.image, "water")[s.mask].mean())
    assert np.mean([a for a, _ in land]) > 0.9 and max(b for _, b in land) == 0.0
    assert np.mean([a for a, _ in water]) > 0.9 and max(b for _, b in water) == 0.0
    assert max(birds[0] + birds[1]) == 0.0  # no bird plumage is water-coloured


def test_judge_masks_hide_the_outline_class():
    own = render_pretrain_sample(1, 0, 64).sample.mask
    partner = render_pretrain_sample(1, 1, 64).sample.mask
    rng = np.random.default_rng(0)
    for _ in range(10):
        m = iq.judge_mask(own, partner, rng)
        assert m[own].all()  # the bird is always fully visible
    views, labels = iq.judge_views(1, 6)
    assert views.shape == (6, 64, 64, 3) and set(labels) <= {0, 1, iq.NO_BIRD}
    _, labels = iq.judge_views(1, 40, no_bird=0.5)
    assert 10 <= (labels == iq.NO_BIRD).sum() <= 30 and {0, 1} <= set(labels)
    assert ((views == 128).all(-1).mean(axis=(1, 2)) > 0.3).all()  # mostly grey outside the region


def test_gate_and_report_state_each_direction():
    row = {"direction": "landbird->waterbird", "n": 100, "target_rate": 0.93, "leak": 0.041, "leak_p90": 0.1,
           "judge_on_sources": 0.99, "own_rate": 0.97, "oracle_target_rate": 0.99, "oracle_leak": 0.0,
           "source_leak": 0.0, "no_bird_rate": 0.02, "empty_mask_called_source": 0.04,
           "empty_mask_called_no_bird": 0.9, "background_exact_rate": 1.0,
           "mask_share": 0.2, "seconds_per_image": 0.1234, "vae_psnr": 23.31, "vae_sharpness_ratio": 0.321}
    other = {**row, "direction": "waterbird->landbird", "target_rate": 0.88, "leak": 0.12}
    verdict = iq.gate([row, other])
    assert verdict == {"a_target_rate": False, "b_leak": False, "c_judge_on_sources": True}
    assert all(iq.gate([row]).values())
    summary = {"model_name": "synthetic_inpainter", "model_corpus": "pretrain", "data_seed": 0, "dilate": 6,
               "steps": 20, "guidance": 20.0, "strength": 1.0, "results": [row, other], "gate": verdict,
               "judge": {"train_views": 12000, "corpus_seed": 1, "heldout_accuracy": 0.995}}
    text = iq.report(summary, INFO, [], "python -m benchmarks.inpainter_quality --n 100")
    assert "`python -m benchmarks.inpainter_quality --n 100`" in text and "dilated 6 px" in text
    assert "guidance 20, strength 1. Judge" in text
    assert "| landbird->waterbird | 100 | 93.0% | 2.0% | 4.1% | 99.0% |" in text
    assert "| waterbird->landbird | 100 | 88.0% | 2.0% | 12.0% | 99.0% |" in text
    assert "| 4% / 90% |" in text and "| 23.3 dB / 0.32 |" in text
    assert "(a) FAIL, (b) FAIL, (c) pass" in text


def test_a_strength_outside_zero_to_one_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        iq.main(["--strength", "1.5", "--results", "none"])
    assert stop.value.code == 2
    assert "--strength 1.5: expected a value in (0, 1]" in capsys.readouterr().err


def test_sharpness_hand_computed():
    # A 0/255 checkerboard: every interior pixel differs from its 4 neighbours by 255 -> |Laplacian| 1020.
    board = (np.indices((6, 6)).sum(0) % 2 * 255).astype(np.uint8)
    assert iq.sharpness(np.repeat(board[None, ..., None], 3, -1)) == pytest.approx(1020.0)
    assert iq.sharpness(np.full((2, 6, 6, 3), 77, np.uint8)) == 0.0


def test_vae_round_trip_of_an_exact_autoencoder_is_lossless():
    class Exact(torch.nn.Module):  # encode = decode = identity, in the diffusers output shapes
        def encode(self, x):
            return type("Out", (), {"latent_dist": type("Dist", (), {"mean": x})()})()

        def decode(self, z):
            return type("Out", (), {"sample": z})()

    images = [np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8) for i in range(3)]
    measured = iq.vae_round_trip(Exact(), images)
    assert measured["vae_sharpness_ratio"] == pytest.approx(1.0) and measured["vae_psnr"] > 50
