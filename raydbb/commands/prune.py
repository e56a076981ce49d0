"""``raydbb prune``: re-apply the prune rules to a stored manifest without regenerating anything."""

from __future__ import annotations

import argparse
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raydbb.config import PruneConfig, load_config
from raydbb.engine.manifest import MANIFEST_DIR, SCHEMA, part_files, write_part_atomic
from raydbb.engine.prune_rules import KEPT, RULE_REASONS, decide, load_tau
from raydbb.errors import DataError

RUN_CONFIG = "generate_config.yaml"

HELP = """\
Re-decide kept/pruned for every generated sample of a run from the scores recorded in its
manifest (p_source, tau, ig_score), with new thresholds, and rewrite the manifest in place.
Nothing is regenerated and no model is loaded, so trying thresholds takes seconds.

Rules (DESIGN §2 step 6; both include the boundary):
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


def run_folder(path: str | Path) -> Path:
    """The run folder ``OUT`` for ``OUT`` or ``OUT/manifest`` (one-line error if there is no manifest)."""
    path = Path(path)
    if path.name == MANIFEST_DIR and not (path / MANIFEST_DIR).is_dir():
        path = path.parent
    if not part_files(path):
        raise DataError(f"--manifest {path}: no Parquet parts under {path / MANIFEST_DIR}; "
                        "expected the output folder of raydbb generate")
    return path


def redecide_table(table: pa.Table, delta: float, prob_rule: bool,
                   tau: np.ndarray | None = None) -> pa.Table:
    """``table`` with ``prune_reason``/``kept`` (and ``tau`` when given per class) re-decided.

    Only rows the prune stage decided (``kept``/``prob``/``ig``) change; the others keep every value.
    """
    reasons = np.asarray(table.column("prune_reason").to_pylist(), dtype=object)
    rule = np.isin(reasons, RULE_REASONS)
    tau_col = table.column("tau").to_numpy().astype(np.float64)
    if tau is not None:
        labels = table.column("source_label").to_numpy()[rule]
        bad = labels[(labels < 0) | (labels >= tau.size)]
        if bad.size:
            raise DataError(f"--tau-file has {tau.size} classes but the manifest has source_label {bad[0]}")
        tau_col[rule] = tau[labels]
    reasons[rule] = decide(table.column("p_source").to_numpy()[rule], tau_col[rule],
                           table.column("ig_score").to_numpy()[rule], delta, prob_rule)
    kept = table.column("kept").to_numpy(zero_copy_only=False).copy()
    kept[rule] = reasons[rule] == KEPT
    for name, values, dtype in (("prune_reason", reasons, pa.string()), ("kept", kept, pa.bool_()),
                                ("tau", tau_col, pa.float64())):
        table = table.set_column(table.schema.get_field_index(name), SCHEMA.field(name),
                                 pa.array(values, type=dtype))
    return table


def reprune(out: str | Path, delta: float, prob_rule: bool, tau: np.ndarray | None = None,
            write: bool = True) -> tuple[Counter, Counter, int]:
    """Re-decide every manifest part of run folder ``out``.

    Returns counts by reason before and after, and the number of rows whose reason changed.

    All parts are re-decided in memory first (so a bad value fails before anything is written),
    then each changed part is replaced atomically.
    """
    before: Counter = Counter()
    after: Counter = Counter()
    updates = []
    changed = 0
    for part in part_files(out):
        table = pq.read_table(part, schema=SCHEMA)
        new = redecide_table(table, delta, prob_rule, tau)
        old_reasons = table.column("prune_reason").to_pylist()
        new_reasons = new.column("prune_reason").to_pylist()
        before.update(old_reasons)
        after.update(new_reasons)
        changed += sum(a != b for a, b in zip(old_reasons, new_reasons, strict=True))
        if not new.equals(table):
            updates.append((part, new))
    if write:
        for part, new in updates:
            write_part_atomic(part, new)
    return before, after, changed


def format_counts(before: Counter, after: Counter) -> str:
    """A small table of sample counts per prune reason, before and after."""
    order = [r for r in RULE_REASONS if r in before or r in after]
    order += sorted((set(before) | set(after)) - set(order))
    lines = [f"{'reason':<24}{'before':>10}{'after':>10}"]
    lines += [f"{r or '(pending)':<24}{before.get(r, 0):>10}{after.get(r, 0):>10}" for r in order]
    lines.append(f"{'total':<24}{sum(before.values()):>10}{sum(after.values()):>10}")
    return "\n".join(lines)


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
    out = run_folder(args.manifest)
    run_cfg = out / RUN_CONFIG
    defaults = load_config(run_cfg).prune if run_cfg.is_file() else PruneConfig()
    delta = defaults.delta if args.delta is None else args.delta
    prob_rule = defaults.prob_rule if args.prob_rule is None else args.prob_rule
    if math.isnan(delta):
        raise DataError("--delta nan: expected a number (-inf disables the IG rule)")
    tau = load_tau(args.tau_file) if args.tau_file else None
    before, after, changed = reprune(out, delta, prob_rule, tau, write=not args.dry_run)
    source = "--tau-file " + args.tau_file if tau is not None else "recorded per sample"
    print(f"{out / MANIFEST_DIR}: delta={delta:g}, prob_rule={'on' if prob_rule else 'off'}, tau {source}")
    print(format_counts(before, after))
    print(f"{'dry run: would change' if args.dry_run else 'changed'} {changed} decisions; "
          f"kept {before.get(KEPT, 0)} -> {after.get(KEPT, 0)}")
    return 0
