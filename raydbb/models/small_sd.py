"""Small, SD-2-shaped inpainting pipelines built offline from configs.

No pretrained diffusion weights can be downloaded on the machines raydbb is developed on, so tests,
benchmarks, textual inversion and the demo's trained inpainter all start from the builders here:

- :func:`build_clip_tokenizer` writes a real CLIP BPE tokenizer (the 49408-token vocabulary of
  OpenAI CLIP / SD-2) from the BPE merges bundled in the ``open_clip`` wheel;
- :func:`make_small_inpaint_pipeline` assembles a ``StableDiffusionInpaintPipeline`` with a tiny
  ``AutoencoderKL``, a 9-channel ``UNet2DConditionModel`` and a tiny ``CLIPTextModel``, randomly
  initialised from a seed; :func:`build_small_inpaint_pipeline` saves it as a folder that
  ``StableDiffusionInpaintPipeline.from_pretrained`` loads, exactly like a hub checkpoint.

Sizes are fields of :class:`SmallSDSizes`; the defaults are tiny (fast tests).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from raydbb.models.small_sd_sizes import SmallSDSizes

# CLIP's BPE vocabulary: 256 bytes + 256 bytes+"</w>" + 48894 merges + 2 special tokens = 49408.
CLIP_NUM_MERGES = 49152 - 256 - 2
CLIP_VOCAB_SIZE = 49408
CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
CLIP_CONTEXT_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable unicode map (same order as CLIP's vocabulary)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def open_clip_bpe_path() -> Path:
    """The gzipped BPE merges file that ships inside the ``open_clip`` wheel."""
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; expected open_clip_torch's bundled BPE vocabulary")
    return path


def build_clip_tokenizer(out_dir: str | Path) -> CLIPTokenizer:
    """Write the CLIP tokenizer (``vocab.json``, ``merges.txt``, configs) to ``out_dir`` and load it.

    Replicates what OpenAI CLIP's ``SimpleTokenizer`` does with the same BPE file, so ids equal
    open_clip's (and SD-2's tokenizer) — only the special tokens are spelled the Hugging Face way.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(open_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:CLIP_NUM_MERGES + 1]]
    byte_tokens = list(_bytes_to_unicode().values())
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m) for m in merges]
    vocab += [CLIP_BOS, CLIP_EOS]
    encoder = {tok: i for i, tok in enumerate(vocab)}
    if len(encoder) != CLIP_VOCAB_SIZE:
        raise ValueError(f"CLIP vocabulary has {len(encoder)} tokens; expected {CLIP_VOCAB_SIZE}")
    (out / "vocab.json").write_text(json.dumps(encoder, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(out, model_max_length=CLIP_CONTEXT_LENGTH)
    tokenizer.save_pretrained(out)  # adds tokenizer.json + tokenizer_config.json for plain reloads
    return tokenizer


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU RNG seeded to ``seed``, restoring the caller's RNG state after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _unet(s: SmallSDSizes) -> UNet2DConditionModel:
    n = len(s.block_channels)
    # Like SD-2: cross-attention in every block except the deepest, linear projections.
    down = tuple(["CrossAttnDownBlock2D"] * (n - 1) + ["DownBlock2D"])
    up = tuple(["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n - 1))
    return UNet2DConditionModel(
        sample_size=s.sample_size,
        in_channels=4 + 1 + s.latent_channels,  # [noisy latents, mask, masked-image latents]
        out_channels=s.latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(s.block_channels),
        layers_per_block=s.layers_per_block,
        attention_head_dim=s.attention_head_dim,
        norm_num_groups=s.norm_num_groups,
        cross_attention_dim=s.text_hidden,
        use_linear_projection=True,
        addition_embed_type="text" if s.text_time_embedding else None,
        # diffusers' default of 64 heads does not divide a small text width; one head pools it.
        addition_embed_type_num_heads=1,
    )


def _vae(s: SmallSDSizes) -> AutoencoderKL:
    n = len(s.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(s.vae_channels),
        layers_per_block=s.vae_layers_per_block,
        latent_channels=s.latent_channels,
        norm_num_groups=s.norm_num_groups,
        sample_size=s.image_size,
        scaling_factor=s.vae_scaling_factor,
    )


def _text_encoder(s: SmallSDSizes, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.text_hidden,
        intermediate_size=s.text_intermediate,
        num_hidden_layers=s.text_layers,
        num_attention_heads=s.text_heads,
        max_position_embeddings=CLIP_CONTEXT_LENGTH,
        hidden_act="gelu",  # SD-2's OpenCLIP text tower uses exact GELU
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def _scheduler(s: SmallSDSizes) -> DDIMScheduler:
    # SD-2 inpainting's scheduler settings (epsilon prediction, scaled-linear betas).
    return DDIMScheduler(
        num_train_timesteps=s.num_train_timesteps,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def make_small_inpaint_pipeline(
    tokenizer: CLIPTokenizer, seed: int = 0, **sizes: Any
) -> StableDiffusionInpaintPipeline:
    """Assemble a randomly initialised small inpainting pipeline in memory (deterministic from ``seed``).

    ``sizes`` are :class:`SmallSDSizes` fields; an unknown name raises ``TypeError``.
    """
    s = SmallSDSizes(**sizes)
    with seeded(seed):
        vae = _vae(s)
        unet = _unet(s)
        text_encoder = _text_encoder(s, tokenizer)
    return StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_scheduler(s),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_small_inpaint_pipeline(out_dir: str | Path, seed: int = 0, **sizes: Any) -> Path:
    """Build a small inpainting pipeline and save it to ``out_dir`` (safetensors); returns the folder.

    The folder loads with ``StableDiffusionInpaintPipeline.from_pretrained(out_dir)``. ``sizes`` are
    :class:`SmallSDSizes` fields; the sizes used are also written to ``raydbb_small_sd.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_clip_tokenizer(out / "tokenizer")
    pipe = make_small_inpaint_pipeline(tokenizer, seed=seed, **sizes)
    pipe.save_pretrained(out, safe_serialization=True)
    record = {"seed": seed, **dataclasses.asdict(SmallSDSizes(**sizes))}
    (out / "raydbb_small_sd.json").write_text(json.dumps(record, indent=2))
    return out
