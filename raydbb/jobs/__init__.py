"""Ray job entrypoints: ``python -m raydbb.jobs.<step> --config FILE [section.field=value ...]``.

One module per pipeline step (``synth``, ``train_erm``, ``invert``, ``generate``, ``retrain``,
``evaluate``) and ``pipeline`` for all of them in order. Each is a thin wrapper: parse the
arguments, load the config, call :func:`raydbb.workflow.run_steps` — so a job writes the same step
markers as a local run, and resubmitting a finished job skips what is done. They run the same on a
laptop, as the entrypoint of ``ray job submit`` / ``raydbb submit``, and as a KubeRay ``RayJob``
entrypoint; inside a Ray job ``RAY_ADDRESS`` points the driver at the cluster.
"""

from __future__ import annotations

import argparse
import sys

from raydbb.config import parse_args
from raydbb.errors import RaydbbError


def build_parser(step: str | None) -> argparse.ArgumentParser:
    """Arguments of one entrypoint; ``step=None`` is the whole pipeline."""
    from raydbb.config import add_config_args

    what = "every pipeline step, in order," if step is None else f"the {step} step"
    parser = argparse.ArgumentParser(
        prog=f"python -m raydbb.jobs.{step or 'pipeline'}",
        description=f"Run {what} of raydbb into the config's `out` folder. Finished steps "
                    "(OUT/.steps/<step>.json with the same config fingerprint) are skipped.",
    )
    add_config_args(parser)
    if step is None:
        parser.add_argument("--steps", metavar="A,B",
                            help="only these steps, comma-separated (default: all of this run's steps)")
    parser.add_argument("--on-change", choices=["rerun", "refuse"], default="rerun",
                        help="a finished step whose inputs changed: move its outputs to OUT/.stale and "
                             "run it again (default), or stop with the list of changed fields")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars, a line per tenth of each long step instead; the default "
                             "when stderr is not a terminal (a Ray job's log)")
    from raydbb.plan import add_dry_run_arg

    add_dry_run_arg(parser)
    return parser


def main(step: str | None = None, argv: list[str] | None = None) -> int:
    """Entry of ``python -m raydbb.jobs.<step>``; returns the process exit code."""
    args = parse_args(build_parser(step), argv)
    try:
        from raydbb.config import config_from_args
        from raydbb.workflow import run_steps

        cfg = config_from_args(args)
        steps = [step] if step else ([s.strip() for s in args.steps.split(",") if s.strip()]
                                     if args.steps else None)
        if args.dry_run:
            from raydbb.plan import run_dry

            return run_dry(cfg, "pipeline", steps=steps)
        progress = not args.no_progress and sys.stderr.isatty()  # bars in a log file are noise
        results = run_steps(cfg, steps, progress=progress, on_change=args.on_change)
    except RaydbbError as err:
        print(f"raydbb: error: {err}", file=sys.stderr)
        return 2
    ran = [n for n, r in results.items() if r["status"] == "ran"]
    skipped = [n for n, r in results.items() if r["status"] == "skipped"]
    print(f"raydbb job done in {cfg.out}: ran {', '.join(ran) or 'nothing'}; "
          f"skipped (already done) {', '.join(skipped) or 'nothing'}")
    return 0
