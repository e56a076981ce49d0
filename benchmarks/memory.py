"""Memory: peak memory of the whole engine for 1× and 10× the number of samples.

While the generate pipeline runs, a sampler records every ``interval`` seconds the memory of
this driver and every process it started (with a local Ray: GCS, raylet, dashboard agents and all
workers and actors) — the sum of RSS (shared pages counted once per process that touches them,
so an over-estimate) and the sum of PSS (shared pages split between their users) — and the
object store's bytes in use (``object_store_bytes_used`` from the raylet). Ray Data streams
blocks through the stages with back-pressure, so the peaks should not grow with the dataset.

    python -m benchmarks.memory [--sources 16] [--factor 10]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CPU_PROFILE,
    PROFILES,
    Fixtures,
    Profile,
    Sampler,
    bench_config,
    bench_dir,
    build_fixtures,
    generation_rows,
    load_average,
    local_ray,
    machine_info,
    markdown_table,
    pipeline_stages,
    psutil_module,
    run_pipeline,
    section_header,
    times,
    update_results,
)

COMMAND = "python -m benchmarks.memory"
MIB = 2**20


def process_memory() -> dict[str, float]:
    """Summed RSS and PSS (bytes) of this process and all its descendants, and how many there are."""
    psutil = psutil_module()
    me = psutil.Process()
    rss = pss = 0.0
    count = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # a worker that exited between listing and reading
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        count += 1
    return {"rss": rss, "pss": pss, "processes": count}


def object_store_used() -> float:
    """Bytes in Ray's object store on all nodes (raylet's store stats)."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    reply = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address))
    return float(reply.store_stats.object_store_bytes_used)


def snapshot() -> dict[str, float]:
    return {**process_memory(), "store": object_store_used()}


def peaks(samples: list[dict[str, float]]) -> dict[str, float]:
    return {key: max(s[key] for s in samples) for key in ("rss", "pss", "store", "processes")}


def measure(fx: Fixtures, *, n_sources: int = 16, factor: int = 10, profile: Profile = CPU_PROFILE,
            inpaint_steps: int = 2, interval: float = 0.5, work: Path | None = None) -> dict[str, Any]:
    """Peak memory of an engine run over ``n_sources`` and over ``factor`` × as many (Ray must be up)."""
    work = Path(work or bench_dir() / "memory")
    cfg = bench_config(fx, work / "select", profile, inpaint_steps=inpaint_steps)
    all_rows = generation_rows(cfg, fx)
    if len(all_rows) < factor * n_sources:
        raise ValueError(f"memory benchmark needs {factor * n_sources} sources; the fixture selects "
                         f"{len(all_rows)}")
    idle = snapshot()
    result: dict[str, Any] = {"n_sources": n_sources, "factor": factor, "idle": idle, "runs": {}}
    for n in (n_sources, factor * n_sources):
        rows = all_rows.iloc[:n].reset_index(drop=True)
        with Sampler(snapshot, interval) as sampler:
            run = run_pipeline(pipeline_stages(cfg, fx), rows, "ray", work / f"generate-{n}")
        result["runs"][n] = {**peaks(sampler.values), "samples": len(sampler.values), "rows": run.rows,
                             "wall_s": run.wall_s}
    small, big = (result["runs"][n] for n in (n_sources, factor * n_sources))
    result["ratio_rss"] = big["rss"] / small["rss"]
    result["ratio_pss"] = big["pss"] / small["pss"]
    return result


def report(result: dict[str, Any], info: dict[str, Any], load: list[float], command: str = COMMAND) -> str:
    def row(label: Any, r: dict[str, float], wall: str) -> dict[str, Any]:
        return {"samples": label, "peak Σ RSS MiB": f"{r['rss'] / MIB:.0f}",
                "peak Σ PSS MiB": f"{r['pss'] / MIB:.0f}",
                "peak object store MiB": f"{r['store'] / MIB:.1f}", "processes": int(r["processes"]),
                "wall s": wall}

    rows = [row("Ray idle, before", result["idle"], "")]
    rows += [row(r["rows"], r, f"{r['wall_s']:.1f}") for r in result["runs"].values()]
    return (section_header("5. Memory", command, info, load)
            + f"\nGenerate pipeline through the engine for {result['n_sources']} and {result['factor']}× as "
            "many samples; peaks over the driver and every process it started (sampled every 0.5 s), plus "
            "the object store in use.\n\n"
            + markdown_table(rows)
            + f"\n- **peak memory, {result['factor']}× vs 1× samples: Σ RSS {times(result['ratio_rss'])}, "
            f"Σ PSS {times(result['ratio_pss'])}** (1.00× = does not grow with the dataset)\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, default=16, help="samples of the 1× run")
    parser.add_argument("--factor", type=int, default=10, help="size of the large run, in multiples")
    parser.add_argument("--steps", type=int, default=2, help="inpainting steps (memory does not need many)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu", help="stage sizing")
    parser.add_argument("--results", type=Path, default=None, help="RESULTS.md to update (default: ours)")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    fx = build_fixtures()
    with local_ray(profile), Sampler(load_average, 5.0) as load:
        result = measure(fx, n_sources=args.sources, factor=args.factor, profile=profile,
                         inpaint_steps=args.steps)
    text = report(result, machine_info(), load.values)
    print(text)
    update_results("memory", text, **({"path": args.results} if args.results else {}))
    return result


if __name__ == "__main__":
    main()
