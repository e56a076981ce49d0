"""Inpaint stage (paper Eq. 2; docs/method.md, step 5): repaint the masked causal part as the target class y'.

One generation row = (source image, its mask, target class y' != y, seed). The prompt is
``inpaint.prompt_template`` filled with the target class's learned token (from ``raydbb invert``,
when ``inpaint.tokens_dir`` is set) and its class name; without a token the ``{token}`` slot is
left empty and whitespace collapsed ("a photo of a {token} {class_name}" -> "a photo of a waterbird").

Reproducibility: every row gets its own ``torch.Generator`` seeded from the row's ``seed`` (CPU
generators, so the initial noise is the same on any hardware), and diffusers draws each image's
noise from its own generator. Outputs therefore do not depend on how rows are batched, split
across actors or ordered.

Resolution: the source image and mask are resized to a square working resolution
(``inpaint.resolution`` or the model's native ``unet.sample_size * vae_scale_factor``), and the
result is resized back (bilinear, antialiased) to the source's height and width. With
``inpaint.paste_back`` every pixel outside the mask is then copied from the source, so unmasked
pixels are exactly the source's (the VAE round trip and the resizes would otherwise blur them).
With ``inpaint.match_noise`` the painted region then gets the source's pixel noise back
(:mod:`raydbb.ddb.grain`), drawn from the row's seed.

Columns added: ``image`` (uint8 HxWx3 at source resolution), ``prompt``, ``token``,
``inpaint_model``, ``t_inpaint`` (model seconds per row). Rows already decided upstream pass
through with an empty placeholder image (:func:`raydbb.engine.stage.empty_image`), empty
strings and ``t_inpaint = 0``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raydbb.config import InpaintConfig
from raydbb.ddb.grain import match_noise
from raydbb.engine.stage import Batch, Stage, empty_image, num_rows, object_column, pending_rows
from raydbb.errors import ConfigError, DataError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def fill_prompt(template: str, token: str, class_name: str) -> str:
    """Fill ``{token}`` and ``{class_name}``; runs of whitespace (an empty token) collapse to one space."""
    return re.sub(r"\s+", " ", template.format(token=token, class_name=class_name)).strip()


def scheduler_class(name: str) -> type:
    """The diffusers scheduler class called ``name`` (one-line :class:`ConfigError` otherwise)."""
    import diffusers
    from diffusers import SchedulerMixin

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        known = sorted(n for n in dir(diffusers) if n.endswith("Scheduler"))
        raise ConfigError(f"inpaint.scheduler={name!r}: not a diffusers scheduler; expected one of "
                          f"{', '.join(known)}")
    return cls


def resize_bilinear(array: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N,C,H,W) float -> (N,C,*size), bilinear + antialias (the same resize both ways)."""
    if tuple(array.shape[-2:]) == tuple(size):
        return array
    return F.interpolate(array, size=size, mode="bilinear", antialias=True, align_corners=False)


class InpaintStage(Stage):
    """Adds ``image, prompt, token, inpaint_model, t_inpaint`` to generation rows.

    Args:
        cfg: the ``inpaint`` config section (model, tokens, prompt, sampler settings, resources).
        class_names: names of labels 0..C-1 (the prompt uses the *target* class's name).

    The pipeline runs on :attr:`device` (CUDA when ``cfg.resources.num_gpus > 0``).
    """

    name = "inpaint"

    def __init__(self, cfg: InpaintConfig, class_names: Sequence[str]) -> None:
        super().__init__(cfg.resources)
        self.cfg = cfg
        self.class_names = list(class_names)
        if cfg.scheduler is not None:
            scheduler_class(cfg.scheduler)  # fail on the driver, before any actor starts
        try:
            fill_prompt(cfg.prompt_template, "", "")
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(f"inpaint.prompt_template={cfg.prompt_template!r}: only {{token}} and "
                              f"{{class_name}} may appear ({err})") from None
        self.tokens: dict[int, str] = {}
        self._token_files: dict[int, Path] = {}
        if cfg.tokens_dir is not None:
            from raydbb.ddb.tokens import load_learned_token

            for label, name in enumerate(self.class_names):
                token, path = load_learned_token(cfg.tokens_dir, name)
                self.tokens[label], self._token_files[label] = token, path
        self.pipe: Any = None

    def setup(self) -> None:
        """Load the pipeline (and the learned tokens) once per actor."""
        if self.pipe is not None:
            return
        from raydbb.models.inpaint_pipeline import load_inpaint_pipeline, transformers_errors_only

        pipe = load_inpaint_pipeline(self.cfg.model, _DTYPES[self.cfg.dtype])
        if self.cfg.scheduler is not None:
            pipe.scheduler = scheduler_class(self.cfg.scheduler).from_config(pipe.scheduler.config)
        with transformers_errors_only():
            for label, path in self._token_files.items():
                pipe.load_textual_inversion(str(path), token=self.tokens[label])
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.device)

    @property
    def resolution(self) -> int:
        """Working side in pixels: ``inpaint.resolution`` or the model's native size."""
        if self.cfg.resolution is not None:
            return int(self.cfg.resolution)
        return int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)

    def prompt_for(self, target_label: int) -> tuple[str, str]:
        """``(prompt, token)`` for a repaint into class ``target_label``."""
        token = self.tokens.get(target_label, "")
        return fill_prompt(self.cfg.prompt_template, token, self.class_names[target_label]), token

    def _generate(self, images: list[np.ndarray], masks: list[np.ndarray], prompts: list[str],
                  seeds: list[int]) -> list[np.ndarray]:
        side = self.resolution
        for im, m in zip(images, masks, strict=True):
            if m.shape != im.shape[:2]:
                raise DataError(f"mask of shape {m.shape} for an image of shape {im.shape}: expected the "
                                "mask stage's mask at the source resolution")
        # torch.tensor copies: Ray hands batches over as read-only views of the object store.
        image_t = torch.cat([resize_bilinear(torch.tensor(im).permute(2, 0, 1)[None].float() / 255.0,
                                             (side, side)) for im in images])
        # Nearest keeps the working mask binary; any covered pixel is repainted.
        mask_t = torch.cat([F.interpolate(torch.from_numpy(np.ascontiguousarray(m != 0)).float()[None, None],
                                          size=(side, side), mode="nearest") for m in masks])
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        negative = [self.cfg.negative_prompt] * len(prompts) if self.cfg.negative_prompt else None
        out = self.pipe(
            prompt=prompts, image=image_t.clamp(0, 1), mask_image=mask_t, height=side, width=side,
            strength=self.cfg.strength, num_inference_steps=self.cfg.steps,
            guidance_scale=self.cfg.guidance_scale, negative_prompt=negative, generator=generators,
            output_type="pt",
        ).images.float().cpu()  # (N,3,side,side) in [0, 1]
        results = []
        for j, (src, m) in enumerate(zip(images, masks, strict=True)):
            h, w = src.shape[:2]
            back = resize_bilinear(out[j:j + 1], (h, w))[0].permute(1, 2, 0).clamp(0, 1).mul(255).round()
            image = back.to(torch.uint8).numpy()
            painted = m != 0
            if self.cfg.paste_back:
                image = np.where(painted[..., None], image, src)
            if self.cfg.match_noise:
                image = match_noise(image, src, painted, np.random.default_rng(int(seeds[j])))
            results.append(np.ascontiguousarray(image, dtype=np.uint8))
        return results

    def __call__(self, batch: Batch) -> Batch:
        self.setup()
        n = num_rows(batch)
        images: list[np.ndarray] = [empty_image()] * n
        prompts = np.full(n, "", dtype=object)
        tokens = np.full(n, "", dtype=object)
        models = np.full(n, "", dtype=object)
        times = np.zeros(n, dtype=np.float64)
        rows = np.flatnonzero(pending_rows(batch))
        step = self.model_batch_size
        for start in range(0, len(rows), step):
            chunk = rows[start:start + step]
            for i in chunk:
                prompts[i], tokens[i] = self.prompt_for(int(batch["target_label"][i]))
                models[i] = self.cfg.model
            t0 = time.perf_counter()
            made = self._generate([np.asarray(batch["source_image"][i]) for i in chunk],
                                  [np.asarray(batch["mask"][i]) for i in chunk],
                                  [str(prompts[i]) for i in chunk], [int(batch["seed"][i]) for i in chunk])
            elapsed = (time.perf_counter() - t0) / len(chunk)
            for i, image in zip(chunk, made, strict=True):
                images[i], times[i] = image, elapsed
        return {**batch, "image": object_column(images), "prompt": prompts, "token": tokens,
                "inpaint_model": models, "t_inpaint": times}
