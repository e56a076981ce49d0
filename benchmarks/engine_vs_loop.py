"""Engine vs plain loop: the whole ``raydbb generate`` work through Ray Data actor pools vs a
sequential Python loop over the same stage objects, inputs and tiny models.

Both passes of ``raydbb generate`` are timed with each engine:

- **select** — load → score over every training image (the per-sample losses that majority
  selection and τ are computed from);
- **generate** — load → mask (tiny GroundingDINO + SAM) → expand → inpaint (small SD-2-shaped
  pipeline) → prune (probabilities + 16-step IG of the demo classifier) → write (PNGs + manifest),
  over the selected sources.

The loop is :func:`raydbb.engine.adapter.run_loop` in this process over the plain stage list,
with torch's default threads (the plain loop a user would write; ``loop-1t``: one torch thread,
what each engine actor gets). The engine is :func:`raydbb.engine.adapter.build_dataset` in both
layouts (``generate.layout``): ``fused`` (one pool whose actors each run the whole chain) and
``pools`` (a pool per model stage, cheap stages as tasks); the headline ratio uses the profile's
layout. Each is measured by a small probe run and a full run
(:class:`benchmarks.pipeline.SteadyState`): start-up (actor creation and model loading in the
engine, ``setup()`` in the loop) is separated from the steady state without relying on when the
engine hands batches back. Runs are interleaved (loop, fused, pools, pools, fused, loop, ...) so
that drifting load on a shared machine hits every variant alike.

    python -m benchmarks.engine_vs_loop [--sources N] [--repeats 1] [--profile cpu]
                                        [--variants loop,fused,pools]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.cli import BenchCommand
from benchmarks.fixtures import Fixtures, bench_dir
from benchmarks.pipeline import SteadyState, generation_rows, measure_steady, pipeline_stages, run_pipeline
from benchmarks.profiles import CPU_PROFILE, INPAINT_STEPS, PROFILES, SOURCES, Profile, bench_config
from benchmarks.results import markdown_table, section_header, times
from raydbb.models.threads import torch_threads

COMMAND = "python -m benchmarks.engine_vs_loop"
PASSES = ("select", "generate")
SELECT_ROWS = 8_000  # images through the select pass (the training set repeated)
# Variant -> (engine for raydbb.engine.executor.execute, generate.layout, torch threads in this
# process or None). The engine variants are named after their layout; the loops run the plain
# stage list (what the pools layout hands the adapter).
VARIANTS = {"loop": ("loop", "pools", None), "fused": ("ray", "fused", None), "pools": ("ray", "pools", None),
            "loop-1t": ("loop", "pools", 1)}
LABELS = {"loop": "loop (torch default threads)",
          "fused": "engine, fused layout (one pool, whole chain per actor)",
          "pools": "engine, pools layout (a pool per model stage)",
          "loop-1t": "loop (1 torch thread)"}


def default_variants(profile: Profile) -> tuple[str, ...]:
    """The loop and every layout the profile sizes (the fused one only where it has a fused pool)."""
    return ("loop", "fused", "pools") if profile.fused else ("loop", profile.layout)


def interleaved(variants: tuple[str, ...], repeats: int) -> list[str]:
    """``loop, fused, pools, pools, fused, loop, ...``: balanced against drifting load."""
    order: list[str] = []
    for r in range(repeats):
        order += list(variants) if r % 2 == 0 else list(reversed(variants))
    return order


def combine(runs: list[SteadyState]) -> dict[str, Any]:
    """Pool repeated measurements: extra rows and extra seconds are summed before dividing."""
    extra_rows = sum(r.full.rows - r.probe.rows for r in runs)
    extra_s = sum(r.full.wall_s - r.probe.wall_s for r in runs)
    steady = extra_rows / extra_s if extra_s > 0 else float("nan")
    return {
        "rows": runs[0].full.rows,
        "probe_rows": runs[0].probe.rows,
        "startup_s": float(np.mean([r.probe.wall_s - r.probe.rows / steady for r in runs])),
        "steady_rate": steady,
        "total_rate": sum(r.full.rows for r in runs) / sum(r.full.wall_s for r in runs),
        "busy_ms": {k: float(np.mean([r.full.busy_ms_per_row(k) for r in runs]))
                    for k in runs[-1].full.stage_busy_s},
    }


def measure(fx: Fixtures, *, n_sources: int = SOURCES, repeats: int = 1, profile: Profile = CPU_PROFILE,
            inpaint_steps: int = INPAINT_STEPS, work: Path | None = None,
            variants: tuple[str, ...] | None = None, passes: tuple[str, ...] = PASSES) -> dict[str, Any]:
    """Time ``passes`` with every variant (Ray must be initialised); returns runs and ratios.

    ``variants`` (default :func:`default_variants`) must include ``loop`` and the profile's layout
    (the engine as configured); ``passes`` must include ``generate``.
    """
    engine_variant = profile.layout
    variants = variants or default_variants(profile)
    if not {engine_variant, "loop"} <= set(variants) or "generate" not in passes:
        raise ValueError(f"variants {variants} / passes {passes}: need loop and {engine_variant} (the "
                         "profile's layout), and generate")
    from raydbb.data.registry import load_records
    from raydbb.ddb.generate import scoring_stages
    from raydbb.engine.manifest import read_manifest
    from raydbb.engine.stages.load import source_rows

    work = Path(work or bench_dir() / "engine_vs_loop")
    cfgs = {v: bench_config(fx, work / "select", profile, inpaint_steps=inpaint_steps,
                            layout=VARIANTS[v][1]) for v in variants}
    cfg = cfgs["loop"]
    rows = generation_rows(cfg, fx).iloc[:n_sources].reset_index(drop=True)
    if len(rows) < n_sources:
        raise ValueError(f"{n_sources} sources asked, but the benchmark selection has {len(rows)}")
    train = source_rows(load_records(cfg.data).split("train"))
    n_train = len(train)
    # Scoring is ~1000x cheaper than generating: the training set alone finishes inside the
    # engine's start-up noise, so the select pass scores it several times over (paths repeat).
    train = pd.concat([train] * -(-SELECT_ROWS // n_train), ignore_index=True)
    runs: dict[str, dict[str, list[SteadyState]]] = {p: {v: [] for v in variants} for p in passes}
    # The first pipeline run in this process pays one-off costs (imports, file cache, kernel
    # selection) that would land in the first loop probe and inflate the loop's steady rate.
    run_pipeline(pipeline_stages(cfg, fx), rows.iloc[:8], "loop", work / "warm-up")
    for variant in interleaved(variants, repeats):
        engine, _, threads = VARIANTS[variant]
        vcfg = cfgs[variant]
        with torch_threads(threads):
            if "select" in passes:  # the stages score_training_set runs
                runs["select"][variant].append(measure_steady(
                    lambda vcfg=vcfg: scoring_stages(vcfg, fx.classifier),
                    train, engine, work / f"select-{variant}", manifest=False))
            runs["generate"][variant].append(measure_steady(
                lambda vcfg=vcfg: pipeline_stages(vcfg, fx), rows, engine, work / f"generate-{variant}"))

    # Same stages, same inputs: every variant must reach the same decisions (last full runs).
    manifests = {v: read_manifest(work / f"generate-{v}" / "full", resolve_paths=False)
                 .set_index("sample_id")["prune_reason"] for v in variants}
    ref = manifests[engine_variant]
    same = np.mean([(manifests[v].reindex(ref.index) == ref).mean() for v in variants if v != engine_variant])
    result: dict[str, Any] = {"n_sources": len(rows), "n_train": n_train, "n_scored": len(train),
                              "repeats": repeats, "profile": profile.name, "inpaint_steps": inpaint_steps,
                              "variants": variants, "engine": engine_variant,
                              "decisions_agree": float(same), "runs": runs, "passes": {}}
    others = [v for v in variants if v != engine_variant]
    for p in passes:
        stats: dict[str, Any] = {v: combine(runs[p][v]) for v in variants}
        for other in others:
            ours, theirs = stats[engine_variant], stats[other]
            stats[f"ratio_steady_{other}"] = ours["steady_rate"] / theirs["steady_rate"]
            stats[f"ratio_total_{other}"] = ours["total_rate"] / theirs["total_rate"]
        result["passes"][p] = stats
    if "select" in passes:
        # The whole job per generated sample: the select pass is shared by the run's samples.
        gen, sel = result["passes"]["generate"], result["passes"]["select"]
        job = {v: 1 / (1 / gen[v]["steady_rate"] + n_train / sel[v]["steady_rate"] / len(rows))
               for v in variants}
        result["job_steady_rate"] = job
        result["ratio_job_steady"] = {other: job[engine_variant] / job[other] for other in others}
    return result


def report(result: dict[str, Any], info: dict[str, Any], load: list[float], command: str = COMMAND) -> str:
    """The RESULTS.md section for one :func:`measure` result."""
    variants = result["variants"]
    gen = result["passes"]["generate"]
    rows = []
    for p, stats in result["passes"].items():
        unit = "training images" if p == "select" else "samples"
        for v in variants:
            s = stats[v]
            rows.append({"pass": p, "run": LABELS[v], "rows": f"{int(s['rows'])} {unit}",
                         "start-up s": f"{s['startup_s']:.1f}", "steady rows/s": f"{s['steady_rate']:.2f}",
                         "rows/s incl. start-up": f"{s['total_rate']:.2f}"})
    stage_keys = list(dict.fromkeys(k for v in variants for k in gen[v]["busy_ms"]))
    busy = [{"run": LABELS[v], **{f"{k} ms/row": f"{gen[v]['busy_ms'].get(k, float('nan')):.1f}"
                                  for k in stage_keys}} for v in variants]
    engine = result["engine"]
    lines = [f"- **engine vs loop (generate, steady state; {engine} layout): "
             f"{times(gen['ratio_steady_loop'])}**"]
    if "loop-1t" in variants:
        lines.append(f"- engine vs loop with 1 torch thread (generate, steady state): "
                     f"{times(gen['ratio_steady_loop-1t'])}")
    for other in (v for v in variants if VARIANTS[v][0] == "ray" and v != engine):
        lines.append(f"- {engine} layout vs {other} layout (generate, steady state): "
                     f"{times(gen[f'ratio_steady_{other}'])}; including start-up: "
                     f"{times(gen[f'ratio_total_{other}'])}")
    for loop in (v for v in variants if VARIANTS[v][0] == "loop"):
        name = "loop" if loop == "loop" else "1-thread loop"
        if "select" in result["passes"]:
            lines.append(f"- engine vs {name} (select, steady state): "
                         f"{times(result['passes']['select'][f'ratio_steady_{loop}'])}; whole job per sample "
                         f"(select + generate, steady state): {times(result['ratio_job_steady'][loop])}")
        lines.append(f"- engine vs {name} (generate, {result['n_sources']} samples including start-up): "
                     f"{times(gen[f'ratio_total_{loop}'])}")
    lines.append(f"- keep/prune decisions identical to the engine's: {result['decisions_agree'] * 100:.0f} % "
                 "of samples")
    return (section_header("1. Engine vs plain loop", command, info, load)
            + f"\nPipeline: select (load → score the {result['n_train']} training images; timed over "
            f"{result['n_scored']}, the set repeated), then generate "
            f"(load → mask [tiny GroundingDINO+SAM] → expand → inpaint [small SD, {result['inpaint_steps']} "
            f"steps] → prune [probabilities + 16-step IG] → write [PNGs + manifest]) on "
            f"{result['n_sources']} selected sources; profile `{result['profile']}`; {result['repeats']} "
            "run(s) per variant, interleaved. Loop = `run_loop` over the same stage objects in one "
            "process. Engine = Ray Data actor pools, in either layout (`generate.layout`): *fused* = one "
            "pool whose actors each run the whole chain on their own blocks, *pools* = one pool per model "
            "stage with the cheap stages as tasks; the headline uses the profile's layout. Start-up = a "
            f"probe run ({gen['loop']['probe_rows']} sources: one full batch for "
            "every stage) minus its rows at the steady rate; steady rate = extra rows / extra seconds of "
            "the full run over the probe. Ray workers run at normal priority (`raydbb.ray_utils.init_ray` "
            "sets niceness 0, as the loop has).\n\n"
            + markdown_table(rows) + "\n" + "\n".join(lines) + "\n"
            "\nBusy time per row of each generate stage (per actor, while busy; rows before expand are "
            "sources):\n\n" + markdown_table(busy))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cli = BenchCommand(__doc__, "engine_vs_loop")
    cli.sources()
    cli.add("--repeats", type=int, default=1, help="runs per engine (interleaved)")
    cli.steps()
    cli.profile()
    cli.add("--variants", default="",
            help=f"comma-separated, from {', '.join(VARIANTS)} (loop and the profile's layout "
            "are needed; default: loop and every layout the profile sizes)")
    args = cli.parse(argv)
    profile = PROFILES[args.profile]
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip()) or None
    unknown = [v for v in variants or () if v not in VARIANTS]
    if unknown:
        cli.error(f"--variants: unknown {unknown}; expected names from {list(VARIANTS)}")
    return cli.run(args, lambda fx: measure(fx, n_sources=args.sources, repeats=args.repeats, profile=profile,
                                            inpaint_steps=args.steps, variants=variants),
                   report, ray=profile)


if __name__ == "__main__":
    main()
