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

from pathlib import Path
from typing import Any

from benchmarks.cli import BenchCommand
from benchmarks.fixtures import Fixtures, bench_dir
from benchmarks.pipeline import generation_rows, pipeline_stages, run_pipeline
from benchmarks.profiles import CPU_PROFILE, PROFILES, Profile, bench_config
from benchmarks.results import markdown_table, section_header, times
from benchmarks.sampling import Sampler, growth, peak_columns, peaks, process_memory, store_stats

COMMAND = "python -m benchmarks.memory"


def snapshot() -> dict[str, float]:
    return {**process_memory(), "store": store_stats()["store"]}


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
    return {**result, **growth(small, big)}


def report(result: dict[str, Any], info: dict[str, Any], load: list[float], command: str = COMMAND) -> str:
    def row(label: Any, r: dict[str, float], wall: str) -> dict[str, Any]:
        return {"samples": label, **peak_columns(r), "wall s": wall}

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
    cli = BenchCommand(__doc__, "memory")
    cli.sources(16, "samples of the 1× run")
    cli.add("--factor", type=int, default=10, help="size of the large run, in multiples")
    cli.steps(2, "inpainting steps (memory does not need many)")
    cli.profile()
    args = cli.parse(argv)
    profile = PROFILES[args.profile]
    return cli.run(args, lambda fx: measure(fx, n_sources=args.sources, factor=args.factor, profile=profile,
                                            inpaint_steps=args.steps), report, ray=profile)


if __name__ == "__main__":
    main()
