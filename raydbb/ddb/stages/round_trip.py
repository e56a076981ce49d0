"""Round-trip stage: an original training image passed through the inpainter's VAE inside its mask.

Every repaint carries the inpainting model's decoder inside its mask: the painted region is decoded
from latents, the rest is the source's own pixels (``inpaint.paste_back``). Where that patch looks
unlike the untouched image around it (here: smoother and greener), full fine-tuning can learn it as
a cue that decides *which* rule to use — the bird inside a patch, the background elsewhere — and the
sharp minority-group birds of the test split then fall to the background rule. Giving every original
the same patch (encode to the posterior mean, decode, paste back inside the mask dilated as the
inpainter's) leaves the patch no information about whether an image is a repaint, or about its
label. ``retrain.round_trip_originals`` turns this on (docs/method.md). With ``inpaint.match_noise``
the patch gets its noise back as a repaint's does, drawn from a generator seeded by the sample id.

Columns read: ``sample_id``, ``path``, ``mask`` (the dataset's object mask file). Columns added:
``round_trip_path`` (the PNG written under ``out_dir``, named from the sanitised ``sample_id``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from raydbb.config import StageResources
from raydbb.data.images import read_image, read_mask, write_png_atomic
from raydbb.ddb.grain import match_noise
from raydbb.ddb.stages.inpaint import resize_bilinear
from raydbb.ddb.stages.mask import dilate_mask
from raydbb.engine.stage import Batch, Stage, num_rows
from raydbb.errors import DataError
from raydbb.ids import safe_join, sanitize_id


class RoundTripStage(Stage):
    """Writes each row's image with its (dilated) mask region replaced by the VAE's reconstruction."""

    name = "round_trip"

    def __init__(self, model: str, dilate: int, out_dir: str | Path, resolution: int | None = None,
                 match_noise: bool = False, resources: StageResources | None = None) -> None:
        super().__init__(resources)
        self.model, self.dilate, self.out_dir = model, int(dilate), str(out_dir)
        self.resolution, self.match_noise = resolution, bool(match_noise)
        self.vae = None

    def setup(self) -> None:
        """Load the inpainting model's VAE once per actor; the working side as the inpaint stage's."""
        if self.vae is not None:
            return
        from raydbb.models.inpaint_pipeline import load_inpaint_pipeline

        pipe = load_inpaint_pipeline(self.model)
        if self.resolution is None:
            self.resolution = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
        self.vae = pipe.vae.to(self.device).eval()

    @torch.no_grad()
    def reconstruct(self, image: np.ndarray) -> np.ndarray:
        """The VAE's encode (posterior mean) / decode of one uint8 HxWx3 image at the inpainter's
        working side, resized back to the image's size as a repaint is; uint8 again."""
        h, w = image.shape[:2]
        x = torch.tensor(image).permute(2, 0, 1)[None].float() / 255.0
        x = resize_bilinear(x, (self.resolution,) * 2).mul(2.0).sub(1.0).to(self.device)
        y = self.vae.decode(self.vae.encode(x).latent_dist.mean).sample.clamp(-1.0, 1.0).add(1.0).div(2.0)
        back = resize_bilinear(y.float().cpu(), (h, w))[0].permute(1, 2, 0).clamp(0, 1)
        return back.mul(255).round().to(torch.uint8).numpy()

    def __call__(self, batch: Batch) -> Batch:
        self.setup()
        paths = np.empty(num_rows(batch), dtype=object)
        for i, (sample_id, path, mask_path) in enumerate(zip(batch["sample_id"], batch["path"], batch["mask"],
                                                             strict=True)):
            out = safe_join(self.out_dir, f"{sanitize_id(str(sample_id))}.png")
            if not out.is_file():  # written atomically: a file that exists is complete
                image = read_image(str(path))
                mask = read_mask(str(mask_path)) != 0
                if mask.shape != image.shape[:2]:
                    raise DataError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image "
                                    f"{path} is {image.shape[1]}x{image.shape[0]}; expected the same size")
                region = dilate_mask(mask, self.dilate).astype(bool)
                patched = np.where(region[..., None], self.reconstruct(image), image)
                if self.match_noise:
                    rng = np.random.default_rng(list(str(sample_id).encode()))
                    patched = match_noise(patched, image, region, rng)
                write_png_atomic(out, patched)
            paths[i] = str(out)
        return {**batch, "round_trip_path": paths}
