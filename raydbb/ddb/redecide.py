"""Re-deciding kept/pruned from the scores a manifest recorded (Eq. 3-5 re-applied, no models).

Used by ``raydbb prune`` (thresholds from the command line) and by retraining (the run folder).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from raydbb.ddb.prune_rules import KEPT, RULE_REASONS, decide
from raydbb.engine.manifest import SCHEMA, part_files, read_part, write_part_atomic
from raydbb.engine.names import MANIFEST_DIR
from raydbb.errors import DataError


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
        table = read_part(part)
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
