"""Typed run configuration: YAML file + ``section.field=value`` overrides, validated before any work.

One config describes one run folder (``out``). Every section has defaults that fit the embedded
synthetic benchmark; the YAML files in ``jobs/configs/`` set the values for real datasets.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from raydbb.errors import ConfigError, RaydbbError

DATASETS = ("waterbirds", "celeba", "metashift", "csv", "synthetic")


def _not_nan(value: float) -> float:
    if value != value:
        raise ValueError("nan is not a threshold; use -.inf to switch the rule off")
    return value


Threshold = Annotated[float, Field(allow_inf_nan=True), AfterValidator(_not_nan)]
"""A threshold: any number, ±inf included (-inf keeps everything), never nan."""

def _packaged(name: str) -> str:
    from raydbb.assets import resolve_packaged

    try:
        return resolve_packaged(name)
    except RaydbbError as err:
        raise ValueError(str(err)) from None


def _portable(path: str) -> str:
    from raydbb.assets import packaged_name

    return packaged_name(path)


PackagedOrPath = Annotated[str, AfterValidator(_packaged), PlainSerializer(_portable, when_used="json")]
"""A model name: hub id, local path, or ``package:<name>`` (a model shipped in raydbb/assets,
resolved to its installed folder when the config is loaded, written back as ``package:<name>`` in
JSON/YAML dumps so that saved configs and fingerprints do not depend on the install location)."""

RESOURCE = {"resource": True}
"""``json_schema_extra`` of a field that only decides how fast or where a step runs, not what it computes."""


def added(neutral: Any) -> dict[str, Any]:
    """``json_schema_extra`` of a field added after run folders existed: ``neutral`` is its value that
    computes what raydbb computed before the field. Fingerprints leave the field out while it holds
    that value, so finished steps of older run folders stay done."""
    return {"added": neutral}


class Section(BaseModel):
    """Base for config sections: unknown fields are errors, not silently ignored."""

    # No inf/nan in numeric fields (train.lr=.inf would train nothing, silently): the IG threshold,
    # where ±inf switches the rule off, is the one exception (Threshold).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    resource_section: ClassVar[bool] = False
    """True for sections made only of resource settings (every field a :data:`RESOURCE`)."""


class StageResources(Section):
    """How a generation stage maps onto Ray: actor pool size, per-actor resources, batch sizes."""

    resource_section: ClassVar[bool] = True

    actors: int = Field(1, ge=1, description="actors in the pool (fixed size)")
    num_cpus: float = Field(1.0, ge=0, description="logical CPUs per actor")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (fractional allowed); 0 on CPU")
    batch_size: int = Field(8, ge=1, description="rows per call of the stage")
    model_batch_size: int = Field(8, ge=1, description="images per forward pass inside a call")
    node_labels: dict[str, str] = Field(
        default_factory=dict, description="run only on Ray nodes carrying these labels (e.g. "
        "{raydbb-stages: inpaint}, as the node types of cluster/ray-cluster.yaml declare); {} = any node")


class SyntheticConfig(Section):
    """The embedded synthetic benchmark that the pipeline draws into ``data.root`` when it is missing.

    ``None`` keeps the writer's default (:func:`raydbb.data.synthetic.write_synthetic`).
    """

    seed: int | None = Field(None, description="drawing seed; None = the run seed")
    train_correlation: float | None = Field(None, gt=0, lt=1,
                                            description="P(background matches class) in train")
    n_train: int | None = Field(None, ge=1, description="number of train images")
    n_val: int | None = Field(None, ge=1, description="number of validation images")
    n_test: int | None = Field(None, ge=1, description="number of test images")
    size: int | None = Field(None, ge=32, description="image side in pixels")


class DataConfig(Section):
    name: Literal["waterbirds", "celeba", "metashift", "csv", "synthetic"] = "synthetic"
    root: str = "runs/demo/data"
    csv_file: str = Field("metadata.csv", description="csv/synthetic: the CSV inside root")
    class_names: list[str] | None = Field(None, description="csv: names of labels 0..C-1")
    spurious_names: list[str] | None = Field(None, description="csv: names of spurious values")
    balanced_train: bool = Field(False, description="celeba: class-balanced train subsample")
    val_fraction: float = Field(0.15, gt=0, lt=1, description="metashift: share of test moved to val")
    split_seed: int = 0
    synthetic: SyntheticConfig = Field(
        SyntheticConfig(), description="synthetic: benchmark drawn into root when root has no metadata.csv")


class ClassifierConfig(Section):
    arch: Literal["small_cnn", "resnet18", "resnet50"] = "resnet50"
    pretrained: bool = Field(True, description="start from pretrained weights: ImageNet for resnets "
                             "(a local file), the shipped synthetic backbone for small_cnn")
    weights: PackagedOrPath | None = Field(
        None, description="pretrained weights file (.pth or .safetensors); package:<name> = a shipped one")
    image_size: int = Field(224, ge=16)
    width: int = Field(32, ge=4, description="small_cnn: channels of the first block")

    @model_validator(mode="after")
    def _weights_need_pretrained(self) -> ClassifierConfig:
        if self.weights and not self.pretrained:
            raise ValueError("classifier.weights is set but classifier.pretrained=false; drop one")
        return self


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    augment: bool = True
    num_workers: int = Field(1, ge=0, description="Ray Train workers; 0 = local mode, in the driver",
                             json_schema_extra=RESOURCE)
    cpus_per_worker: float = Field(1.0, gt=0, json_schema_extra=RESOURCE)
    use_gpu: bool = Field(False, json_schema_extra=RESOURCE)
    loader_workers: int = Field(0, ge=0, description="torch DataLoader processes per Ray worker",
                                json_schema_extra=RESOURCE)
    seed: int = 0
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="learning rate per epoch: lr throughout, or cosine decay from lr "
        "towards 0 over the epochs", json_schema_extra=added("constant"))
    ema_decay: float = Field(
        0.0, ge=0, lt=1, description="0 = off; else validate, select and save an exponential moving "
        "average of the weights (and BatchNorm statistics), updated after every optimizer step with "
        "this decay", json_schema_extra=added(0.0))
    bad_images: Literal["skip", "refuse"] = Field(
        "skip", description="images that cannot be decoded: train without them (listed in the "
        "checkpoint folder's skipped_images.csv) or refuse in one line")


class RayConfig(Section):
    resource_section: ClassVar[bool] = True
    address: str | None = Field(None, description="Ray cluster address; None = RAY_ADDRESS or local")
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs for a local ray.init")
    object_store_memory: int | None = Field(None, ge=75 * 1024 * 1024)


class SelectConfig(Section):
    fraction: float | None = Field(0.2, gt=0, le=1, description="lowest-loss share per class (α_y)")
    count: int | None = Field(None, ge=1, description="lowest-loss count per class (k_y); wins over fraction")
    per_class_fraction: dict[str, float] | None = Field(None, description="α_y by class name")
    token_pool_source: Literal["high_loss", "val_minority"] = "high_loss"
    token_pool_size: int = Field(30, ge=1)
    resources: StageResources = Field(
        StageResources(batch_size=64, model_batch_size=64),
        description="scoring stage (per-sample loss of the ERM model on every training image)",
    )

    @model_validator(mode="after")
    def _needs_fraction_or_count(self) -> SelectConfig:
        if self.fraction is None and self.count is None:
            raise ValueError("select: set fraction (α_y) or count (k_y)")
        for name, alpha in (self.per_class_fraction or {}).items():
            if not 0 < alpha <= 1:
                raise ValueError(f"select.per_class_fraction.{name}={alpha}: expected a share in (0, 1]")
        return self


class GenerateConfig(Section):
    """The generation run around the model stages: ERM checkpoint, I/O stages, manifest parts."""

    classifier: str | None = Field(None, description="ERM checkpoint folder; None = <out>/erm")
    io: StageResources = Field(
        StageResources(num_cpus=0.25, batch_size=16, model_batch_size=16),
        description="load/expand/write stages (plain Ray tasks; actors and model_batch_size unused)",
    )
    block_rows: int | None = Field(
        None, ge=1, description="source rows per Ray Data block; None = auto (small runs: many small "
        "blocks so stages overlap; large runs: up to 64 rows, bounding per-block scheduling overhead)")
    manifest_rows_per_part: int = Field(2000, ge=1, description="rows per manifest Parquet part",
                                        json_schema_extra=RESOURCE)
    flush_seconds: float = Field(60.0, gt=0, description="write a manifest part at least this often",
                                 json_schema_extra=RESOURCE)
    layout: Literal["pools", "fused"] = Field(
        "pools", description="pools: one actor pool per model stage (mask, inpaint, prune: each its "
        "own GPUs, batch sizes, pool size); fused: one pool whose actors each hold every model and run "
        "the whole chain (CPU nodes with few cores: no inter-process copies, every core works)")
    fused: StageResources = Field(
        StageResources(actors=2, num_cpus=1.0, batch_size=8, model_batch_size=8),
        description="layout=fused: the one pool (actors, CPUs/GPUs per actor, source rows per call; "
        "each stage inside still uses its own batch sizes)",
    )


class MaskConfig(Section):
    source: Literal["text", "dataset", "attribution"] = "dataset"
    detector: str = "IDEA-Research/grounding-dino-tiny"
    segmenter: str = "facebook/sam-vit-base"
    box_threshold: float = Field(0.3, ge=0, le=1)
    text_threshold: float = Field(0.25, ge=0, le=1)
    text_prompts: dict[str, str] | None = Field(
        None, description="text: class name -> detector prompt (default: the class name itself)")
    attribution_quantile: float = Field(0.8, gt=0, lt=1)
    dilate: int = Field(0, ge=0, description="dilation radius in pixels")
    min_area: float = Field(0.002, ge=0, lt=1, description="smaller mask share = degenerate")
    max_area: float = Field(0.95, gt=0, le=1, description="larger mask share = degenerate")
    resources: StageResources = StageResources()

    @model_validator(mode="after")
    def _area_range(self) -> MaskConfig:
        if self.min_area >= self.max_area:
            raise ValueError(f"mask.min_area={self.min_area} >= mask.max_area={self.max_area}: every mask "
                             "would be degenerate; expected min_area < max_area")
        return self


class InpaintConfig(Section):
    model: PackagedOrPath = Field("sd2-community/stable-diffusion-2-inpainting", description=(
        "diffusers inpainting pipeline: hub id, local folder, or package:synthetic_inpainter (shipped)"))
    tokens_dir: str | None = Field(None, description="folder of per-class learned tokens (raydbb invert)")
    prompt_template: str = "a photo of a {token} {class_name}"
    negative_prompt: str | None = None
    n_variants: int = Field(1, ge=1)
    steps: int = Field(50, ge=1)
    guidance_scale: float = Field(7.5, ge=0)
    strength: float = Field(1.0, gt=0, le=1)
    scheduler: str | None = Field(None, description="diffusers scheduler class name; None = checkpoint's")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    resolution: int | None = Field(None, ge=8, description="working resolution; None = model default")
    paste_back: bool = Field(True, description="copy unmasked source pixels back exactly")
    match_noise: bool = Field(False, description=(
        "add Gaussian noise inside the painted region up to the source's noise level around it "
        "(the decoder smooths pixel noise away, a seam a classifier can learn); needs paste_back"))
    resources: StageResources = StageResources(batch_size=4, model_batch_size=4)

    @model_validator(mode="after")
    def _noise_needs_paste_back(self) -> InpaintConfig:
        if self.match_noise and not self.paste_back:
            raise ValueError("inpaint.match_noise=true with inpaint.paste_back=false: the noise is matched "
                             "to the untouched pixels around the mask; expected paste_back=true")
        return self


class PruneConfig(Section):
    prob_rule: bool = True
    delta: Threshold = Field(0.0, description="IG threshold δ: keep only if score > δ (-.inf: rule off)")
    ig_steps: int = Field(16, ge=1)
    ig_method: Literal["gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left",
                       "riemann_right"] = "gausslegendre"
    resources: StageResources = StageResources(batch_size=16, model_batch_size=64)


# Prompt templates for textual inversion: each names the learned token AND the dataset's class
# name, like the inference prompt ``inpaint.prompt_template`` (never a hard-coded noun).
INVERT_TEMPLATES = (
    "a photo of a {token} {class_name}",
    "a rendering of a {token} {class_name}",
    "a cropped photo of the {token} {class_name}",
    "the photo of a {token} {class_name}",
    "a close-up photo of a {token} {class_name}",
    "a bright photo of the {token} {class_name}",
    "a dark photo of the {token} {class_name}",
    "a good photo of a {token} {class_name}",
    "a photo of one {token} {class_name}",
    "a photo of the small {token} {class_name}",
    "a photo of the large {token} {class_name}",
    "a blurry photo of a {token} {class_name}",
)


class InvertConfig(Section):
    """Textual inversion (``raydbb invert``): one learned token per class, paper Eq. 1."""

    classes: list[str] | None = Field(None, description="class names to invert; None = every class")
    initializer: dict[str, str] | None = Field(
        None, description="class name -> one-token initializer; default: class name, else its last word")
    tokens: dict[str, str] | None = Field(
        None, description="class name -> placeholder token; default <name-causal>")
    templates: list[str] = Field(list(INVERT_TEMPLATES), min_length=1,
                                 description="prompt templates with {token} and {class_name}")
    steps: int = Field(3000, ge=1, description="optimiser steps per class")
    lr: float = Field(5e-4, gt=0, description="base learning rate (AdamW)")
    scale_lr: bool = Field(True, description="multiply lr by batch_size * grad_accum")
    batch_size: int = Field(1, ge=1, description="images per forward pass")
    grad_accum: int = Field(4, ge=1, description="forward passes per optimiser step")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay (on the token only)")
    resolution: int | None = Field(None, ge=8, description="training side in pixels; None = model default")
    mask_mode: Literal["object", "full"] = Field(
        "object", description="inpainting mask during training: the object's mask, or the full frame")
    flip: bool = Field(True, description="random horizontal flips")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="UNet/VAE dtype; needs device=cuda")
    checkpoint_every: int = Field(500, ge=1, description="steps between resumable checkpoints")
    seed: int = 0
    num_gpus: float | None = Field(
        None, ge=0, description="GPUs per class task; None = 1 if device=cuda else 0",
        json_schema_extra=RESOURCE)
    num_cpus: float = Field(1.0, gt=0, description="logical CPUs per class task", json_schema_extra=RESOURCE)

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _bare_no(cls, value: Any) -> Any:
        return "no" if value is False else value  # YAML reads a bare `no` as false

    @model_validator(mode="after")
    def _templates_name_token_and_class(self) -> InvertConfig:
        for t in self.templates:
            if "{token}" not in t or "{class_name}" not in t:
                raise ValueError(f"invert.templates: {t!r} must contain {{token}} and {{class_name}}")
            try:
                t.format(token="", class_name="")
            except (KeyError, IndexError, ValueError) as err:
                raise ValueError(f"invert.templates: {t!r} has a field other than {{token}}/{{class_name}} "
                                 f"({err})") from None
        return self


class RetrainConfig(Section):
    """Reweighted retraining (``raydbb retrain``, paper Eq. 6-8) on the originals plus kept repaints."""

    checkpoint: str | None = Field(None, description="weights to start from; None = <out>/erm")
    lambdas: dict[str, float] | float = Field(
        6.0, description="λ_c: weight of the CE over repaints labelled c, per class name or one value")
    keep_fraction: dict[str, float] | float = Field(
        1.0, description="share of each class's kept repaints used, highest IG score first (α stand-in)")
    prune_from: Literal["manifest", "config"] = Field(
        "manifest", description="manifest: its recorded kept column; config: re-decide the stored "
                                "scores with prune.delta and prune.prob_rule")
    last_layer_only: bool = Field(False, description="train the linear head only (backbone frozen)")
    head_on_features: bool = Field(
        False, description="train the linear head only, on backbone features computed once with the "
                           "evaluation transform (fast_epochs at fast_lr; what --fast and raydbb tune do)")
    round_trip_originals: bool = Field(
        False, description="pass every original training image through inpaint.model's VAE inside its "
                           "dataset mask (dilated by mask.dilate), as the repaints are, so that the "
                           "decoder's patch does not mark the repaints (needs a mask per image)")
    epochs: int = Field(5, ge=1, description="epochs of (full) retraining; val WGA selects one")
    lr: float = Field(1e-4, gt=0, description="learning rate (optimizer etc. from the train section)")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="full retraining's train.lr_schedule", json_schema_extra=added("constant"))
    ema_decay: float = Field(0.0, ge=0, lt=1, description="full retraining's train.ema_decay",
                             json_schema_extra=added(0.0))
    fast_epochs: int = Field(20, ge=1, description="fast mode (head on cached features): epochs")
    fast_lr: float = Field(0.01, gt=0, description="fast mode: head learning rate (raydbb tune searches it)")

    @model_validator(mode="after")
    def _per_class_values_in_range(self) -> RetrainConfig:
        for name, value, low, high in (("lambdas", self.lambdas, 0.0, None),
                                       ("keep_fraction", self.keep_fraction, 0.0, 1.0)):
            values = value.items() if isinstance(value, dict) else [(None, value)]
            for key, v in values:
                if v < low or (high is not None and v > high) or (name == "keep_fraction" and v == 0):
                    where = f"retrain.{name}" + (f".{key}" if key is not None else "")
                    want = "a share in (0, 1]" if name == "keep_fraction" else "a weight >= 0"
                    raise ValueError(f"{where}={v}: expected {want}")
        return self


class TuneConfig(Section):
    """``raydbb tune``: Ray Tune search over prune thresholds, repaint shares, λ_c and lr (fast mode)."""

    num_samples: int = Field(64, ge=1, description="trials (budget in trials)")
    time_budget_s: float | None = Field(900.0, gt=0, description="budget in seconds for the whole search")
    max_concurrent_trials: int = Field(2, ge=1)
    cpus_per_trial: float = Field(0.5, gt=0, description="logical CPUs per trial (fractional is fine)")
    grace_period: int = Field(2, ge=1, description="ASHA: epochs before a trial may be stopped")
    reduction_factor: float = Field(3.0, gt=1, description="ASHA: keep 1/reduction_factor at each rung")
    deltas: list[Threshold] = Field([float("-inf")], description="δ candidates (-.inf = IG rule off); "
                                "prune.delta is always one")
    delta_quantiles: list[float] = Field([0.1, 0.25, 0.5], description="more δ candidates: these "
                                         "quantiles of the manifest's stored IG scores")
    prob_rule: list[bool] = Field([True, False], min_length=1, description="probability rule on/off")
    keep_fractions: list[float] = Field([0.25, 0.5, 0.75, 1.0], min_length=1,
                                        description="candidate shares of kept repaints per class")
    lambda_range: tuple[float, float] = Field((1.0, 20.0), description="λ_c, log-uniform")
    lr_range: tuple[float, float] = Field((1e-4, 1e-1), description="retrain.fast_lr, log-uniform")
    seed: int | None = Field(None, description="search seed; None = the run seed")
    full_retrain: bool = Field(False, description="retrain the best configuration in full afterwards")

    @model_validator(mode="after")
    def _valid_space(self) -> TuneConfig:
        for q in self.delta_quantiles:
            if not 0 <= q <= 1:
                raise ValueError(f"tune.delta_quantiles: {q} is not a quantile in [0, 1]")
        for f in self.keep_fractions:
            if not 0 < f <= 1:
                raise ValueError(f"tune.keep_fractions: {f} is not a share in (0, 1]")
        for name, (low, high) in (("lambda_range", self.lambda_range), ("lr_range", self.lr_range)):
            if not 0 < low <= high:
                raise ValueError(f"tune.{name}=[{low}, {high}]: expected 0 < low <= high")
        return self


class RaydbbConfig(Section):
    """A whole run. ``out`` is the run folder; everything the run writes lives under it."""

    out: str = Field("runs/default", json_schema_extra=RESOURCE)
    seed: int = 0
    device: Literal["cpu", "cuda"] = Field("cpu", json_schema_extra=RESOURCE)
    data: DataConfig = DataConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    train: TrainConfig = TrainConfig()
    ray: RayConfig = RayConfig()
    select: SelectConfig = SelectConfig()
    generate: GenerateConfig = GenerateConfig()
    mask: MaskConfig = MaskConfig()
    inpaint: InpaintConfig = InpaintConfig()
    prune: PruneConfig = PruneConfig()
    invert: InvertConfig = InvertConfig()
    retrain: RetrainConfig = RetrainConfig()
    tune: TuneConfig = TuneConfig()

    @model_validator(mode="after")
    def _out_is_a_folder(self) -> RaydbbConfig:
        if Path(self.out).is_file():
            raise ValueError(f"out={self.out!r} is a file; expected a run folder (created when missing)")
        return self

    def to_yaml(self, path: str | Path) -> None:
        """Write the fully resolved config (every default spelled out)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))


def _fields(model: type[Section], prefix: str = "") -> Iterator[tuple[str, Any, type[Section] | None]]:
    """``(dotted name, field info, its Section class or None)`` of every field of ``model`` and of
    its sections, depth first. A resource section (:data:`RESOURCE` or
    :attr:`Section.resource_section`) is yielded but not entered: nothing in it decides a result."""
    for name, info in model.model_fields.items():
        kind = info.annotation if isinstance(info.annotation, type) else None
        section = kind if kind and issubclass(kind, Section) else None
        yield f"{prefix}{name}", info, section
        if section and not (info.json_schema_extra == RESOURCE or section.resource_section):
            yield from _fields(section, f"{prefix}{name}.")


def resource_fields(model: type[Section] = RaydbbConfig) -> frozenset[str]:
    """Dotted names of the fields and whole sections marked as resource settings (:data:`RESOURCE`,
    :attr:`Section.resource_section`): changing them re-runs nothing."""
    return frozenset(dotted for dotted, info, section in _fields(model)
                     if info.json_schema_extra == RESOURCE or (section and section.resource_section))


def added_fields(model: type[Section] = RaydbbConfig) -> dict[str, Any]:
    """``{dotted name: neutral value}`` of the fields marked with :func:`added`."""
    return {dotted: info.json_schema_extra["added"] for dotted, info, _ in _fields(model)
            if isinstance(info.json_schema_extra, dict) and "added" in info.json_schema_extra}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: tree}


GENERATE_INPUTS = ("select", "mask", "inpaint", "prune", "generate", "seed")
"""The config a generated sample depends on: a rerun into a folder made with other values would mix them."""


def inpaint_model_stamp(cfg: RaydbbConfig) -> dict[str, str]:
    """``{"inpaint.model": name@digest}`` (:func:`raydbb.assets.model_stamp`): what the tokens and
    repaints depend on beyond the config's values; ``{}`` without a model."""
    from raydbb.assets import model_stamp

    return {"inpaint.model": model_stamp(cfg.inpaint.model)} if cfg.inpaint.model else {}


def fingerprint_dump(section: Section) -> dict[str, Any]:
    """``section`` as JSON without its :func:`added` fields (nested sections' too) while they hold
    their neutral value: what fingerprints hash, so the steps and saved training states of older
    releases stay valid after an upgrade."""
    dump = section.model_dump(mode="json")
    for dotted, neutral in added_fields(type(section)).items():
        *path, leaf = dotted.split(".")
        parent = dump
        for key in path:
            parent = parent[key]
        if leaf in parent and parent[leaf] == neutral:
            del parent[leaf]
    return dump


def config_values(cfg: RaydbbConfig, prefixes: tuple[str, ...]) -> dict[str, Any]:
    """``{dotted.field: value}`` of ``cfg`` under ``prefixes`` (``"inpaint"``, ``"data.root"``),
    resource fields and :func:`added` fields at their neutral value left out: what a step's result
    depends on."""
    resources = resource_fields()
    flat = _flatten(fingerprint_dump(cfg))
    return {k: v for k, v in sorted(flat.items())
            if not any(k == f or k.startswith(f + ".") for f in resources)
            and any(k == p or k.startswith(p + ".") for p in prefixes)}


def changed_values(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``field: old -> new`` for every field whose value differs between two :func:`config_values`."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in keys
            if old.get(k, "<unset>") != new.get(k, "<unset>")]


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: {key} is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """Turn ``["train.epochs=3", "data.root=/x"]`` into a nested dict; values are parsed as YAML."""
    tree: dict[str, Any] = {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected section.field=value")
        _set_dotted(tree, key.strip(), _yaml_value(raw, f"override {item!r}") if raw.strip() else None)
    return tree


def _yaml_value(text: str, where: str) -> Any:
    """``yaml.safe_load`` with a one-line error naming ``where`` (unsafe tags are refused too)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None


def merge_trees(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, section by section (``extra`` wins on leaves)."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_trees(merged[key], value)
        else:
            merged[key] = value
    return merged


def _one_line(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        if e["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown field")
        else:
            parts.append(f"{where}={e.get('input')!r}: {e['msg']}")
    return "config error: " + "; ".join(parts)


def build_config(tree: dict[str, Any]) -> RaydbbConfig:
    """Validate a nested dict into a :class:`RaydbbConfig`, raising a one-line :class:`ConfigError`."""
    try:
        return RaydbbConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_one_line(err)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RaydbbConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply CLI overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found; expected a YAML file")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"config file {p}: not UTF-8 text (byte {err.start}); save it as UTF-8") \
                from None
        loaded = _yaml_value(text, f"config file {p}") or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: expected a mapping at the top level")
        tree = loaded
    return build_config(merge_trees(tree, parse_overrides(overrides)))


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` plus positional ``section.field=value`` overrides on a command's parser."""
    parser.add_argument("--config", help="YAML config file (defaults are used for missing fields)")
    parser.add_argument(
        "overrides", nargs="*", metavar="section.field=value",
        help="override any config field, e.g. train.epochs=3 data.root=/data/waterbirds",
    )


OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)*=")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv`` with options anywhere: ``section.field=value`` overrides may come before,
    between or after options (argparse alone takes only the first run of positionals)."""
    args, extra = parser.parse_known_args(argv)
    late = [a for a in extra if OVERRIDE.match(a)]
    unknown = [a for a in extra if not OVERRIDE.match(a)]
    if late and not hasattr(args, "overrides"):
        unknown = extra
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if late:
        args.overrides = [*args.overrides, *late]
    return args


def config_from_args(args: argparse.Namespace) -> RaydbbConfig:
    """The config named by the arguments :func:`add_config_args` added."""
    return load_config(args.config, args.overrides)
