"""Mask stage (DDB step 4; docs/method.md): a binary mask of the causal part of every source image.

Three sources (``mask.source``):

- ``text`` — the LangSAM recipe from transformers models: GroundingDINO finds boxes for the
  *source* class's prompt (the object that will be repainted), the best box that passes both
  thresholds goes to SAM as a box prompt, SAM's mask is the result;
- ``dataset`` — the mask file shipped with the data (``dataset_mask_path``);
- ``attribution`` — the ERM classifier's gradient × input map for the source class, smoothed and
  thresholded at the ``attribution_quantile`` quantile (so about ``1 - q`` of the image is masked).

Then optional dilation by a disk of radius ``dilate`` pixels. A mask that is empty, smaller than
``min_area`` or larger than ``max_area`` (as a share of the image) gets ``prune_reason="no_mask"``;
its mask is still emitted, so the manifest and report can show what was rejected. Rows already
decided upstream (``error:image_read``) pass through with an empty placeholder mask and
``mask_source=""``.

Columns added: ``mask`` (uint8 HxW in {0,1}, at the source image's resolution), ``mask_source``,
``mask_model`` (model ids / checkpoint folder, ``""`` for dataset masks); ``prune_reason`` and
``error`` are updated.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raydbb.config import MaskConfig
from raydbb.data.images import read_mask
from raydbb.engine.stage import Batch, Stage, empty_mask, num_rows, object_column, pending_rows
from raydbb.errors import ConfigError, DataError

NO_MASK = "no_mask"

#: Per row: (mask or None, prune reason or "", message or "").
Found = tuple[np.ndarray | None, str, str]


def dilate_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilate a binary HxW mask by a disk of ``radius`` pixels (Euclidean: dx² + dy² <= r²)."""
    if radius <= 0 or not mask.any():
        return mask.astype(np.uint8)
    r = int(radius)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = torch.from_numpy((xx * xx + yy * yy <= r * r).astype(np.float32))[None, None]
    m = torch.from_numpy(np.ascontiguousarray(mask != 0, dtype=np.float32))[None, None]
    grown = F.conv2d(m, disk, padding=r)[0, 0]
    return (grown > 0.5).numpy().astype(np.uint8)


def degenerate_reason(mask: np.ndarray, min_area: float, max_area: float) -> str:
    """``""`` for a usable mask, else a short reason (empty / too small / too large)."""
    share = float(np.count_nonzero(mask)) / max(mask.size, 1)
    if share == 0.0:
        return "empty mask"
    if share < min_area:
        return f"mask area {share:.4f} < mask.min_area={min_area}"
    if share > max_area:
        return f"mask area {share:.4f} > mask.max_area={max_area}"
    return ""


def _fit_to(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A dataset mask at the image's size (nearest-neighbour when the files disagree in size)."""
    if mask.shape == shape:
        return mask
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    return F.interpolate(m, size=shape, mode="nearest")[0, 0].numpy() > 0.5


def _is_local(model: str) -> bool:
    return Path(model).is_dir()


class MaskStage(Stage):
    """Adds ``mask``, ``mask_source``, ``mask_model`` to source rows (see the module docstring).

    Args:
        cfg: the ``mask`` config section (source, models, thresholds, dilation, area limits, resources).
        class_names: names of labels 0..C-1; the ``text`` source prompts the detector with the
            source class's name (or ``cfg.text_prompts[name]``).
        checkpoint_dir: ERM classifier folder (``raydbb.models.checkpoint``); required by
            ``attribution``.

    Models run on :attr:`device` (CUDA when ``cfg.resources.num_gpus > 0``).
    """

    name = "mask"

    def __init__(self, cfg: MaskConfig, class_names: Sequence[str],
                 checkpoint_dir: str | Path | None = None) -> None:
        super().__init__(cfg.resources)
        self.cfg = cfg
        self.class_names = list(class_names)
        self.checkpoint_dir = str(checkpoint_dir) if checkpoint_dir is not None else None
        if cfg.source == "attribution" and self.checkpoint_dir is None:
            raise ConfigError("mask.source=attribution needs the ERM checkpoint folder; none was given")
        unknown = sorted(set(cfg.text_prompts or {}) - set(self.class_names))
        if unknown:
            raise ConfigError(f"mask.text_prompts: unknown class names {unknown}; expected some of "
                              f"{self.class_names}")
        self._models: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------
    # Model loading

    def setup(self) -> None:
        """Load the detector + segmenter (``text``) or the classifier (``attribution``) once."""
        if self._models:
            return
        if self.cfg.source == "text":
            from transformers import (
                AutoModelForZeroShotObjectDetection,
                AutoProcessor,
                SamModel,
                SamProcessor,
            )

            det, seg = self.cfg.detector, self.cfg.segmenter
            self._models = {
                "det_proc": AutoProcessor.from_pretrained(det, local_files_only=_is_local(det)),
                "det": AutoModelForZeroShotObjectDetection.from_pretrained(
                    det, local_files_only=_is_local(det), use_safetensors=True).to(self.device).eval(),
                "sam_proc": SamProcessor.from_pretrained(seg, local_files_only=_is_local(seg)),
                "sam": SamModel.from_pretrained(
                    seg, local_files_only=_is_local(seg), use_safetensors=True).to(self.device).eval(),
            }
        elif self.cfg.source == "attribution":
            from raydbb.models.checkpoint import load_classifier

            model, meta = load_classifier(self.checkpoint_dir, device=self.device)
            self._models = {"classifier": model, "image_size": int(meta["image_size"])}
        else:
            self._models = {"dataset": True}

    @property
    def model_id(self) -> str:
        """What made the masks, for the manifest's ``mask_model`` column."""
        if self.cfg.source == "text":
            return f"{self.cfg.detector}+{self.cfg.segmenter}"
        if self.cfg.source == "attribution":
            return str(self.checkpoint_dir)
        return ""

    # ------------------------------------------------------------------------------------------
    # Sources: each returns one HxW bool mask (or None + a reason) per given row

    def detector_prompt(self, label: int) -> str:
        """GroundingDINO's text: lower case, ending with a period (its phrase separator)."""
        name = self.class_names[label]
        text = (self.cfg.text_prompts or {}).get(name, name.replace("_", " "))
        return text.strip().lower().rstrip(".") + "."

    def _dataset_masks(self, batch: Batch, rows: np.ndarray) -> list[Found]:
        out = []
        for i in rows:
            path = str(batch["dataset_mask_path"][i]) if "dataset_mask_path" in batch else ""
            shape = np.asarray(batch["source_image"][i]).shape[:2]
            if not path:
                out.append((None, NO_MASK, "mask.source=dataset but the row has no dataset_mask_path"))
                continue
            try:
                out.append((_fit_to(read_mask(path), shape), "", ""))
            except DataError as err:
                out.append((None, "error:mask_read", str(err)))
        return out

    @torch.no_grad()
    def _text_masks(self, images: list[np.ndarray], labels: list[int]) -> list[Found]:
        det_proc, det = self._models["det_proc"], self._models["det"]
        sam_proc, sam = self._models["sam_proc"], self._models["sam"]
        prompts = [self.detector_prompt(y) for y in labels]
        inputs = det_proc(images=images, text=prompts, padding=True, return_tensors="pt").to(self.device)
        outputs = det(**inputs)
        results = det_proc.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=self.cfg.box_threshold,
            text_threshold=self.cfg.text_threshold, target_sizes=[im.shape[:2] for im in images])
        specials = set(det_proc.tokenizer.all_special_tokens)
        boxes: list[list[float] | None] = []
        for res in results:
            # A box counts only if some prompt word passed text_threshold (GroundingDINO's phrase
            # grounding); the phrase decoder also returns special tokens, which are not words.
            grounded = [bool(_strip_specials(label, specials)) for label in res["text_labels"]]
            scores = res["scores"].detach().cpu().numpy()
            candidates = [k for k, ok in enumerate(grounded) if ok]
            best = max(candidates, key=lambda k: scores[k]) if candidates else None
            boxes.append(None if best is None else res["boxes"][best].detach().cpu().tolist())

        out: list[Found] = [
            (None, NO_MASK, f"no box for {prompts[k]!r} above mask.box_threshold={self.cfg.box_threshold} "
                            f"and mask.text_threshold={self.cfg.text_threshold}") for k in range(len(images))]
        found = [k for k, b in enumerate(boxes) if b is not None]
        if found:
            sam_in = sam_proc(images=[images[k] for k in found], input_boxes=[[boxes[k]] for k in found],
                              return_tensors="pt").to(self.device)
            pred = sam(pixel_values=sam_in["pixel_values"], input_boxes=sam_in["input_boxes"],
                       multimask_output=False).pred_masks
            masks = sam_proc.image_processor.post_process_masks(
                pred.cpu(), sam_in["original_sizes"].cpu(), sam_in["reshaped_input_sizes"].cpu())
            for k, m in zip(found, masks, strict=True):
                out[k] = (m[0, 0].numpy().astype(bool), "", "")
        return out

    def _attribution_masks(self, images: list[np.ndarray], labels: list[int]) -> list[Found]:
        from raydbb.models.transforms import to_model_input

        model, size = self._models["classifier"], self._models["image_size"]
        x = to_model_input(images, size).to(self.device).requires_grad_(True)
        logits = model(x)
        target = torch.as_tensor(labels, device=self.device)[:, None]
        (grad,) = torch.autograd.grad(logits.gather(1, target).sum(), x)
        amap = (grad * x).sum(1, keepdim=True).abs().detach()  # gradient x input, per pixel
        k = max(3, (size // 16) | 1)  # odd smoothing window ~1/16 of the side: blobs, not speckle
        amap = F.avg_pool2d(amap, k, stride=1, padding=k // 2, count_include_pad=False).cpu()
        out = []
        for j, image in enumerate(images):
            h, w = image.shape[:2]
            full = F.interpolate(amap[j:j + 1], size=(h, w), mode="bilinear", align_corners=False)
            full = full[0, 0].numpy()
            out.append((full > np.quantile(full, self.cfg.attribution_quantile), "", ""))
        return out

    # ------------------------------------------------------------------------------------------

    def __call__(self, batch: Batch) -> Batch:
        self.setup()
        n = num_rows(batch)
        reasons = np.array(batch["prune_reason"], dtype=object) if "prune_reason" in batch else np.full(
            n, "", dtype=object)
        errors = np.array(batch["error"], dtype=object) if "error" in batch else np.full(n, "", dtype=object)
        masks: list[np.ndarray] = [empty_mask()] * n
        sources = np.full(n, "", dtype=object)
        models = np.full(n, "", dtype=object)
        rows = np.flatnonzero(pending_rows(batch))

        if self.cfg.source == "dataset":
            found = self._dataset_masks(batch, rows)
        else:
            fn = self._text_masks if self.cfg.source == "text" else self._attribution_masks
            found = []
            step = self.model_batch_size
            for start in range(0, len(rows), step):
                chunk = rows[start:start + step]
                found += fn([np.asarray(batch["source_image"][i]) for i in chunk],
                            [int(batch["source_label"][i]) for i in chunk])

        for i, (mask, reason, message) in zip(rows, found, strict=True):
            sources[i], models[i] = self.cfg.source, self.model_id
            if mask is None:
                reasons[i], errors[i] = reason, message
                if reason == NO_MASK:
                    masks[i] = np.zeros(np.asarray(batch["source_image"][i]).shape[:2], dtype=np.uint8)
                continue
            grown = dilate_mask(mask, self.cfg.dilate)
            masks[i] = grown
            why = degenerate_reason(grown, self.cfg.min_area, self.cfg.max_area)
            if why:
                reasons[i], errors[i] = NO_MASK, why
        return {**batch, "mask": object_column(masks), "mask_source": sources, "mask_model": models,
                "prune_reason": reasons, "error": errors}


def _strip_specials(label: str, specials: set[str]) -> str:
    words = [w for w in label.split() if w not in specials]
    return " ".join(words).strip(string.punctuation + " ")
