"""The benchmark's generate config: the stage sizing of each machine class (:class:`Profile`) and
the config every pipeline benchmark runs on the fixtures (:func:`bench_config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.fixtures import Fixtures
from raydbb.config import RaydbbConfig, build_config

# Default sizes of the pipeline benchmarks (selected sources to generate from, inpainting steps).
# 320 sources: a steady state is the full run minus a probe run, and the engine's start-up (15-30 s
# on 2 cores) varies by seconds.
SOURCES = 320
INPAINT_STEPS = 10
# Share of the 1000 benchmark training images selected as sources (up to ~450 sources).
SELECT_FRACTION = 0.45


@dataclass(frozen=True)
class Profile:
    """Stage sizing of one machine class; :data:`CPU_PROFILE` here, :data:`GPU_PROFILE` on a GPU node."""

    name: str
    device: str
    ray_num_cpus: int | None
    io: dict[str, Any]
    mask: dict[str, Any]
    inpaint: dict[str, Any]
    prune: dict[str, Any]
    select: dict[str, Any]
    inpaint_dtype: str = "float32"
    mask_source: str = "text"
    layout: str = "pools"
    fused: dict[str, Any] = field(default_factory=dict)
    notes: str = ""


# 2 CPU cores: the fused layout, two single-threaded actors that each run the whole chain
# (load → mask → … → write) on their own blocks. Measured against one pool per model stage on this
# machine (RESULTS.md section 1) it wins because nothing crosses a process boundary between stages
# and each core always has work: with pools the two inpaint actors, mask, prune and the I/O tasks
# are five busy processes time-sharing two cores. The per-stage sizing below still applies to the
# pools layout (stage limits, the pools variant of engine vs loop) and to each stage inside the
# chain: Ray gets 6 logical CPUs so that reads, every model pool and writes all hold a slot at
# once; every model actor runs single-threaded torch (Ray sets OMP_NUM_THREADS = max(1,
# floor(num_cpus))); the inpainter gets two actors; blocks keep the inpainter's batch size (16-row
# blocks would reach two inpaint actors as 16-row tasks: 48 rows = 3 tasks, one actor idle).
CPU_PROFILE = Profile(
    name="cpu",
    device="cpu",
    ray_num_cpus=6,
    io={"num_cpus": 0.25, "batch_size": 8},
    mask={"actors": 1, "num_cpus": 0.5, "batch_size": 8, "model_batch_size": 8},
    inpaint={"actors": 2, "num_cpus": 1.0, "batch_size": 8, "model_batch_size": 8},
    prune={"actors": 1, "num_cpus": 0.5, "batch_size": 16, "model_batch_size": 64},
    select={"actors": 2, "num_cpus": 1.0, "batch_size": 64, "model_batch_size": 64},
    layout="fused",
    fused={"actors": 2, "num_cpus": 1.0, "batch_size": 8, "model_batch_size": 8},
    notes="2 cores: fused layout, two single-threaded actors each running the whole chain",
)

# One GPU node (>= 8 CPUs + 1 GPU): the three model stages share the GPU by fractions that still
# fit twice (the scaling benchmark doubles every pool; the tiny benchmark models are far from
# filling a GPU — with SD-2 at 512 px give the inpainter whole GPUs, see jobs/configs/*.yaml), the
# inpainter runs in float16 with large batches, and diffusers' attention runs on torch's
# scaled-dot-product attention (SDPA, its default with torch 2). Ray gets all of the node's CPUs.
GPU_PROFILE = Profile(
    name="gpu",
    device="cuda",
    ray_num_cpus=None,
    io={"num_cpus": 0.5, "batch_size": 64},
    mask={"actors": 1, "num_cpus": 1.0, "num_gpus": 0.15, "batch_size": 64, "model_batch_size": 64},
    inpaint={"actors": 1, "num_cpus": 1.0, "num_gpus": 0.2, "batch_size": 64, "model_batch_size": 64},
    prune={"actors": 1, "num_cpus": 1.0, "num_gpus": 0.15, "batch_size": 64, "model_batch_size": 512},
    select={"actors": 1, "num_cpus": 1.0, "num_gpus": 0.25, "batch_size": 256, "model_batch_size": 256},
    inpaint_dtype="float16",
    notes="fractional GPUs per stage on one GPU; inpainter in float16; SDPA attention",
)

PROFILES = {"cpu": CPU_PROFILE, "gpu": GPU_PROFILE}


def bench_config(fx: Fixtures, out: Path, profile: Profile = CPU_PROFILE, *,
                 inpaint_steps: int = INPAINT_STEPS, ig_steps: int | None = None, actors: int | None = None,
                 select_fraction: float = SELECT_FRACTION, layout: str | None = None) -> RaydbbConfig:
    """The generate config every pipeline benchmark runs (tiny models, ``profile`` sizing).

    ``actors`` overrides the pool size of every model stage and of the fused pool (the scaling
    benchmark); ``layout`` the profile's ``generate.layout``.
    """
    def pool(res: dict[str, Any]) -> dict[str, Any]:
        return {**res, "actors": actors} if actors is not None else dict(res)

    tree: dict[str, Any] = {
        "out": str(out),
        "seed": 0,
        "device": profile.device,
        "data": {"name": "synthetic", "root": str(fx.data)},
        "ray": {"num_cpus": profile.ray_num_cpus},
        "select": {"fraction": select_fraction, "token_pool_size": 4, "resources": profile.select},
        "generate": {"classifier": str(fx.classifier), "io": profile.io, "manifest_rows_per_part": 100000,
                     "flush_seconds": 3600, "layout": layout or profile.layout,
                     **({"fused": pool(profile.fused)} if profile.fused else {})},
        "mask": {"source": profile.mask_source, "detector": str(fx.detector), "segmenter": str(fx.segmenter),
                 # random tiny detectors score every box low: accept the best box, keep any mask
                 "box_threshold": 0.0, "text_threshold": 0.0, "min_area": 0.0, "max_area": 1.0,
                 "resources": pool(profile.mask)},
        "inpaint": {"model": str(fx.sd), "steps": inpaint_steps, "guidance_scale": 3.0,
                    "dtype": profile.inpaint_dtype, "resources": pool(profile.inpaint)},
        "prune": {"resources": pool(profile.prune)},
    }
    if ig_steps is not None:
        tree["prune"]["ig_steps"] = ig_steps
    return build_config(tree)
