"""Engine overhead vs its limit: each model stage alone vs the same stage inside the pipeline.

*Isolated*: the stage object is called in this process on ready batches of its own
``batch_size`` (the inputs produced by the earlier stages beforehand), with the torch threads its
actor gets (``max(1, floor(num_cpus))``) — the model call and nothing else. *Inside the pipeline*:
the stage's own per-row busy time recorded during an engine run (the ``t_<stage>`` columns), and
the pipeline's steady-state throughput.

A pipeline cannot beat its slowest stage: the limit is ``min over stages of actors × isolated
rate``. On a machine with fewer cores than busy actors it cannot beat the CPU either: the second
limit is ``cores / Σ (1 / isolated rate)`` (every row needs every stage's CPU time). The report
gives the fraction of the binding (lower) limit that the engine reached.

    python -m benchmarks.stage_limits [--sources N]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cli import pipeline_main
from benchmarks.fixtures import Fixtures, bench_dir
from benchmarks.machine import nproc
from benchmarks.pipeline import SteadyState, generation_rows, measure_steady, pipeline_stages
from benchmarks.profiles import CPU_PROFILE, INPAINT_STEPS, SOURCES, Profile, bench_config
from benchmarks.results import markdown_table, section_header, times

COMMAND = "python -m benchmarks.stage_limits"
MODEL_STAGES = ("mask", "inpaint", "prune")
ISOLATED_ROWS = 96  # sources for the isolated rates (a rate, not a total: fewer rows suffice)


def isolated_rates(stages: list, rows, repeats: int = 1) -> dict[str, dict[str, float]]:
    """Rows per second of every stateful stage called alone on batches of its ``batch_size``.

    Inputs for stage k are made by running stages 0..k-1 first (not timed); each stage is set up
    and warmed with one call before timing.
    """
    import torch

    from raydbb.engine.adapter import frame_to_batch
    from raydbb.engine.chain import slices
    from raydbb.engine.stage import num_rows

    threads = torch.get_num_threads()
    batches = [frame_to_batch(rows)]
    out: dict[str, dict[str, float]] = {}
    try:
        for stage in stages:
            stage.setup()
            pieces = [piece for b in batches for piece in slices(b, stage.batch_size)]
            if stage.stateful and stage.name in MODEL_STAGES:
                torch.set_num_threads(max(1, int(stage.resources.num_cpus)))
                stage(pieces[0])  # warm-up: first-call allocations, lazy init
                start = time.perf_counter()
                for _ in range(repeats):
                    results = [stage(p) for p in pieces]
                secs = (time.perf_counter() - start) / repeats
                n = sum(num_rows(p) for p in pieces)
                out[stage.name] = {"rows": n, "seconds": secs, "rate": n / secs,
                                   "actors": stage.resources.actors, "threads": torch.get_num_threads()}
                torch.set_num_threads(threads)
            else:
                results = [stage(p) for p in pieces]
            batches = results
    finally:
        torch.set_num_threads(threads)
    return out


def limits(isolated: dict[str, dict[str, float]], cores: float) -> dict[str, float]:
    """The slowest-stage limit and the CPU limit (rows/s) from isolated rates."""
    slowest = min(v["actors"] * v["rate"] for v in isolated.values())
    cpu = cores / sum(1.0 / v["rate"] for v in isolated.values())
    return {"slowest_stage": slowest, "cpu": cpu, "binding": min(slowest, cpu)}


def measure(fx: Fixtures, *, n_sources: int = SOURCES, profile: Profile = CPU_PROFILE,
            inpaint_steps: int = INPAINT_STEPS, engine_run: SteadyState | None = None,
            work: Path | None = None) -> dict[str, Any]:
    """Isolated rates, in-pipeline busy rates and the fraction of the limit for the pools layout (Ray
    must be up unless ``engine_run`` — e.g. engine_vs_loop's pools run — is given)."""
    work = Path(work or bench_dir() / "stage_limits")
    # Per-stage limits describe the pools layout (each model stage its own pool), whatever the
    # profile runs by default.
    cfg = bench_config(fx, work / "select", profile, inpaint_steps=inpaint_steps, layout="pools")
    rows = generation_rows(cfg, fx).iloc[:n_sources].reset_index(drop=True)
    isolated = isolated_rates(pipeline_stages(cfg, fx), rows.iloc[:ISOLATED_ROWS])
    if engine_run is None:
        engine_run = measure_steady(lambda: pipeline_stages(cfg, fx), rows, "ray", work / "generate")
    cores = float(nproc())
    if profile.device == "cuda":
        cores = float("inf")  # model stages run on the GPU: no CPU limit to speak of
    lim = limits(isolated, cores)
    inside = {name: {"rate": 1000 / engine_run.full.busy_ms_per_row(name)} for name in isolated}
    return {"n_sources": len(rows), "cores": cores, "isolated": isolated, "inside": inside, "limits": lim,
            "pipeline_rate": engine_run.steady_rate, "fraction": engine_run.steady_rate / lim["binding"],
            "fraction_slowest": engine_run.steady_rate / lim["slowest_stage"]}


def report(result: dict[str, Any], info: dict[str, Any], load: list[float], command: str = COMMAND) -> str:
    rows = []
    for name, iso in result["isolated"].items():
        inside = result["inside"][name]["rate"]
        rows.append({"stage": name, "actors × threads": f"{iso['actors']} × {iso['threads']}",
                     "isolated rows/s (per actor)": f"{iso['rate']:.2f}",
                     "inside pipeline rows/s (per actor, while busy)": f"{inside:.2f}",
                     "inside / isolated": times(inside / iso["rate"]) if np.isfinite(inside) else "n/a"})
    lim = result["limits"]
    binding = "CPU" if lim["cpu"] < lim["slowest_stage"] else "slowest stage"
    return (section_header("2. Engine overhead vs its limit", command, info, load)
            + f"\n{result['n_sources']} samples through the generate pipeline in the pools layout (one actor "
            "pool per model stage); isolated = the stage object "
            "called alone in one process on batches of its batch_size; inside = its busy time during the "
            "engine run (CPU contention with the other stages shows up here).\n\n"
            + markdown_table(rows)
            + f"\n- slowest-stage limit (min actors × isolated rate): {lim['slowest_stage']:.2f} samples/s\n"
            f"- CPU limit ({result['cores']:g} cores / Σ isolated seconds per sample): "
            f"{lim['cpu']:.2f} samples/s\n"
            f"- engine steady state: {result['pipeline_rate']:.2f} samples/s\n"
            f"- **fraction of the limit reached ({binding} binds): {times(result['fraction'])}** "
            f"(of the slowest-stage limit alone: {times(result['fraction_slowest'])})\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return pipeline_main(__doc__, "stage_limits", argv, measure, report)


if __name__ == "__main__":
    main()
