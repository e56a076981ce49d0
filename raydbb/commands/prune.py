"""``raydbb prune``: re-apply the prune rules to a stored manifest without regenerating anything."""

from __future__ import annotations

import argparse
import math

from raydbb.config import PruneConfig, load_config
from raydbb.errors import DataError
from raydbb.rundir import RunDir

HELP = """\
Re-decide kept/pruned for every generated sample of a run from the scores recorded in its
manifest (p_source, tau, ig_score), with new thresholds, and rewrite the manifest in place.
Nothing is regenerated and no model is loaded, so trying thresholds takes seconds.

Rules (paper Eq. 3 and Eq. 4-5; both include the boundary):
  prob  drop if p_source >= tau   (the repaint still looks like its source class; --no-prob-rule disables)
  ig    drop if ig_score <= delta (the mask-summed integrated gradients of the target class)
A sample dropped by both is reported as "prob". Rows skipped upstream (no_mask, error:...) are
left as they are. Thresholds not given on the command line come from the run's
generate_config.yaml (prune section), else the defaults. Each manifest part is replaced
atomically, and nothing is written until every part has been re-decided.

Examples:
  raydbb prune --manifest runs/demo --delta 0.05
  raydbb prune --manifest runs/demo --no-prob-rule --delta=-inf --dry-run
  raydbb prune --manifest runs/demo --tau-file other_tau.json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prune", help="re-apply prune thresholds to a run's manifest (no regeneration)",
        description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--manifest", required=True, metavar="DIR",
                        help="run folder of raydbb generate (or its manifest/ subfolder)")
    parser.add_argument("--delta", type=float, metavar="X",
                        help="IG threshold: drop if ig_score <= X; write negative values as --delta=-0.1 "
                             "(--delta=-inf disables the IG rule)")
    parser.add_argument("--prob-rule", action=argparse.BooleanOptionalAction, default=None,
                        help="apply the probability rule p_source >= tau (default: the run's setting)")
    parser.add_argument("--tau-file", metavar="FILE",
                        help="JSON with per-class tau ({\"tau\": [...]}, like OUT/tau.json) replacing "
                             "the recorded tau")
    parser.add_argument("--dry-run", action="store_true", help="print the new counts, write nothing")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from raydbb.ddb.prune_rules import KEPT, load_tau
    from raydbb.ddb.redecide import format_counts, reprune, run_folder

    out = run_folder(args.manifest)
    run_cfg = RunDir(out).generate_config
    defaults = load_config(run_cfg).prune if run_cfg.is_file() else PruneConfig()
    delta = defaults.delta if args.delta is None else args.delta
    prob_rule = defaults.prob_rule if args.prob_rule is None else args.prob_rule
    if math.isnan(delta):
        raise DataError("--delta nan: expected a number (-inf disables the IG rule)")
    tau = load_tau(args.tau_file) if args.tau_file else None
    before, after, changed = reprune(out, delta, prob_rule, tau, write=not args.dry_run)
    source = "--tau-file " + args.tau_file if tau is not None else "recorded per sample"
    print(f"{RunDir(out).manifest}: delta={delta:g}, prob_rule={'on' if prob_rule else 'off'}, tau {source}")
    print(format_counts(before, after))
    print(f"{'dry run: would change' if args.dry_run else 'changed'} {changed} decisions; "
          f"kept {before.get(KEPT, 0)} -> {after.get(KEPT, 0)}")
    return 0
