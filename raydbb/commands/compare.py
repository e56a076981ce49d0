"""``raydbb compare``: ERM, the baselines and DDB, each x seed, in one table."""

from __future__ import annotations

import argparse

from raydbb.config import add_config_args, config_from_args

HELP = """\
Run every method x seed on the config's dataset (each an independent Ray task; ERM first, since
DFR, MaskTune and DaC start from that seed's ERM model), each over its hyper-parameter grid with
the configuration chosen by validation worst-group accuracy (MaskTune: validation average
accuracy; it uses no group labels). Finished method x seed pairs are skipped on a rerun.

Methods: erm, groupdro (reference upper bound: uses train group labels), jtt, dfr, afr, lisa,
masktune, dac, ddb (the whole DDB workflow per seed: slow).

Writes to OUT/compare/:
  runs/<method>/seed_<k>/result.json   metrics, grid, chosen values, trials, selection rule, time
  results.csv                          one row per method x seed x split (val, test)
  table.md                             mean ± std over seeds, group labels used, paper WGA

Examples:
  raydbb compare --config raydbb/configs/demo.yaml --methods erm,jtt,dfr --seeds 0,1,2 out=runs/cmp
  raydbb compare --config jobs/configs/waterbirds.yaml --methods erm,jtt --seeds 0 --grid jtt.T=1,2
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="run methods x seeds (baselines, ERM, DDB); write OUT/compare/results.csv, table.md",
        description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(parser)
    parser.add_argument("--methods", default="erm,jtt,dfr", help="comma-separated method names")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--grid", action="append", default=[], metavar="METHOD.PARAM=V1,V2",
                        help="replace one grid entry (repeatable)")
    parser.add_argument("--max-parallel", type=int, default=2, help="method x seed tasks at once")
    parser.add_argument("--no-ray-tasks", action="store_true",
                        help="run the jobs one after another in this process")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)  # first: a config error is reported without loading torch
    from raydbb.compare import parse_grid_overrides, run_compare
    from raydbb.errors import ConfigError

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {args.seeds!r}: expected comma-separated integers") from None
    summary = run_compare(cfg, methods, seeds, parse_grid_overrides(args.grid), args.max_parallel,
                          use_ray=not args.no_ray_tasks)
    print(summary["table"].read_text())
    print(f"wrote {summary['csv']} and {summary['table']} ({len(summary['ran'])} ran, "
          f"{len(summary['skipped'])} skipped)")
    return 0
