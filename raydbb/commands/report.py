"""``raydbb report --run DIR``: a self-contained HTML report of a run folder."""

from __future__ import annotations

import argparse

HELP = """\
Write a self-contained HTML report of a run folder (the OUT of raydbb demo, or of a
generate/retrain/evaluate run): per-group accuracy before (ERM) and after (DDB) as a chart and a
table, a grid of source / mask / repaint images of kept and pruned samples with their scores and
prune reason, counts by prune reason, the tau per class and the delta used, and the throughput of
every stage. Charts and thumbnails are PNGs embedded as data URIs: the file stands alone.

Examples:
  raydbb report --run runs/demo                 # -> runs/demo/report.html
  raydbb report --run runs/demo --out /tmp/r.html --samples 10
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report", help="write a self-contained HTML report of a run folder (OUT/report.html)",
        description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", required=True, metavar="DIR", help="the run folder (OUT)")
    parser.add_argument("--out", metavar="FILE", help="where to write the report (default DIR/report.html)")
    parser.add_argument("--samples", type=int, default=6, metavar="N",
                        help="sample cards per prune reason (kept, prob, ig, ...; default 6)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from raydbb.ddb.report import write_report
    from raydbb.errors import ConfigError

    if args.samples < 0:
        raise ConfigError(f"--samples {args.samples}: expected a count >= 0")
    path = write_report(args.run, args.out, per_reason=args.samples)
    print(f"wrote {path}")
    return 0
