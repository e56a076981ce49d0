"""Tiny, randomly initialised GroundingDINO and SAM checkpoints built offline from configs.

The ``text`` mask source (a LangSAM equivalent) loads a detector and a segmenter with
``from_pretrained``; these builders write folders of the same shape as the hub checkpoints
(``IDEA-Research/grounding-dino-tiny``, ``facebook/sam-vit-base``) so that tests and benchmarks run
the real loading and inference code on machines without pretrained weights. Random models find
arbitrary boxes: use them for plumbing and speed, never for mask quality.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from transformers import (
    BertConfig,
    BertTokenizer,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessor,
    GroundingDinoProcessor,
    SamConfig,
    SamImageProcessor,
    SamMaskDecoderConfig,
    SamModel,
    SamProcessor,
    SamPromptEncoderConfig,
    SamVisionConfig,
    SwinConfig,
)

from raydbb.models.small_sd import seeded

DEFAULT_WORDS = ("a", "photo", "of", "the", "bird", "waterbird", "landbird", "water", "land",
                 "cat", "dog", "person", "hair", "blond", "face")
_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def write_wordpiece_vocab(path: str | Path, words: Iterable[str] = DEFAULT_WORDS) -> Path:
    """Write a tiny BERT WordPiece ``vocab.txt``: specials, punctuation, letters, ``##letters``, words.

    Single letters and their ``##`` continuations make every lowercase ASCII word tokenizable.
    """
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    tokens = [*_SPECIALS, ".", ",", "-", "'", *letters, *("##" + c for c in letters)]
    tokens += [w for w in dict.fromkeys(w.lower() for w in words) if w not in tokens]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(tokens) + "\n")
    return out


def build_tiny_grounding_dino(
    out_dir: str | Path,
    seed: int = 0,
    words: Iterable[str] = DEFAULT_WORDS,
    d_model: int = 32,
    num_queries: int = 16,
    image_size: int = 96,
) -> Path:
    """Save a tiny ``GroundingDinoForObjectDetection`` + ``GroundingDinoProcessor`` to ``out_dir``.

    Swin backbone (no pretrained weights), tiny BERT text backbone with a WordPiece vocabulary
    built offline, images resized to ``image_size`` on the short side by the processor.
    ``image_size`` >= 96 keeps the coarsest feature level (1/64 of the side) larger than 1x1,
    which GroupNorm with one channel per group needs.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab_file = write_wordpiece_vocab(out / "vocab.txt", words)
    n_vocab = len(vocab_file.read_text().split())
    max_text_len = 32
    backbone = SwinConfig(
        image_size=image_size, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
        window_size=4, out_features=["stage2", "stage3", "stage4"],
    )
    text = BertConfig(
        vocab_size=n_vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=max_text_len,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, d_model=d_model, num_queries=num_queries,
        # decoder_layers >= 2: transformers ties the per-layer bbox heads to the first one.
        encoder_layers=1, decoder_layers=2, encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model,
        encoder_attention_heads=2, decoder_attention_heads=2, num_feature_levels=4,
        encoder_n_points=2, decoder_n_points=2, max_text_len=max_text_len,
    )
    with seeded(seed):
        model = GroundingDinoForObjectDetection(config)
    model.save_pretrained(out, safe_serialization=True)
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(
            size={"shortest_edge": image_size, "longest_edge": 2 * image_size}),
        tokenizer=BertTokenizer(vocab=str(vocab_file), do_lower_case=True,
                                model_max_length=max_text_len),
    )
    processor.save_pretrained(out)
    return out


def build_tiny_sam(out_dir: str | Path, seed: int = 0, image_size: int = 64) -> Path:
    """Save a tiny ``SamModel`` + ``SamProcessor`` (input side ``image_size``) to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    patch, hidden = 8, 16
    embed_side = image_size // patch
    vision = SamVisionConfig(
        hidden_size=32, output_channels=hidden, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=patch, window_size=4, global_attn_indexes=[1],
        num_pos_feats=hidden // 2, mlp_dim=64,
    )
    prompt = SamPromptEncoderConfig(hidden_size=hidden, image_size=image_size, patch_size=patch,
                                    mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=hidden, mlp_dim=32, num_attention_heads=2,
                                   iou_head_hidden_dim=16)
    config = SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    with seeded(seed):
        model = SamModel(config)
    model.save_pretrained(out, safe_serialization=True)
    mask_side = 4 * embed_side  # SAM's low-resolution masks are 4x the embedding grid
    processor = SamProcessor(image_processor=SamImageProcessor(
        size={"longest_edge": image_size}, pad_size={"height": image_size, "width": image_size},
        mask_size={"longest_edge": mask_side}, mask_pad_size={"height": mask_side, "width": mask_side},
    ))
    processor.save_pretrained(out)
    return out


def build_tiny_langsam(
    out_dir: str | Path, seed: int = 0, words: Iterable[str] = DEFAULT_WORDS
) -> tuple[Path, Path]:
    """Both tiny models under ``out_dir``: returns ``(detector_dir, segmenter_dir)`` for MaskConfig."""
    out = Path(out_dir)
    return (build_tiny_grounding_dino(out / "grounding_dino", seed=seed, words=words),
            build_tiny_sam(out / "sam", seed=seed))
