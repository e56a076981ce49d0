"""``raydbb demo``: the whole method on the embedded synthetic benchmark, end to end, resumable.

The demo is the cluster pipeline (:func:`raydbb.workflow.run_steps` over
:func:`~raydbb.workflow.pipeline_steps`) with the packaged config ``raydbb/configs/demo.yaml``
and the small inpainter shipped in ``raydbb/assets`` (pretrained on a corpus unrelated to the
benchmark, docs/world.md), plus one last step that writes
``OUT/report.html``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from raydbb.assets import synthetic_inpainter_available
from raydbb.config import RaydbbConfig, parse_overrides
from raydbb.configs import demo_config
from raydbb.errors import ConfigError, RaydbbError
from raydbb.plan import add_dry_run_arg
from raydbb.rundir import RunDir

HELP = """\
Run Diffusion Driven Balancing end to end on the embedded synthetic benchmark (landbirds and
waterbirds on land and water backgrounds; in training, 95 % of each class sits on its own
background), through the same steps a cluster run takes:

  synth      draw the benchmark into OUT/data
  train_erm  ERM: fine-tunes the shipped pretrained backbone (Ray Train), selected on validation
             worst-group accuracy -> OUT/erm
  invert     per-sample ERM losses -> majority proxies, tau and the token pool; one learned
             token per class (textual inversion) -> OUT/tokens
  generate   dataset masks -> inpaint each majority proxy as the other class with the small
             inpainter shipped in the package -> prune (probability rule, IG rule)
             -> OUT/images, OUT/masks, OUT/manifest
  retrain    originals (given the inpainter's VAE patch inside their masks) + kept repaints,
             lambda-weighted loss, full fine-tuning from the ERM weights -> OUT/ddb
  evaluate   both models on val and test -> OUT/metrics.json ("erm" and "ddb")
  report     OUT/report.html (charts, sample grid, prune counts, throughput)

then prints the ERM and DDB group tables side by side. The resolved config is OUT/config.yaml.
Re-running the same command into the same OUT resumes: finished steps are skipped (a finished
run re-run takes seconds); a changed setting re-runs its step and everything after it, moving
the old outputs to OUT/.stale/.

About 6 minutes on 2 idle CPU cores, up to 12 on a busy one (seed 0: test worst-group accuracy
ERM 54.3 -> DDB 98.0; docs/results.md has every seed). --fast runs tiny sizes (a smoke test of
every step; its numbers mean nothing). Any config field can be overridden:
raydbb demo --out runs/d retrain.epochs=6

Examples:
  raydbb demo --out runs/demo
  raydbb demo --out runs/demo-s1 --seed 1 --train-correlation 0.9
"""


def has_inpainter(overrides: list[str] | None) -> bool:
    """Whether the demo has an inpainting model: the shipped one, or one named on the command line."""
    return synthetic_inpainter_available() or bool(parse_overrides(overrides).get("inpaint", {}).get("model"))


def run_erm_only(cfg: RaydbbConfig, progress: bool) -> dict[str, Any]:
    """The steps that need no inpainter (synth, train_erm, evaluate); prints the ERM group table."""
    from raydbb.training.metrics import format_group_table
    from raydbb.workflow import run_steps

    run_steps(cfg, steps=["synth", "train_erm", "evaluate"], progress=progress)
    metrics = json.loads(RunDir(cfg.out).metrics.read_text())
    erm = {split: metrics["erm"][split] for split in ("val", "test") if split in metrics["erm"]}
    print(format_group_table(erm, title="ERM on the synthetic benchmark (accuracy in %)"))
    return metrics


def _report(cfg: RaydbbConfig, progress: bool) -> dict[str, Any]:
    from raydbb.ddb.report import write_report

    path = write_report(cfg.out)
    print(f"  report: {path}")
    return {"report": str(path)}


def report_step():
    """The demo's last step: ``OUT/report.html`` (re-made whenever an earlier step ran again)."""
    from raydbb.workflow import Step

    return Step("report", "self-contained HTML report -> OUT/report.html", ("prune", "retrain"), _report,
                done_file=lambda c: RunDir(c.out).report, outputs=lambda c: [RunDir(c.out).report])


def run_demo(cfg: RaydbbConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every step of the demo for ``cfg``; returns ``OUT/metrics.json``'s content."""
    from raydbb.workflow import pipeline_steps, run_steps

    steps = pipeline_steps(cfg)
    if "retrain" not in [s.name for s in steps]:
        raise RaydbbError("this raydbb has no retrain step in its pipeline; the demo needs it")
    run_steps(cfg, pipeline=[*steps, report_step()], progress=progress)
    return json.loads(RunDir(cfg.out).metrics.read_text())


def comparison(metrics: dict[str, Any]) -> str:
    """The ERM and DDB group tables side by side, and one closing line with the test numbers."""
    from raydbb.ddb.retrain.run import format_comparison

    erm, ddb = metrics["erm"], metrics["ddb"]
    lines = [format_comparison(erm, ddb, title="ERM vs DDB on the synthetic benchmark (accuracy in %)")]
    if "test" in erm and "test" in ddb:
        e, d = erm["test"], ddb["test"]
        lines.append(f"test worst-group accuracy: ERM {100 * e['worst_group_accuracy']:.1f} -> DDB "
                     f"{100 * d['worst_group_accuracy']:.1f}; average accuracy (all samples): ERM "
                     f"{100 * e['average_accuracy']:.1f} -> DDB {100 * d['average_accuracy']:.1f}")
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="DDB end to end on the embedded synthetic benchmark (resumable), with a report",
        description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="runs/demo", metavar="DIR", help="run folder (default runs/demo)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of the benchmark, training, inversion and generation (default 0)")
    parser.add_argument("--train-correlation", type=float, default=None, metavar="P",
                        help="share of each class on its own background in training (default 0.95)")
    parser.add_argument("--fast", action="store_true", help="tiny sizes: a smoke test of every step")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_dry_run_arg(parser)
    parser.add_argument("overrides", nargs="*", metavar="section.field=value",
                        help="override any field of the packaged demo config, e.g. retrain.epochs=6")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.seed < 0:
        raise ConfigError(f"--seed {args.seed}: expected an integer >= 0")
    cfg = demo_config(args.out, args.seed, args.train_correlation, args.fast, args.overrides)
    if args.dry_run:
        from raydbb.plan import run_dry

        if not has_inpainter(args.overrides):
            return run_dry(cfg, "pipeline", steps=["synth", "train_erm", "evaluate"],
                           notes=["no inpainter shipped: the demo runs the steps that need none"])
        return run_dry(cfg, "pipeline", notes=["then: report -> OUT/report.html"])
    if not has_inpainter(args.overrides):
        print("raydbb demo: this build ships no trained synthetic inpainter (raydbb/assets/"
              "synthetic_inpainter); running the steps that need none (synth -> train_erm -> evaluate). "
              "Build it with `raydbb train-inpainter`, or pass inpaint.model=DIR, to run DDB end to end.",
              file=sys.stderr)
        run_erm_only(cfg, progress=not args.no_progress)
        print(f"metrics: {RunDir(cfg.out).metrics}")
        return 0
    metrics = run_demo(cfg, progress=not args.no_progress)
    print(comparison(metrics))
    print(f"metrics: {RunDir(cfg.out).metrics}   report: {RunDir(cfg.out).report}")
    return 0
