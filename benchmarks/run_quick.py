"""The quick benchmark set (``make bench``): every benchmark once, then ``benchmarks/RESULTS.md``.

One local Ray instance serves the pipeline benchmarks; the stage-limit benchmark reuses the engine
run of the engine-vs-loop benchmark as its in-pipeline measurement. Sized to finish in well under
15 minutes on 2 CPU cores. ``--profile gpu`` runs the same set with the GPU stage sizing.

    python -m benchmarks.run_quick [--profile cpu|gpu] [--results PATH]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import engine_vs_loop, ig_cost, memory, scaling, stage_limits
from benchmarks.cli import BenchCommand
from benchmarks.fixtures import bench_dir, build_fixtures
from benchmarks.machine import local_ray, machine_info
from benchmarks.profiles import INPAINT_STEPS, PROFILES, SOURCES
from benchmarks.results import RESULTS_INTRO, RESULTS_PATH, update_results
from benchmarks.sampling import LOAD_INTERVAL, Sampler, load_average, under_load

COMMAND = "python -m benchmarks.run_quick"

# Sizes of the quick set (the single commands default to the same).
QUICK = {"sources": SOURCES, "scaling_sources": scaling.SCALING_SOURCES, "repeats": 1,
         "inpaint_steps": INPAINT_STEPS, "memory_sources": 16, "memory_factor": 10, "resnet_images": 2,
         "ig_pairs": 200}


def run(profile_name: str = "cpu", sizes: dict[str, Any] | None = None, results: Path = RESULTS_PATH,
        work: Path | None = None) -> dict[str, Any]:
    """Run every benchmark with ``sizes`` (default :data:`QUICK`) and rewrite ``results``."""
    sizes = {**QUICK, **(sizes or {})}
    profile = PROFILES[profile_name]
    work = Path(work or bench_dir())
    start = time.perf_counter()
    info = machine_info()
    out: dict[str, Any] = {}
    with Sampler(load_average, LOAD_INTERVAL) as overall:
        fx = build_fixtures()
        steps = sizes["inpaint_steps"]
        with local_ray(profile):
            evl, load = under_load(lambda: engine_vs_loop.measure(
                fx, n_sources=sizes["sources"], repeats=sizes["repeats"], profile=profile,
                inpaint_steps=steps, work=work / "engine_vs_loop"))
            out["engine_vs_loop"] = (evl, load, engine_vs_loop.report)
            engine_run = evl["runs"]["generate"].get("pools", [None])[-1]  # the layout stage limits describe
            out["stage_limits"] = (*under_load(lambda: stage_limits.measure(
                fx, n_sources=sizes["sources"], profile=profile, inpaint_steps=steps, engine_run=engine_run,
                work=work / "stage_limits")), stage_limits.report)
            out["scaling"] = (*under_load(lambda: scaling.measure(
                fx, n_sources=sizes["scaling_sources"], profile=profile, inpaint_steps=steps,
                work=work / "scaling")),
                scaling.report)
            out["memory"] = (*under_load(lambda: memory.measure(
                fx, n_sources=sizes["memory_sources"], factor=sizes["memory_factor"], profile=profile,
                work=work / "memory")), memory.report)
        out["ig_cost"] = (*under_load(lambda: ig_cost.measure(
            fx, resnet_images=sizes["resnet_images"], pairs=sizes["ig_pairs"], device=profile.device)),
            ig_cost.report)
    wall = time.perf_counter() - start
    preamble = (RESULTS_INTRO + f"\nLast full run: `{COMMAND}` (`make bench`, profile `{profile.name}`) on "
                f"{info['nproc']} CPUs ({info['cpu']}), {info['date']}, {wall / 60:.1f} min in all. "
                f"1-min load average over the whole run: mean {np.mean(overall.values):.1f}, max "
                f"{np.max(overall.values):.1f} on {info['nproc']} cores — the machine is shared, and other "
                "processes competing for the CPUs slow both sides of every comparison; the ratios are "
                "measured side by side (interleaved where it matters) to keep that noise out of them.\n")
    for name in ("engine_vs_loop", "stage_limits", "ig_cost", "scaling", "memory"):
        result, load, report = out[name]
        command = f"{COMMAND} (or python -m benchmarks.{name})"
        update_results(name, report(result, info, load, command), path=results, preamble=preamble)
    return {"wall_s": wall, **{k: v[0] for k, v in out.items()}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cli = BenchCommand(__doc__)
    cli.profile()
    args = cli.parse(argv, results=RESULTS_PATH, results_help="RESULTS.md to write")
    summary = run(args.profile, results=args.results)
    print(args.results.read_text())
    print(f"benchmarks finished in {summary['wall_s'] / 60:.1f} min; tables in {args.results}")
    return summary


if __name__ == "__main__":
    main()
