"""Scaling: the generate pipeline with 1 vs 2 actors in every model stage's pool, side by side,
plus the GPU configuration that the same commands run with on a GPU node (``--profile gpu``).

    python -m benchmarks.scaling [--sources N] [--profile cpu|gpu]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.cli import pipeline_main
from benchmarks.fixtures import Fixtures, bench_dir
from benchmarks.pipeline import generation_rows, measure_steady, pipeline_stages
from benchmarks.profiles import CPU_PROFILE, GPU_PROFILE, INPAINT_STEPS, Profile, bench_config
from benchmarks.results import markdown_table, section_header, times

COMMAND = "python -m benchmarks.scaling"
SCALING_SOURCES = 160  # per pool size (two full runs and two probes)


def measure(fx: Fixtures, *, n_sources: int = SCALING_SOURCES, actor_counts: tuple[int, ...] = (1, 2),
            profile: Profile = CPU_PROFILE, inpaint_steps: int = INPAINT_STEPS,
            work: Path | None = None) -> dict[str, Any]:
    """Steady-state engine throughput per pool size (Ray must be initialised)."""
    work = Path(work or bench_dir() / "scaling")
    base = bench_config(fx, work / "select", profile, inpaint_steps=inpaint_steps)
    rows = generation_rows(base, fx).iloc[:n_sources].reset_index(drop=True)
    runs = {}
    for actors in actor_counts:
        cfg = bench_config(fx, work / "select", profile, inpaint_steps=inpaint_steps, actors=actors)
        runs[actors] = measure_steady(lambda cfg=cfg: pipeline_stages(cfg, fx), rows, "ray",
                                      work / f"generate-{actors}")
    first = runs[actor_counts[0]].steady_rate
    return {"n_sources": len(rows), "profile": profile.name, "layout": profile.layout,
            "runs": {a: {"startup_s": r.startup_s, "steady_rate": r.steady_rate,
                         "ratio": r.steady_rate / first} for a, r in runs.items()}}


def profile_table(profiles: tuple[Profile, ...] = (CPU_PROFILE, GPU_PROFILE)) -> str:
    """The stage sizing of each profile (actors, CPUs, GPUs, batch sizes) as a markdown table."""
    rows = []
    for p in profiles:
        pools = [("fused", p.fused)] if p.layout == "fused" else []
        for stage, res in pools + [(s, getattr(p, s)) for s in ("mask", "inpaint", "prune")]:
            rows.append({"profile": f"{p.name} ({p.layout} layout)", "stage": stage,
                         "actors": res.get("actors", 1),
                         "num_cpus": res.get("num_cpus", 1), "num_gpus": res.get("num_gpus", 0),
                         "batch_size": res["batch_size"], "model_batch_size": res["model_batch_size"],
                         "dtype": p.inpaint_dtype if stage == "inpaint" else "float32"})
    return markdown_table(rows)


def report(result: dict[str, Any], info: dict[str, Any], load: list[float], command: str = COMMAND) -> str:
    rows = [{"actors per pool": a, "start-up s": f"{r['startup_s']:.1f}",
             "steady samples/s": f"{r['steady_rate']:.2f}", "vs 1 actor": times(r["ratio"])}
            for a, r in result["runs"].items()]
    counts = sorted(result["runs"])
    ratio = result["runs"][counts[-1]]["ratio"]
    return (section_header("4. Scaling", command, info, load)
            + f"\nGenerate pipeline, {result['n_sources']} samples, profile `{result['profile']}` "
            f"({result['layout']} layout), every pool (the fused pool, or each model stage's: mask, "
            "inpaint, prune) with the same number of actors.\n\n"
            + markdown_table(rows)
            + f"\n- **{counts[-1]} vs {counts[0]} actors per pool: {times(ratio)}**\n"
            "\nStage sizing of the two profiles (`--profile gpu` runs every benchmark with the GPU one; "
            "`tests/test_benchmarks_gpu.py` runs the quick set that way on a GPU node):\n\n"
            + profile_table())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return pipeline_main(__doc__, "scaling", argv, measure, report, sources=SCALING_SOURCES,
                         sources_help="selected sources (per run)")


if __name__ == "__main__":
    main()
