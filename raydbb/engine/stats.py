"""Run statistics of one streaming pass: rows written, kept, skip/prune reasons, per-stage timing.

Stages report their busy time per row in ``t_<stage>`` columns (:func:`raydbb.engine.stage.timed_call`);
:class:`RunStats` adds them up on the driver, so the figures are per actor while busy, whatever the
layout or the number of actors.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from raydbb.engine.stage import GPU_PREFIX, NODE_PREFIX, RSS_PREFIX, SETUP_PREFIX, Batch, num_rows

#: per-stage maxima kept from the adapter's telemetry columns: summary key by column prefix
PEAKS = {SETUP_PREFIX: "load_s", RSS_PREFIX: "peak_rss_mib", GPU_PREFIX: "peak_gpu_mib"}


class RunStats:
    """Counts and stage timings accumulated over the output batches of a pass (``stage_order``:
    stage names in running order, for the summary)."""

    def __init__(self, stage_order: list[str]) -> None:
        self.order = {name: i for i, name in enumerate(stage_order)}
        self.start = time.perf_counter()
        self.wall = 0.0
        self.written = self.generated = self.kept = 0
        self.reasons: dict[str, int] = {}
        self.stage_time: dict[str, list[float]] = {}
        self.stage_nodes: dict[str, dict[str, int]] = {}  # stage -> node id -> rows
        self.node_names: dict[str, str] = {}
        self.peaks: dict[str, dict[str, float]] = {}  # stage -> summary key -> max over actors
        self.parts: list[Path] = []

    def add(self, batch: Batch) -> int:
        """Account for one batch of manifest rows; returns its number of rows."""
        n = num_rows(batch)
        self.written += n
        self.generated += int(sum(1 for p in batch["image_path"] if p))
        self.kept += int(np.sum(batch["kept"]))
        for reason in batch["prune_reason"]:
            self.reasons[str(reason)] = self.reasons.get(str(reason), 0) + 1
        for key, col in batch.items():
            if key.startswith("t_"):
                acc = self.stage_time.setdefault(key[2:], [0.0, 0])
                acc[0] += float(np.nansum(col))
                acc[1] += int(np.isfinite(col).sum())
            elif key.startswith(NODE_PREFIX):
                counts = self.stage_nodes.setdefault(key[len(NODE_PREFIX):], {})
                for node in col:
                    counts[str(node)] = counts.get(str(node), 0) + 1
            elif prefix := next((p for p in PEAKS if key.startswith(p)), None):
                values = np.asarray(col, dtype=np.float64)
                if np.isfinite(values).any():
                    peaks = self.peaks.setdefault(key[len(prefix):], {})
                    peaks[PEAKS[prefix]] = max(peaks.get(PEAKS[prefix], 0.0), float(np.nanmax(values)))
        return n

    def finish(self, parts: list[Path], node_names: dict[str, str] | None = None) -> None:
        """Stop the clock; ``parts`` are the manifest files written; ``node_names`` name node ids."""
        self.wall = time.perf_counter() - self.start
        self.parts = list(parts)
        self.node_names = dict(node_names or {})

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable figures (see :func:`format_stats`)."""
        wall = self.wall
        return {
            "written": self.written,
            "generated": self.generated,
            "kept": self.kept,
            "pruned": {r: c for r, c in sorted(self.reasons.items()) if r != "kept"},
            "wall_s": wall,
            "samples_per_s": self.written / wall if wall > 0 and self.written else 0.0,
            "stages": {name: {"s_per_row": t / n if n else float("nan"),
                              "rows_per_busy_s": n / t if t > 0 else float("nan"), **self.peaks.get(name, {})}
                       for name, (t, n) in sorted(self.stage_time.items(),
                                                  key=lambda kv: self.order.get(kv[0], 99))},
            "nodes": {name: {self.node_names.get(node, node[:8]): rows
                             for node, rows in sorted(nodes.items())}
                      for name, nodes in sorted(self.stage_nodes.items(),
                                                key=lambda kv: self.order.get(kv[0], 99))},
            "manifest_parts": [str(p) for p in self.parts],
        }


def format_stats(summary: dict[str, Any]) -> list[str]:
    """Summary lines for the figures of :meth:`RunStats.summary`."""
    pruned = ", ".join(f"{k} {v}" for k, v in summary["pruned"].items()) or "none"
    lines = [
        f"  written this run   {summary['written']} in {summary['wall_s']:.1f} s "
        f"({summary['samples_per_s']:.2f} samples/s)",
        f"  generated images   {summary['generated']}",
        f"  kept               {summary['kept']}",
        f"  pruned / skipped   {pruned}",
    ]
    if summary["stages"]:
        lines.append("  stage throughput (per actor, while busy; rows before expand are sources):")
        for name, st in summary["stages"].items():
            extra = "".join(f"  {label} {st[key]:{fmt}}{unit}" for key, label, fmt, unit in (
                ("load_s", "model load", ".1f", " s"), ("peak_rss_mib", "peak RSS", ".0f", " MiB"),
                ("peak_gpu_mib", "peak GPU", ".0f", " MiB")) if key in st)
            lines.append(f"    {name:<10} {st['s_per_row'] * 1000:9.1f} ms/row  "
                         f"{st['rows_per_busy_s']:9.2f} rows/s{extra}")
    if len({node for nodes in summary.get("nodes", {}).values() for node in nodes}) > 1:
        lines.append("  where the stages ran (node: output rows):")
        for name, nodes in summary["nodes"].items():
            lines.append(f"    {name:<10} " + ", ".join(f"{node}: {rows}" for node, rows in nodes.items()))
    return lines
