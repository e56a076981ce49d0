"""The offline CLIP tokenizer and the small SD-shaped inpainting pipeline builders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline
from open_clip.tokenizer import SimpleTokenizer

from raydbb.models.small_sd import (
    CLIP_VOCAB_SIZE,
    build_clip_tokenizer,
    build_small_inpaint_pipeline,
    make_small_inpaint_pipeline,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_clip_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    return build_small_inpaint_pipeline(tmp_path_factory.mktemp("sd"), seed=0, sample_size=8)


@pytest.mark.parametrize("text", ["a photo of a waterbird", "A  Photo of a landbird, on WATER!! 42 it's"])
def test_tokenizer_ids_equal_open_clip(tokenizer, text):
    ref = SimpleTokenizer()
    assert tokenizer(text).input_ids == [ref.sot_token_id, *ref.encode(text), ref.eot_token_id]
    assert len(tokenizer) == CLIP_VOCAB_SIZE
    assert tokenizer.model_max_length == 77


def test_pipeline_round_trips_through_from_pretrained(pipe_dir, tokenizer):
    pipe = StableDiffusionInpaintPipeline.from_pretrained(pipe_dir)
    assert pipe.unet.config.in_channels == 9
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.text_encoder.config.vocab_size == CLIP_VOCAB_SIZE
    assert pipe.tokenizer("a photo of a waterbird").input_ids == tokenizer("a photo of a waterbird").input_ids
    assert pipe.safety_checker is None
    # Same seed -> bit-identical weights to a fresh in-memory build; saved files are safetensors.
    fresh = make_small_inpaint_pipeline(tokenizer, seed=0, sample_size=8)
    for name in ("unet", "vae", "text_encoder"):
        loaded_sd = getattr(pipe, name).state_dict()
        for key, value in getattr(fresh, name).state_dict().items():
            assert torch.equal(loaded_sd[key], value), f"{name}.{key}"
    assert list(pipe_dir.glob("unet/*.safetensors")) and not list(pipe_dir.rglob("*.bin"))
    assert json.loads((pipe_dir / "raydbb_small_sd.json").read_text())["sample_size"] == 8

    # Default working resolution = latent side * VAE scale factor; inference gives that size.
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    assert side == 16
    image = torch.rand(1, 3, side, side)
    mask = torch.zeros(1, 1, side, side)
    mask[..., 4:12, 4:12] = 1
    out = pipe("a photo of a waterbird", image=image, mask_image=mask, num_inference_steps=2,
               output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, side, side, 3) and np.isfinite(out).all()


def test_seed_changes_weights(tokenizer):
    a = make_small_inpaint_pipeline(tokenizer, seed=0, sample_size=8).unet.conv_in.weight
    b = make_small_inpaint_pipeline(tokenizer, seed=1, sample_size=8).unet.conv_in.weight
    assert not torch.equal(a, b)


def test_unknown_size_is_an_error(tokenizer):
    with pytest.raises(TypeError, match="bogus"):
        make_small_inpaint_pipeline(tokenizer, bogus=3)
