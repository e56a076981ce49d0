"""Textual inversion of one causal token per class (DDB step 3, paper Eq. 1).

For each class ``c`` a new placeholder token (``<waterbird-causal>``) is added to the inpainting
model's tokenizer, its embedding row is initialised from a class noun, and only that row is
trained on the class's token pool with the denoising loss

    L = E_{z_0, ε, t} ‖ε − ε_θ([z_t, m, z_masked], t, τ(prompt))‖²

where ``z_0`` = VAE latents × scaling factor, ``m`` the mask at latent resolution and
``z_masked`` the latents of the image with the masked pixels blanked (the 9-channel input of an
inpainting UNet), and every prompt contains both the token and the dataset's class name.

Only the new row is a trainable parameter: it is spliced into the embedding output by a forward
hook, while the embedding matrix, the rest of the text encoder, the UNet and the VAE keep
``requires_grad=False``. Every other embedding row is therefore bit-identical by construction
(stronger than restoring rows after each step, and the optimiser state is one vector, not V×D).

Output per class, in ``OUT/tokens/<class id>/``: ``learned_embeds.safetensors`` (``{token: (1, D)}``,
the layout ``load_textual_inversion`` reads), ``token.json`` (token, initializer, images used,
loss curve, settings) and ``checkpoint-<step>/`` folders a rerun resumes from. Classes are
independent and run as parallel Ray tasks (:func:`run_inversion`).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from raydbb.config import InvertConfig, RaydbbConfig
from raydbb.data.records import RecordSet
from raydbb.errors import ConfigError, DataError, RaydbbError
from raydbb.ids import safe_join, sanitize_id

EMBEDS_FILE = "learned_embeds.safetensors"
TOKEN_FILE = "token.json"
CHECKPOINT_PREFIX = "checkpoint-"
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


# ----------------------------------------------------------------------------------------------
# Names and paths


def placeholder_token(class_name: str) -> str:
    """The default placeholder token of a class: ``"Blond Hair"`` -> ``"<blond-hair-causal>"``.

    Lower case because CLIP's tokenizer lower-cases prompts; only ``[a-z0-9-]`` inside the brackets.
    """
    stem = re.sub(r"[^a-z0-9]+", "-", class_name.lower()).strip("-")
    if not stem:
        raise ConfigError(f"class name {class_name!r} has no letters or digits to name a token; "
                          "set invert.tokens.<class>=<token>")
    return f"<{stem}-causal>"


def token_dir(tokens_root: str | Path, class_name: str) -> Path:
    """Folder of one class's learned token: ``tokens_root/<sanitize_id(class_name)>``."""
    return safe_join(tokens_root, sanitize_id(class_name))


def token_pool_path(out: str | Path, class_name: str) -> Path:
    """The select step's token-pool CSV of a class: ``OUT/token_pool/<sanitize_id(class_name)>.csv``."""
    from raydbb.engine.select import TOKEN_POOL_DIR

    return safe_join(out, TOKEN_POOL_DIR, f"{sanitize_id(class_name)}.csv")


def load_learned_token(tokens_root: str | Path, class_name: str) -> tuple[str, Path]:
    """``(token, embeds file)`` of a finished class, for pipelines that load it with
    ``load_textual_inversion(str(path), token=token)``; a one-line error when it is not finished."""
    folder = token_dir(tokens_root, class_name)
    meta = _read_json(folder / TOKEN_FILE)
    if not meta or not meta.get("finished") or not (folder / EMBEDS_FILE).is_file():
        raise DataError(f"no learned token for class {class_name!r} in {folder}; run `raydbb invert` first")
    return str(meta["token"]), folder / EMBEDS_FILE


# ----------------------------------------------------------------------------------------------
# Jobs: everything one class needs, validated on the driver before any training starts


@dataclass(frozen=True)
class PoolImage:
    """One token-pool image, its object mask (``None`` when there is none) and, when an earlier
    step rejected it (unreadable image, degenerate mask), the reason it is skipped."""

    path: str
    mask: str | None = None
    skip: str = ""


@dataclass
class ClassJob:
    """The inversion of one class: plain data, shipped to a Ray task."""

    class_name: str
    token: str
    initializer: str
    images: list[PoolImage]
    out_dir: str
    model: str
    device: str
    cfg: InvertConfig
    status: str = "pending"  # pending | resume | finished
    resume_step: int = 0

    def settings(self) -> dict[str, Any]:
        """Everything that changes the learned embedding; a rerun resumes only when these match."""
        c = self.cfg
        return {
            "token": self.token, "initializer": self.initializer, "model": self.model,
            "images": [asdict(i) for i in self.images], "templates": list(c.templates),
            "steps": c.steps, "lr": c.lr, "scale_lr": c.scale_lr, "batch_size": c.batch_size,
            "grad_accum": c.grad_accum, "weight_decay": c.weight_decay, "resolution": c.resolution,
            "mask_mode": c.mask_mode, "flip": c.flip, "mixed_precision": c.mixed_precision, "seed": c.seed,
        }


def read_token_pool(csv_path: str | Path) -> pd.DataFrame:
    """Read a token-pool CSV as the select step writes it: ``path`` and optional ``mask`` and
    ``sample_id`` columns (relative paths are relative to the CSV's folder; a missing sample_id
    is derived from the path). A missing file or column is a one-line :class:`DataError`."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"token pool {csv_path} not found; expected the select step's CSV")
    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    if "path" not in frame.columns:
        raise DataError(f"token pool {csv_path}: missing column 'path'; found {list(frame.columns)}")

    def resolve(p: str) -> str:
        return str(Path(p) if Path(p).is_absolute() else (csv_path.parent / p).resolve()) if p else ""

    paths = [resolve(p) for p in frame["path"]]
    return pd.DataFrame({
        "sample_id": frame["sample_id"] if "sample_id" in frame.columns else [sanitize_id(p) for p in paths],
        "path": paths,
        "mask": [resolve(m) for m in frame["mask"]] if "mask" in frame.columns else "",
    })


def resolve_initializer(class_name: str, initializer: dict[str, str] | None, tokenizer: Any) -> str:
    """The word whose embedding initialises the class token; it must be exactly one token.

    Configured ``invert.initializer[class]`` wins; otherwise the class name when it is one token,
    else its last word (``"blond hair"`` -> ``"hair"``). Anything else is a one-line error.
    """
    configured = (initializer or {}).get(class_name)
    candidates = [configured] if configured else [class_name, re.split(r"[\s_]+", class_name.strip())[-1]]
    for word in candidates:
        if len(tokenizer.encode(word, add_special_tokens=False)) == 1:
            return word
    pieces = tokenizer.tokenize(candidates[-1])
    where = f"invert.initializer.{class_name}={configured!r}" if configured else f"class {class_name!r}"
    raise ConfigError(
        f"{where}: no single-token initializer ({candidates[-1]!r} splits into {pieces}); "
        f"set invert.initializer.{class_name}=<one-token noun>, e.g. {pieces[-1].replace('</w>', '')!r}"
    )


def _class_key(class_name: str) -> int:
    return zlib.crc32(class_name.encode("utf-8"))


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a class (``checkpoint-<step>``), oldest first."""
    found = []
    for p in out_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        step = p.name[len(CHECKPOINT_PREFIX):]
        if p.is_dir() and step.isdigit() and (p / "state.json").is_file():
            found.append((int(step), p))
    return sorted(found)


def _resume_state(job: ClassJob) -> tuple[str, int]:
    """``(status, step)`` from what an earlier run left in the class folder.

    Earlier output made with other settings is never overwritten silently: that is an error.
    """
    out = Path(job.out_dir)
    done = _read_json(out / TOKEN_FILE)
    settings = job.settings()
    if done is not None:
        if done.get("settings") != settings:
            raise ConfigError(f"{out} holds a token of class {job.class_name!r} trained with other "
                              f"settings ({_diff(done.get('settings') or {}, settings)}); "
                              "delete that folder or use another out")
        if done.get("finished") and (out / EMBEDS_FILE).is_file():
            return "finished", job.cfg.steps
    ckpts = _checkpoints(out)
    if ckpts:
        step, path = ckpts[-1]
        saved = json.loads((path / "state.json").read_text()).get("settings") or {}
        if saved != settings:
            raise ConfigError(f"{path} was written with other settings ({_diff(saved, settings)}); "
                              "delete it or use another out")
        return "resume", step
    return "pending", 0


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}" for k in keys[:3])


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def plan_tokens(cfg: RaydbbConfig, class_names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Check the ``invert`` config against the classes and the model's tokenizer (cheap, no pools).

    Returns ``{class name: (token, initializer)}`` for the classes to invert. One-line errors for
    unknown class names, mixed precision without a GPU, initializers that are not one token, and
    tokens already in the vocabulary or shared by two classes.
    """
    inv = cfg.invert
    known = list(class_names)
    for field_name, names in (("classes", inv.classes), ("initializer", inv.initializer),
                              ("tokens", inv.tokens)):
        for name in names or []:
            if name not in known:
                raise ConfigError(f"invert.{field_name}: unknown class {name!r}; expected one of {known}")
    if inv.mixed_precision != "no" and cfg.device != "cuda":
        raise ConfigError(f"invert.mixed_precision={inv.mixed_precision!r} needs device=cuda; "
                          "set invert.mixed_precision=no on CPU")
    if cfg.device == "cuda" and inv.num_gpus == 0:
        raise ConfigError("invert.num_gpus=0 with device=cuda: the class tasks would get no GPU; "
                          "leave invert.num_gpus unset (one GPU per class) or give a fraction > 0")
    _check_model_configs(cfg.inpaint.model)
    tokenizer = _load_tokenizer(cfg.inpaint.model)
    vocab = tokenizer.get_vocab()
    plan: dict[str, tuple[str, str]] = {}
    for name in inv.classes or known:
        token = (inv.tokens or {}).get(name) or placeholder_token(name)
        # A word the tokenizer already maps to one id would be hijacked by the new token.
        if token in vocab or len(tokenizer.encode(token, add_special_tokens=False)) == 1:
            raise ConfigError(f"token {token!r} of class {name!r} is already in the vocabulary of "
                              f"{cfg.inpaint.model}; choose another with invert.tokens.{name}=<token>")
        twin = next((other for other, (t, _) in plan.items() if t == token), None)
        if twin is not None:
            raise ConfigError(f"classes {twin!r} and {name!r} map to the same token {token!r}; "
                              f"set invert.tokens.{name}=<token>")
        plan[name] = (token, resolve_initializer(name, inv.initializer, tokenizer))
    return plan


def plan_jobs(
    cfg: RaydbbConfig, class_names: Sequence[str], pools: dict[str, Sequence[str | PoolImage]]
) -> list[ClassJob]:
    """Validate the inversion of every requested class and return one job per class.

    Everything that can be wrong is checked here, before any training: what :func:`plan_tokens`
    checks, pools naming unknown classes, empty pools or pools whose every image was rejected,
    images without a mask under ``mask_mode=object``, and earlier output made with other
    settings. ``pools`` maps class name -> image paths or :class:`PoolImage` (see
    :func:`prepare_pools` for the select step's CSVs).
    """
    inv = cfg.invert
    for name in pools:
        if name not in class_names:
            raise ConfigError(f"token pools: unknown class {name!r}; expected one of {list(class_names)}")
    tokens_root = Path(cfg.out) / "tokens"
    jobs: list[ClassJob] = []
    for name, (token, initializer) in plan_tokens(cfg, class_names).items():
        images = [p if isinstance(p, PoolImage) else PoolImage(str(p)) for p in pools.get(name, [])]
        if not images:
            raise DataError(f"token pool of class {name!r} is empty; expected at least one image "
                            f"(select.token_pool_size, {token_pool_path(cfg.out, name)})")
        usable = [i for i in images if not i.skip]
        if not usable:
            hint = (f"; masks come from mask.source={cfg.mask.source}: choose another source or set "
                    "invert.mask_mode=full") if images[0].skip.startswith("no_mask") else ""
            raise DataError(f"token pool of class {name!r}: all {len(images)} images were rejected "
                            f"(first: {images[0].path}: {images[0].skip}){hint}")
        if inv.mask_mode == "object":
            unmasked = [i.path for i in usable if not i.mask]
            if unmasked:
                raise ConfigError(
                    f"invert.mask_mode=object but {len(unmasked)} of {len(usable)} token-pool images of "
                    f"class {name!r} have no mask (e.g. {unmasked[0]}); give them masks "
                    "or set invert.mask_mode=full")
        job = ClassJob(class_name=name, token=token, initializer=initializer, images=images,
                       out_dir=str(token_dir(tokens_root, name)), model=cfg.inpaint.model,
                       device=cfg.device, cfg=inv)
        job.status, job.resume_step = _resume_state(job)
        jobs.append(job)
    return jobs


# ----------------------------------------------------------------------------------------------
# Token pools from the select step, with the generation step's masks


def prepare_pools(
    cfg: RaydbbConfig, records: RecordSet, engine: str = "ray", progress: bool = True
) -> dict[str, list[PoolImage]]:
    """The token pool of every class to invert, ready for :func:`plan_jobs`.

    Pools are the select step's ``OUT/token_pool/<class>.csv``; when one is missing they are
    written now, exactly as ``raydbb generate`` does (scores of the ERM checkpoint, cached in
    ``OUT/select``). Under ``invert.mask_mode=object`` every pool image then goes through the
    generation pipeline's own load and mask stages (``mask`` config: dataset / text / attribution
    masks, dilation, area limits), so the token is learned under the masks it will be used with;
    rejected images become recorded skips. Masks are written once to ``OUT/tokens/pool_masks``.
    """
    names = cfg.invert.classes or records.class_names
    if any(not token_pool_path(cfg.out, n).is_file() for n in names):
        _write_token_pools(cfg, records, engine, progress)
    frames = {n: read_token_pool(token_pool_path(cfg.out, n)) for n in names}
    if cfg.invert.mask_mode == "full":
        return {n: [PoolImage(p) for p in f["path"]] for n, f in frames.items()}
    masks = _pool_masks(cfg, records.class_names, frames, engine)
    return {n: [masks[i] for i in f["sample_id"]] for n, f in frames.items()}


def _write_token_pools(cfg: RaydbbConfig, records: RecordSet, engine: str, progress: bool) -> None:
    from raydbb.engine.pipeline import classifier_dir, score_training_set
    from raydbb.engine.select import token_pool, write_token_pool

    ckpt = classifier_dir(cfg)
    if engine == "ray":
        from raydbb.ray_utils import init_ray

        init_ray(cfg.ray)
    scores = score_training_set(cfg, records, ckpt, engine, progress)
    write_token_pool(cfg.out, token_pool(scores, records, cfg.select, cfg.seed))


def _pool_masks(cfg: RaydbbConfig, class_names: list[str], frames: dict[str, pd.DataFrame],
                engine: str) -> dict[str, PoolImage]:
    """``{sample_id: PoolImage}`` with the mask stage's mask (or skip reason) for every pool image."""
    from raydbb.data.images import write_png_atomic
    from raydbb.engine.pipeline import classifier_dir, execute, source_rows
    from raydbb.engine.stages.load import LoadStage
    from raydbb.engine.stages.mask import MaskStage

    folder = safe_join(cfg.out, "tokens", "pool_masks")
    index_path = folder / "index.json"
    index = _read_json(index_path) or {}
    mask_cfg = cfg.mask.model_dump(mode="json")
    done = index.get("rows", {}) if index.get("mask_config") == mask_cfg else {}
    rows = pd.concat([f.assign(label=class_names.index(n)) for n, f in frames.items()], ignore_index=True)
    rows = rows.drop_duplicates("sample_id")
    todo = rows[~rows["sample_id"].isin(done)]
    if len(todo):
        ckpt = classifier_dir(cfg) if cfg.mask.source == "attribution" else None
        stages = [LoadStage(cfg.generate.io), MaskStage(cfg.mask, class_names, checkpoint_dir=ckpt)]
        if engine == "ray":
            from raydbb.ray_utils import init_ray

            init_ray(cfg.ray)
        frame = todo.assign(split="train", mask=[m or None for m in todo["mask"]])
        for batch in execute(stages, source_rows(frame), engine):
            for i, sid in enumerate(batch["source_id"]):
                reason = str(batch["prune_reason"][i])
                if reason:
                    done[str(sid)] = {"mask": "", "skip": f"{reason}: {batch['error'][i]}".rstrip(": ")}
                    continue
                path = safe_join(folder, f"{sanitize_id(str(sid))}.png")
                write_png_atomic(path, np.asarray(batch["mask"][i]).astype(bool))
                done[str(sid)] = {"mask": str(path), "skip": ""}
        folder.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(index_path, {"mask_config": mask_cfg, "rows": done})
    paths = dict(zip(rows["sample_id"], rows["path"], strict=True))
    return {sid: PoolImage(paths[sid], done[sid]["mask"] or None, done[sid]["skip"]) for sid in paths}


# ----------------------------------------------------------------------------------------------
# Model loading


@functools.lru_cache(maxsize=4)
def _load_tokenizer(model: str) -> Any:
    """The model's tokenizer, read-only: validation runs twice per command and once per test."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model, subfolder="tokenizer")
    except OSError as err:
        raise ConfigError(f"inpaint.model={model!r}: cannot load its tokenizer ({err}); "
                          "expected a diffusers inpainting checkpoint (hub id or local folder)") from err


def _check_inpainting(model: str, in_channels: int, latent_channels: int) -> None:
    if in_channels != 2 * latent_channels + 1:
        raise ConfigError(f"inpaint.model={model!r}: UNet has {in_channels} input channels; expected "
                          f"{2 * latent_channels + 1} (an inpainting UNet: noisy latents, mask, "
                          "masked-image latents)")


def _check_model_configs(model: str) -> None:
    """Read only the UNet and VAE configs (no weights) and check the model is an inpainting one."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    try:
        unet = UNet2DConditionModel.load_config(model, subfolder="unet")
        vae = AutoencoderKL.load_config(model, subfolder="vae")
    except (OSError, ValueError) as err:
        raise ConfigError(f"inpaint.model={model!r}: cannot read its unet/vae configs ({err}); expected "
                          "a diffusers inpainting checkpoint (hub id or local folder)") from err
    _check_inpainting(model, int(unet["in_channels"]), int(vae["latent_channels"]))


@dataclass
class InpaintModel:
    """The frozen parts of an inpainting pipeline that textual inversion needs."""

    tokenizer: Any
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    noise_scheduler: Any
    weight_dtype: torch.dtype = torch.float32

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_resolution(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor


def load_inpaint_model(
    model: str, device: str | torch.device = "cpu", mixed_precision: str = "no"
) -> InpaintModel:
    """Load ``model`` (hub id or local folder) with ``StableDiffusionInpaintPipeline.from_pretrained``.

    Frozen UNet and VAE run in fp16/bf16 under mixed precision; the text encoder stays fp32 so the
    trained embedding and its gradients keep full precision.
    """
    from diffusers import DDPMScheduler, StableDiffusionInpaintPipeline

    try:
        pipe = StableDiffusionInpaintPipeline.from_pretrained(
            model, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            use_safetensors=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"inpaint.model={model!r}: cannot load it as a diffusers inpainting pipeline "
                          f"({type(err).__name__}: {str(err).splitlines()[0]})") from err
    _check_inpainting(model, pipe.unet.config.in_channels, pipe.vae.config.latent_channels)
    weight_dtype = _DTYPES.get(mixed_precision, torch.float32)
    frozen = {"dtype": weight_dtype} if weight_dtype != torch.float32 else {}
    parts = InpaintModel(
        tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder.to(device).float(),
        vae=pipe.vae.to(device, **frozen), unet=pipe.unet.to(device, **frozen),
        # Training noise follows the checkpoint's own schedule (betas, prediction type).
        noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config), weight_dtype=weight_dtype,
    )
    for module in (parts.text_encoder, parts.vae, parts.unet):
        module.requires_grad_(False)
        module.eval()
    return parts


# ----------------------------------------------------------------------------------------------
# Training


@dataclass
class MicroBatch:
    """One forward pass: which cached images (and whether flipped), prompts, noise and timesteps."""

    index: torch.Tensor  # (B,) long, into the encoded images
    flip: torch.Tensor  # (B,) bool
    template: torch.Tensor  # (B,) long, into the prompt templates
    noise: torch.Tensor  # (B, C, h, w) float32
    timesteps: torch.Tensor  # (B,) long


@dataclass
class EncodedImages:
    """VAE latents of the token pool (both orientations), cached once: the VAE is frozen."""

    latents: torch.Tensor  # (2, N, C, h, w): [plain, flipped]
    mask: torch.Tensor  # (2, N, 1, h, w)
    masked_latents: torch.Tensor  # (2, N, C, h, w)
    used: list[PoolImage] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


class TokenTrainer:
    """Learns one placeholder token's embedding with the inpainting denoising loss (Eq. 1).

    Construction adds ``token`` to the tokenizer, grows the embedding matrix by one row
    initialised from ``initializer`` and makes that row (:attr:`embedding`) the only trainable
    parameter. Use :meth:`spliced` around forward passes (the training methods do).
    """

    def __init__(self, model: InpaintModel, token: str, initializer: str, class_name: str,
                 cfg: InvertConfig, device: str | torch.device = "cpu") -> None:
        self.model, self.cfg, self.device = model, cfg, torch.device(device)
        self.token, self.class_name = token, class_name
        tok = model.tokenizer
        if tok.add_tokens([token]) != 1:
            raise ConfigError(f"token {token!r} is already in the vocabulary; choose another token")
        init_ids = tok.encode(initializer, add_special_tokens=False)
        if len(init_ids) != 1:
            raise ConfigError(f"initializer {initializer!r} is {len(init_ids)} tokens; expected exactly one")
        self.token_id = tok.convert_tokens_to_ids(token)
        # The new row is overwritten just below; mean resizing would only cost a V x D covariance.
        model.text_encoder.resize_token_embeddings(len(tok), mean_resizing=False)
        table = model.text_encoder.get_input_embeddings()
        with torch.no_grad():
            table.weight[self.token_id] = table.weight[init_ids[0]]
        self.embedding = torch.nn.Parameter(table.weight[init_ids[0]].detach().clone().float())
        self.resolution = cfg.resolution or model.default_resolution
        if self.resolution % model.vae_scale_factor:
            raise ConfigError(f"invert.resolution={self.resolution}: expected a multiple of the VAE "
                              f"downsampling factor {model.vae_scale_factor}")
        prompts = [t.format(token=token, class_name=class_name) for t in cfg.templates]
        self.prompt_ids = tok(prompts, padding="max_length", max_length=tok.model_max_length,
                              truncation=True, return_tensors="pt").input_ids.to(self.device)
        scale = cfg.batch_size * cfg.grad_accum if cfg.scale_lr else 1
        self.optimizer = torch.optim.AdamW([self.embedding], lr=cfg.lr * scale, betas=(0.9, 0.999),
                                           weight_decay=cfg.weight_decay, eps=1e-8)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.mixed_precision == "fp16")
        prediction = model.noise_scheduler.config.prediction_type
        if prediction not in ("epsilon", "v_prediction"):
            raise ConfigError(f"inpaint.model: scheduler prediction_type={prediction!r}; expected epsilon "
                              "or v_prediction")
        self.images: EncodedImages | None = None

    # -- data --------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_images(self, pool: Sequence[PoolImage], mask_mode: str) -> EncodedImages:
        """Read, resize and VAE-encode the pool (plain and flipped) once.

        Unreadable images and empty masks are recorded as skips; no usable image is an error.
        """
        from raydbb.data.images import read_image, read_mask
        from raydbb.models.transforms import mask_to_model, to_model_input

        pixels, masks, used, skipped = [], [], [], []
        for item in pool:
            if item.skip:
                skipped.append({"path": item.path, "reason": item.skip})
                continue
            try:
                image = read_image(item.path)
            except DataError as err:
                skipped.append({"path": item.path, "reason": f"image_read: {err}"})
                continue
            if mask_mode == "object":
                try:
                    mask = mask_to_model(read_mask(item.mask), self.resolution) >= 0.5
                except DataError as err:
                    skipped.append({"path": item.path, "reason": f"mask_read: {err}"})
                    continue
                if not mask.any():
                    skipped.append({"path": item.path, "reason": "empty_mask"})
                    continue
            else:
                mask = torch.ones(self.resolution, self.resolution, dtype=torch.bool)
            pixels.append(to_model_input([image], self.resolution)[0])
            masks.append(mask)
            used.append(item)
        if not used:
            raise DataError(f"class {self.class_name!r}: none of the {len(pool)} token-pool images is usable "
                            f"(first: {skipped[0]['reason']})")
        image = torch.stack(pixels).to(self.device) * 2.0 - 1.0  # (N,3,R,R) in [-1, 1]
        mask = torch.stack(masks).to(self.device, torch.float32)[:, None]  # (N,1,R,R)
        views = [(image, mask), (image.flip(-1), mask.flip(-1))]
        lat, msk, masked = zip(*(self._encode_view(i, m) for i, m in views), strict=True)
        self.images = EncodedImages(torch.stack(lat), torch.stack(msk), torch.stack(masked), used, skipped)
        return self.images

    def _encode_view(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # As StableDiffusionInpaintPipeline prepares its inputs: masked pixels set to 0 (mid-grey),
        # mask resized to the latent grid with nearest-neighbour interpolation.
        masked_image = image * (mask < 0.5)
        side = self.resolution // self.model.vae_scale_factor
        latent_mask = F.interpolate(mask, size=(side, side))
        return self._vae_encode(image), latent_mask, self._vae_encode(masked_image)

    def _vae_encode(self, image: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        vae = self.model.vae
        # The posterior mode, not a sample: cached latents stay deterministic.
        out = [vae.encode(image[i:i + chunk].to(self.model.weight_dtype)).latent_dist.mode()
               for i in range(0, len(image), chunk)]
        return torch.cat(out).float() * vae.config.scaling_factor

    def micro_batch(self, index: int) -> MicroBatch:
        """The ``index``-th micro-batch of the run, a pure function of (seed, class, index).

        Images are drawn in epoch-wise random permutations, so every image is seen once per
        epoch; resuming at any step replays exactly the same stream.
        """
        if self.images is None:
            raise RaydbbError("encode_images() must run before training")
        n = self.images.latents.shape[1]
        b = self.cfg.batch_size
        positions = range(index * b, (index + 1) * b)
        perms: dict[int, np.ndarray] = {}
        picks = []
        for pos in positions:
            epoch = pos // n
            if epoch not in perms:
                perms[epoch] = self._rng("epoch", epoch).permutation(n)
            picks.append(int(perms[epoch][pos % n]))
        gen = torch.Generator().manual_seed(int(self._rng("batch", index).integers(2**63 - 1)))
        flip = (torch.rand(b, generator=gen) < 0.5) if self.cfg.flip else torch.zeros(b, dtype=torch.bool)
        template = torch.randint(len(self.cfg.templates), (b,), generator=gen)
        timesteps = torch.randint(self.model.noise_scheduler.config.num_train_timesteps, (b,), generator=gen)
        noise = torch.randn((b, *self.images.latents.shape[2:]), generator=gen)
        return MicroBatch(torch.tensor(picks), flip, template, noise, timesteps)

    def _rng(self, kind: str, index: int) -> np.random.Generator:
        stream = {"epoch": 0, "batch": 1}[kind]
        return np.random.default_rng([self.cfg.seed, _class_key(self.class_name), stream, index])

    # -- loss and steps ----------------------------------------------------------------------

    @contextmanager
    def spliced(self) -> Iterator[None]:
        """Within the block, the text encoder reads the token's embedding from :attr:`embedding`."""
        table = self.model.text_encoder.get_input_embeddings()

        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            hit = (args[0] == self.token_id)[..., None]
            return torch.where(hit, self.embedding.to(output.dtype), output)

        handle = table.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def loss(self, batch: MicroBatch) -> torch.Tensor:
        """Eq. 1 on one micro-batch: mean squared error of the UNet's noise (or v) prediction."""
        if self.images is None:
            raise RaydbbError("encode_images() must run before computing the loss")
        dev, wd = self.device, self.model.weight_dtype
        view = batch.flip.long().to(dev)
        idx = batch.index.to(dev)
        z0 = self.images.latents[view, idx]
        noise, t = batch.noise.to(dev), batch.timesteps.to(dev)
        sched = self.model.noise_scheduler
        zt = sched.add_noise(z0, noise, t)
        unet_in = torch.cat([zt, self.images.mask[view, idx], self.images.masked_latents[view, idx]], dim=1)
        with self.spliced():
            states = self.model.text_encoder(self.prompt_ids[batch.template.to(dev)])[0]
        with torch.autocast(dev.type, dtype=wd, enabled=wd != torch.float32):
            pred = self.model.unet(unet_in.to(wd), t, encoder_hidden_states=states.to(wd)).sample
        target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(z0, noise, t)
        return F.mse_loss(pred.float(), target.float())

    def step(self, batches: Sequence[MicroBatch]) -> float:
        """One optimiser step over ``batches`` (gradient accumulation); returns the mean loss."""
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for mb in batches:
            loss = self.loss(mb)
            self.scaler.scale(loss / len(batches)).backward()
            total += float(loss.detach())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return total / len(batches)

    def train_step(self, step: int) -> float:
        """Optimiser step number ``step`` (0-based) of the run, on its deterministic micro-batches."""
        a = self.cfg.grad_accum
        return self.step([self.micro_batch(step * a + j) for j in range(a)])

    def learned_embedding(self) -> torch.Tensor:
        """The trained row, (1, D) float32 on the CPU — the tensor ``learned_embeds`` stores."""
        return self.embedding.detach().float().cpu()[None].clone()

    # -- checkpoints -------------------------------------------------------------------------

    def save_checkpoint(self, folder: Path, step: int, losses: list[float], settings: dict[str, Any]) -> None:
        """Write ``checkpoint-<step>`` atomically (a temporary folder renamed into place)."""
        from safetensors.torch import save_file

        final = folder / f"{CHECKPOINT_PREFIX}{step}"
        tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{final.name}."))
        save_file({self.token: self.learned_embedding()}, str(tmp / EMBEDS_FILE))
        state = self.optimizer.state.get(self.embedding, {})
        moments = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(moments, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps(
            {"step": step, "losses": losses, "scaler": self.scaler.state_dict(), "settings": settings}))
        os.chmod(tmp, 0o755)
        os.replace(tmp, final)

    def load_checkpoint(self, path: Path) -> tuple[int, list[float]]:
        """Restore the embedding, optimiser and loss scaler from a checkpoint; returns (step, losses)."""
        from safetensors.torch import load_file

        row = load_file(str(path / EMBEDS_FILE))[self.token]
        with torch.no_grad():
            self.embedding.copy_(row[0].to(self.embedding.device))
        opt_state = load_file(str(path / "optimizer.safetensors"), device=str(self.device))
        if opt_state:
            full = self.optimizer.state_dict()
            full["state"] = {0: {k: (v.cpu() if k == "step" else v) for k, v in opt_state.items()}}
            self.optimizer.load_state_dict(full)
        state = json.loads((path / "state.json").read_text())
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        return int(state["step"]), [float(x) for x in state["losses"]]


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def invert_class(job: ClassJob, report: Callable[[str], None] = print) -> dict[str, Any]:
    """Learn the token of one class, resuming from its last checkpoint; returns a summary.

    A class whose ``token.json`` says it finished (with the same settings) is skipped.
    """
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f".{CHECKPOINT_PREFIX}*"):  # half-written checkpoints of a killed run
        shutil.rmtree(stale)
    status, _ = _resume_state(job)
    if status == "finished":
        return {"class_name": job.class_name, "token": job.token, "status": "skipped", "dir": str(out)}
    cfg, settings = job.cfg, job.settings()
    start_time = time.time()
    torch.manual_seed(cfg.seed)
    model = load_inpaint_model(job.model, job.device, cfg.mixed_precision)
    trainer = TokenTrainer(model, job.token, job.initializer, job.class_name, cfg, job.device)
    encoded = trainer.encode_images(job.images, cfg.mask_mode)
    start, losses = 0, []
    ckpts = _checkpoints(out)
    if ckpts:
        start, losses = trainer.load_checkpoint(ckpts[-1][1])
        report(f"invert {job.class_name}: resuming at step {start}/{cfg.steps} from {ckpts[-1][1].name}")
    every = max(1, cfg.steps // 10)
    for step in range(start, cfg.steps):
        losses.append(trainer.train_step(step))
        done = step + 1
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            trainer.save_checkpoint(out, done, losses, settings)
        if done % every == 0 or done == cfg.steps:
            recent = losses[-every:]
            report(f"invert {job.class_name}: step {done}/{cfg.steps} loss {sum(recent) / len(recent):.4f}")
    from safetensors.torch import save_file

    tmp = out / f".{EMBEDS_FILE}.tmp"
    save_file({job.token: trainer.learned_embedding()}, str(tmp))
    os.replace(tmp, out / EMBEDS_FILE)
    meta = {
        "class_name": job.class_name, "token": job.token, "initializer": job.initializer,
        "model": job.model, "images": [asdict(i) for i in encoded.used], "skipped": encoded.skipped,
        "loss": losses, "steps": cfg.steps, "seconds": round(time.time() - start_time, 2),
        "finished": True, "settings": settings,
    }
    _write_json_atomic(out / TOKEN_FILE, meta)
    return {"class_name": job.class_name, "token": job.token, "status": "trained", "dir": str(out),
            "final_loss": losses[-1] if losses else float("nan"), "skipped": len(encoded.skipped)}


# ----------------------------------------------------------------------------------------------
# Driver: one Ray task per class


ENGINES = ("ray", "loop")


def run_inversion(
    cfg: RaydbbConfig,
    class_names: Sequence[str] | None = None,
    pools: dict[str, Sequence[str | PoolImage]] | None = None,
    engine: str = "ray",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Invert every class of ``cfg`` (or ``cfg.invert.classes``); returns one summary per class.

    ``class_names`` defaults to the dataset's (``cfg.data``); ``pools`` (class name -> image
    paths or :class:`PoolImage`, used as given) defaults to :func:`prepare_pools`. Everything is
    validated before any training; finished classes are skipped. ``engine="ray"`` runs one Ray
    task per class (``invert.num_cpus`` / ``invert.num_gpus`` each), ``"loop"`` runs them one
    after another in this process.
    """
    if engine not in ENGINES:
        raise RaydbbError(f"engine {engine!r}: expected one of {list(ENGINES)}")
    records = None
    if class_names is None or pools is None:
        from raydbb.data.registry import load_records

        records = load_records(cfg.data)
    names = list(class_names) if class_names is not None else list(records.class_names)
    plan_tokens(cfg, names)  # config errors first, before any scoring or masking
    if pools is None:
        pools = prepare_pools(cfg, records, engine, progress)
    jobs = plan_jobs(cfg, names, pools)
    results = [{"class_name": j.class_name, "token": j.token, "status": "skipped", "dir": j.out_dir}
               for j in jobs if j.status == "finished"]
    todo = [j for j in jobs if j.status != "finished"]
    if engine == "loop":
        results += [invert_class(job) for job in todo]
    elif todo:
        results += _run_tasks(cfg, todo, progress)
    order = {n: i for i, n in enumerate(names)}
    return sorted(results, key=lambda r: order[r["class_name"]])


def _run_tasks(cfg: RaydbbConfig, todo: list[ClassJob], progress: bool) -> list[dict[str, Any]]:
    import ray
    from tqdm import tqdm

    from raydbb.ray_utils import init_ray

    init_ray(cfg.ray)
    inv = cfg.invert
    num_gpus = inv.num_gpus if inv.num_gpus is not None else (1.0 if cfg.device == "cuda" else 0.0)
    # One GPU per class on GPU machines; on CPU num_gpus stays unset (fractional CPUs instead).
    resources = {"num_cpus": inv.num_cpus, **({"num_gpus": num_gpus} if num_gpus else {})}
    task = ray.remote(invert_class).options(**resources)
    pending = {task.remote(job): job for job in todo}
    results = []
    with tqdm(total=len(todo), desc="invert", unit="class", disable=not progress) as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                results.append(ray.get(ready[0]))
            except ray.exceptions.RayTaskError as err:
                for ref in pending:
                    ray.cancel(ref)
                if isinstance(err.cause, RaydbbError):
                    raise type(err.cause)(f"class {job.class_name!r}: {err.cause}") from err
                raise
            bar.update(1)
    return results
