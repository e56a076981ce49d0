"""Inpaint stage on a tiny SD-shaped pipeline saved locally and loaded with from_pretrained."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from raydbb.config import InpaintConfig, StageResources
from raydbb.ddb.stages.inpaint import InpaintStage, fill_prompt
from raydbb.engine.stage import empty_image, empty_mask, object_column
from raydbb.errors import ConfigError, DataError
from raydbb.models.small_sd import build_small_inpaint_pipeline

CLASSES = ["landbird", "waterbird"]
H, W = 24, 40  # non-square source, not the model's working size (16 x 16)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_small_inpaint_pipeline(tmp_path_factory.mktemp("sd"), seed=0, sample_size=8)


@pytest.fixture(scope="module")
def shared_pipe(model_dir):
    stage = _stage(model_dir)
    stage.setup()
    return stage.pipe


def _stage(model_dir, model_batch_size=4, pipe=None, **kw):
    """A stage on the saved model; ``pipe`` reuses an already loaded pipeline (loading dominates
    test time) for stages whose settings do not change what setup() loads."""
    cfg = InpaintConfig(model=str(model_dir), steps=2, guidance_scale=2.0,
                        resources=StageResources(batch_size=8, model_batch_size=model_batch_size), **kw)
    stage = InpaintStage(cfg, CLASSES)
    stage.pipe = pipe
    return stage


def _batch(n=3, reasons=None):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(n)]
    masks = []
    for i in range(n):
        m = np.zeros((H, W), np.uint8)
        m[3 + i:15 + i, 8:30] = 1
        masks.append(m)
    return {
        "sample_id": np.array([f"s{i}" for i in range(n)], dtype=object),
        "source_label": np.array([i % 2 for i in range(n)], dtype=np.int64),
        "target_label": np.array([1 - i % 2 for i in range(n)], dtype=np.int64),
        "seed": np.array([11, 22, 33, 44][:n], dtype=np.int64),
        "source_image": object_column(images),
        "mask": object_column(masks),
        "prune_reason": np.array(reasons or [""] * n, dtype=object),
    }


def test_fill_prompt_collapses_the_empty_token():
    template = "a photo of a {token} {class_name}"
    assert fill_prompt(template, "", "waterbird") == "a photo of a waterbird"
    assert fill_prompt(template, "<w>", "waterbird") == "a photo of a <w> waterbird"


def test_output_at_source_resolution_and_unmasked_pixels_exact(model_dir):
    batch = _batch(3)
    out = _stage(model_dir)(batch)  # the full path: from_pretrained in setup()
    for src, mask, image in zip(batch["source_image"], batch["mask"], out["image"], strict=True):
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        outside = mask == 0
        np.testing.assert_array_equal(image[outside], src[outside])
        assert (image[~outside] != src[~outside]).any()  # the masked part was repainted
    assert list(out["prompt"]) == [f"a photo of a {c}" for c in ("waterbird", "landbird", "waterbird")]
    assert list(out["token"]) == ["", "", ""] and list(out["inpaint_model"]) == [str(model_dir)] * 3
    assert (out["t_inpaint"] > 0).all()


def test_without_paste_back_only_the_resolution_is_restored(model_dir, shared_pipe):
    batch = _batch(1)
    image = _stage(model_dir, paste_back=False, pipe=shared_pipe)(batch)["image"][0]
    outside = batch["mask"][0] == 0
    assert image.shape == (H, W, 3)
    assert (image[outside] != batch["source_image"][0][outside]).any()  # VAE + resizes change them


def test_match_noise_changes_only_the_painted_pixels_and_follows_the_seed(model_dir, shared_pipe):
    batch = _batch(2)
    plain = _stage(model_dir, pipe=shared_pipe)(batch)["image"]
    noisy = _stage(model_dir, match_noise=True, pipe=shared_pipe)(batch)["image"]
    again = _stage(model_dir, match_noise=True, model_batch_size=1, pipe=shared_pipe)(batch)["image"]
    for src, mask, a, b, c in zip(batch["source_image"], batch["mask"], plain, noisy, again, strict=True):
        outside = mask == 0
        np.testing.assert_array_equal(b[outside], src[outside])
        assert (a[~outside] != b[~outside]).any()  # uniform-noise sources: noise added in the mask
        np.testing.assert_array_equal(b, c)


def test_seeds_not_batching_decide_the_output(model_dir, shared_pipe):
    batch = _batch(3)
    one = _stage(model_dir, model_batch_size=1, pipe=shared_pipe)(batch)["image"]
    three = _stage(model_dir, model_batch_size=3, pipe=shared_pipe)(batch)["image"]
    for a, b in zip(one, three, strict=True):
        np.testing.assert_array_equal(a, b)
    # Reordering rows keeps each row's image; another seed gives another image.
    rev = {k: v[::-1].copy() for k, v in batch.items()}
    rev_out = _stage(model_dir, model_batch_size=3, pipe=shared_pipe)(rev)["image"][::-1]
    for a, b in zip(one, rev_out, strict=True):
        np.testing.assert_array_equal(a, b)
    batch["seed"] = batch["seed"] + 1
    other = _stage(model_dir, model_batch_size=3, pipe=shared_pipe)(batch)["image"]
    assert not np.array_equal(other[0], one[0])


def test_decided_rows_pass_through(model_dir, shared_pipe):
    batch = _batch(3, reasons=["", "no_mask", "error:image_read"])
    batch["source_image"][2] = empty_image()
    batch["mask"][2] = empty_mask()
    out = _stage(model_dir, pipe=shared_pipe)(batch)
    assert out["image"][0].shape == (H, W, 3)
    assert out["image"][1].shape == (0, 0, 3) and out["image"][2].shape == (0, 0, 3)
    assert list(out["prompt"][1:]) == ["", ""] and list(out["t_inpaint"][1:]) == [0.0, 0.0]
    assert list(out["prune_reason"]) == ["", "no_mask", "error:image_read"]


def _write_token(root, class_name, token, vector):
    folder = root / class_name
    folder.mkdir(parents=True)
    save_file({token: vector}, str(folder / "learned_embeds.safetensors"))
    (folder / "token.json").write_text(json.dumps({"token": token, "finished": True}))


def test_learned_tokens_are_loaded_into_the_prompt(model_dir, tmp_path):
    vectors = {"landbird": torch.full((32,), 0.5), "waterbird": torch.linspace(-1, 1, 32)}
    for name, vec in vectors.items():
        _write_token(tmp_path, name, f"<{name}-causal>", vec)
    stage = _stage(model_dir, tokens_dir=str(tmp_path), scheduler="EulerDiscreteScheduler")
    out = stage(_batch(2))
    assert list(out["token"]) == ["<waterbird-causal>", "<landbird-causal>"]
    assert out["prompt"][0] == "a photo of a <waterbird-causal> waterbird"
    assert type(stage.pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    tok, emb = stage.pipe.tokenizer, stage.pipe.text_encoder.get_input_embeddings().weight
    for name, vec in vectors.items():
        ids = tok(f"<{name}-causal>", add_special_tokens=False).input_ids
        assert len(ids) == 1 and torch.equal(emb[ids[0]], vec)
    assert out["image"][0].shape == (H, W, 3)


def test_config_errors_are_one_line(model_dir, shared_pipe, tmp_path):
    with pytest.raises(ConfigError, match="inpaint.scheduler='NoSuchScheduler': not a diffusers scheduler"):
        _stage(model_dir, scheduler="NoSuchScheduler")
    with pytest.raises(ConfigError, match="inpaint.prompt_template"):
        _stage(model_dir, prompt_template="a {noun}")
    with pytest.raises(DataError, match="no learned token for class 'landbird'"):
        _stage(model_dir, tokens_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="inpaint.model="):
        _stage(tmp_path).setup()
    batch = _batch(1)
    batch["mask"][0] = np.zeros((H, W + 1), np.uint8)
    with pytest.raises(DataError, match="mask of shape"):
        _stage(model_dir, pipe=shared_pipe)(batch)


@pytest.mark.gpu
def test_cuda_float16(model_dir):
    cfg = InpaintConfig(model=str(model_dir), steps=2, dtype="float16",
                        resources=StageResources(num_gpus=1, model_batch_size=2))
    stage = InpaintStage(cfg, CLASSES)
    batch = _batch(3)
    out = stage(batch)
    assert stage.pipe.device.type == "cuda" and stage.pipe.unet.dtype == torch.float16
    for src, mask, image in zip(batch["source_image"], batch["mask"], out["image"], strict=True):
        assert image.shape == (H, W, 3)
        np.testing.assert_array_equal(image[mask == 0], src[mask == 0])
