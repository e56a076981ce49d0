"""CelebA-sized streaming run: ``raydbb generate`` over 2 000 and 20 000 samples in bounded memory.

The real ``raydbb generate`` step (:func:`raydbb.ddb.generate.run_generate`: score every training
image -> select the majority proxies -> mask with the tiny GroundingDINO + SAM -> inpaint with a
small SD-shaped pipeline -> prune with integrated gradients -> write images and the Parquet
manifest) runs on a synthetic training set of N images, selecting half of them and painting two
variants of each, so N samples go through mask, inpaint and prune. Ray starts with its default
object store, and Ray Data prints its per-operator progress while it runs.

While each run goes, a sampler records the memory of the driver and every process it started (Σ
RSS and Σ PSS), the object store in use and the bytes Ray spilled to disk. Streaming means the
peaks at N = 20 000 stay within 1.3× of those at N = 2 000, with nothing spilled.

    python -m benchmarks.streaming [--small 2000] [--large 20000] [--steps 1] [--ig-steps 2]
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from benchmarks.cli import BenchCommand
from benchmarks.fixtures import Fixtures, bench_dir, synthetic_data
from benchmarks.profiles import CPU_PROFILE, Profile, bench_config
from benchmarks.results import log, markdown_table, section_header, times
from benchmarks.sampling import MIB, Sampler, growth, peak_columns, peaks, process_memory, store_stats

COMMAND = "python -m benchmarks.streaming"
BOUND = 1.3  # issue 8: peak at 10x the samples within 1.3x of the peak at 1x


def snapshot() -> dict[str, float]:
    return {**process_memory(), **store_stats()}


def dataset(root: Path, n_train: int) -> Path:
    """A synthetic benchmark with ``n_train`` training images (written once, cached)."""
    return synthetic_data(root / f"data-{n_train}", seed=0, n_train=n_train, n_val=8, n_test=8, size=64)


def generate_config(fx: Fixtures, data: Path, out: Path, inpaint_steps: int, ig_steps: int,
                    profile: Profile = CPU_PROFILE) -> Any:
    """The benchmark's generate config on ``data``: half the images selected, two variants each,
    the engine's default manifest flushing (so the driver holds at most one part of rows)."""
    cfg = bench_config(fx, out, profile, inpaint_steps=inpaint_steps, ig_steps=ig_steps,
                       select_fraction=0.5)
    return cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"root": str(data)}),
        "inpaint": cfg.inpaint.model_copy(update={"n_variants": 2}),
        "generate": cfg.generate.model_copy(update={"manifest_rows_per_part": 2000, "flush_seconds": 60.0}),
    })


def measure(fx: Fixtures, *, small: int = 2000, large: int = 20000, inpaint_steps: int = 1,
            ig_steps: int = 2, profile: Profile = CPU_PROFILE, interval: float = 1.0,
            work: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Peak memory and throughput of ``raydbb generate`` at ``small`` and ``large`` samples.

    Ray must be up (:func:`benchmarks.machine.local_ray`)."""
    from raydbb.ddb.generate import format_summary, run_generate

    work = Path(work or bench_dir() / "streaming")
    result: dict[str, Any] = {"idle": snapshot(), "runs": {}, "profile": profile.name,
                              "layout": profile.layout}
    for n in (small, large):
        data = dataset(work, n)
        out = work / f"generate-{n}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = generate_config(fx, data, out, inpaint_steps, ig_steps, profile)
        log(f"generate: {n} training images -> {n // 2} sources x 2 variants -> {out}")
        with Sampler(snapshot, interval) as sampler:
            summary = run_generate(cfg, "ray", progress=progress)
        log(format_summary(summary))
        result["runs"][n] = {**peaks(sampler.values), "spilled": max(s["spilled"] for s in sampler.values),
                             "samples": summary["written"], "scored": summary["scored"],
                             "wall_s": summary["wall_s"], "samples_per_s": summary["samples_per_s"],
                             "stages": summary["stages"]}
    a, b = result["runs"][small], result["runs"][large]
    result.update(growth(a, b))
    result["within_bound"] = bool(result["ratio_pss"] <= BOUND and result["ratio_rss"] <= BOUND)
    result["spilled"] = max(a["spilled"], b["spilled"])
    return result


def report(result: dict[str, Any], info: dict[str, Any], load: list[float], command: str = COMMAND) -> str:
    def row(label: Any, r: dict[str, float], extra: dict[str, Any]) -> dict[str, Any]:
        return {"run": label, **peak_columns(r), **extra}

    blank = {"samples": "", "wall s": "", "samples/s": "", "spilled MiB": ""}
    rows = [row("Ray idle, before", result["idle"], blank)]
    for n, r in result["runs"].items():
        rows.append(row(f"{n} training images", r, {
            "samples": r["samples"], "wall s": f"{r['wall_s']:.0f}", "samples/s": f"{r['samples_per_s']:.1f}",
            "spilled MiB": f"{r['spilled'] / MIB:.1f}"}))
    stage_rows = [{"stage": name, **{f"rows per busy s, {n}": f"{r['stages'][name]['rows_per_busy_s']:.1f}"
                                     for n, r in result["runs"].items()}}
                  for name in next(iter(result["runs"].values()))["stages"]]
    small, large = result["runs"]
    verdict = "within" if result["within_bound"] else "OUTSIDE"
    return (section_header("6. Streaming a CelebA-sized run in bounded memory", command, info, load)
            + "\n`raydbb generate` (score → select → mask with tiny GroundingDINO + SAM → inpaint → IG prune "
            "→ write + manifest) over N training images, half selected, two variants each; profile "
            f"`{result['profile']}` ({result['layout']} layout); Ray's default object store; peaks over the "
            "driver and every process it started.\n\n"
            + markdown_table(rows) + "\n" + markdown_table(stage_rows)
            + f"\n- **peak memory, {large} vs {small} samples: Σ RSS {times(result['ratio_rss'])}, "
            f"Σ PSS {times(result['ratio_pss'])}** ({verdict} the {BOUND}× bound); object store spilled "
            f"{result['spilled'] / MIB:.1f} MiB\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cli = BenchCommand(__doc__, "streaming", epilog=__doc__)
    cli.add("--small", type=int, default=2000, help="samples of the reference run (default 2000)")
    cli.add("--large", type=int, default=20000, help="samples of the large run (default 20000)")
    # Memory does not depend on step counts; few steps keep 20 000 samples within half an hour on 2 cores.
    cli.steps(1, "inpainting steps (default %(default)s)")
    cli.add("--ig-steps", type=int, default=2, help="integrated-gradient steps (default %(default)s)")
    cli.add("--no-progress", action="store_true", help="no progress bars")
    args = cli.parse(argv)
    if not 0 < args.small < args.large:
        cli.error(f"--small {args.small} --large {args.large}: expected 0 < small < large")
    # Ray's default object store (no benchmark cap): "no spilling at default settings".
    return cli.run(args, lambda fx: measure(fx, small=args.small, large=args.large, inpaint_steps=args.steps,
                                            ig_steps=args.ig_steps, progress=not args.no_progress),
                   report, ray=CPU_PROFILE, object_store_memory=None)


if __name__ == "__main__":
    main()
