"""A self-contained HTML report of one run folder (``raydbb report --run DIR``; the demo writes it too).

Reads only what the run left behind — ``metrics.json`` (the ``erm``/``ddb`` entries of the
evaluate step), the generation manifest, ``tau.json``, the resolved ``config.yaml`` and the
step markers in ``.steps/`` — and writes ``OUT/report.html`` with:

* per-group accuracy before (ERM) and after (DDB) as a chart and a table (both averages named);
* a grid of source / mask / repaint images of kept and pruned samples, with their scores
  (p_y(x'), τ_y, p_y'(x'), IG score) and the keep/prune reason;
* counts by prune reason, the τ per class and the δ / probability rule used;
* stage throughput (manifest per-row timings, the generate step's wall time, every step's time);
* the quality gate of the run's inpainting model, when its folder holds one
  (:data:`~raydbb.assets.QUALITY_GATE_RECORD`, written by ``benchmarks.inpainter_quality --record``).

Every image — matplotlib charts (rendered with the Agg canvas, no pyplot state) and the sample
thumbnails — is a PNG embedded as a base64 ``data:`` URI, so the file can be mailed or archived
alone. Parts a run does not have yet (no ``ddb`` entry, no manifest) are reported as missing, not
as errors.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from raydbb import storage
from raydbb.errors import DataError
from raydbb.rundir import RunDir

MODELS = (("erm", "ERM"), ("ddb", "DDB"))
SECTIONS = ("accuracy", "samples", "pruning", "throughput", "gate")
"""``id`` of every section the report always has (tests check for them)."""
THUMB = 96  # thumbnail side in CSS pixels (64 px synthetic images are shown enlarged, pixelated)


# ----------------------------------------------------------------------------------------------
# Reading the run folder


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg})") from None
    return doc if isinstance(doc, dict) else None


def read_run(run: str | Path) -> dict[str, Any]:
    """Everything the report shows, read from a run folder (missing parts are ``None``/empty)."""
    from raydbb.engine.manifest import read_manifest

    root = Path(run)
    if not root.is_dir():
        raise DataError(f"run folder {root} not found; expected the OUT of raydbb demo/generate")
    run_dir = RunDir(root)
    config_path = run_dir.config
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else None
    if config_path.is_file() and not isinstance(config, dict):
        raise DataError(f"{config_path}: expected a YAML mapping")
    markers = {}
    steps_dir = run_dir.steps
    if steps_dir.is_dir():
        for path in sorted(steps_dir.glob("*.json")):
            marker = _read_json(path)
            if marker is not None:
                markers[path.stem] = marker
    return {
        "root": root.resolve(),
        "metrics": _read_json(run_dir.metrics) or {},
        "tau": _read_json(run_dir.tau),
        "config": config or {},
        "markers": markers,
        "manifest": read_manifest(root),
        "compare": _read_compare(run_dir.compare / "results.csv"),
        "gate": _read_gate((config or {}).get("inpaint", {}).get("model")),
    }


def _read_gate(model: str | None) -> dict[str, Any] | None:
    """The quality-gate record in the inpainting model's folder (a packaged name resolved), if any."""
    from raydbb.assets import QUALITY_GATE_RECORD, resolve_packaged
    from raydbb.errors import RaydbbError

    if not model:
        return None
    try:
        folder = Path(resolve_packaged(str(model)))
    except RaydbbError:  # a packaged model this install does not ship: nothing to show
        return None
    record = _read_json(folder / QUALITY_GATE_RECORD) if folder.is_dir() else None
    return {**record, "model": str(model)} if record else {"model": str(model)}


def _read_compare(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    needed = {"method", "seed", "split", "worst_group_accuracy", "reference_upper_bound"}
    missing = needed - set(frame.columns)
    if missing:
        raise DataError(f"{path}: missing columns {sorted(missing)}; expected raydbb compare's results.csv")
    return frame


# ----------------------------------------------------------------------------------------------
# Small HTML helpers


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.1f}"


def _num(value: Any, digits: int = 3) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(v) else f"{v:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _array_png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _img(uri: str, alt: str, width: int | None = None, cls: str = "") -> str:
    size = f' width="{width}" height="{width}"' if width else ""
    return f'<img class="{cls}" src="{uri}" alt="{_esc(alt)}"{size}>'


# ----------------------------------------------------------------------------------------------
# Sections


def _models(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    return [(key, label) for key, label in MODELS if isinstance(metrics.get(key), dict)]


def accuracy_chart(metrics: dict[str, Any], split: str = "test") -> bytes | None:
    """Grouped bars: accuracy per group (and worst-group / average) for each model, as PNG bytes."""
    from matplotlib.figure import Figure

    models = [(k, label) for k, label in _models(metrics) if split in metrics[k]]
    if not models:
        return None
    groups: list[str] = []
    for key, _ in models:
        groups += [g for g in metrics[key][split]["group_accuracy"] if g not in groups]
    labels = groups + ["worst group", "average"]
    fig = Figure(figsize=(max(6.0, 1.3 * len(labels)), 3.6))
    ax = fig.add_subplot()
    width = 0.8 / len(models)
    colours = {"erm": "#9e9e9e", "ddb": "#1f77b4"}
    x = np.arange(len(labels))
    for i, (key, label) in enumerate(models):
        m = metrics[key][split]
        values = [m["group_accuracy"].get(g) for g in groups]
        values += [m["worst_group_accuracy"], m["average_accuracy"]]
        heights = [100 * v if v is not None else 0.0 for v in values]
        bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, heights, width, label=label,
                      color=colours.get(key))
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(_pct(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.axvline(len(groups) - 0.5, color="#cccccc", lw=1)
    ax.set_xticks(x, [label.replace("/", "/\n") for label in labels], fontsize=9)  # group names wrap
    ax.set_ylim(0, 110)
    ax.set_ylabel(f"{split} accuracy (%)")
    ax.set_title(f"Accuracy per group on the {split} split")
    ax.legend(loc="lower right", fontsize=9)
    return _figure_png(fig)


def _accuracy_section(metrics: dict[str, Any]) -> str:
    models = _models(metrics)
    if not models:
        return "<p class='missing'>No erm/ddb metrics yet (the evaluate step writes metrics.json).</p>"
    parts = []
    chart = accuracy_chart(metrics)
    if chart:
        parts.append(_img(png_data_uri(chart), "accuracy per group, before and after", cls="chart"))
    splits = [s for s in ("val", "test") if any(s in metrics[k] for k, _ in models)]
    groups: list[str] = []
    for key, _ in models:
        for s in splits:
            groups += [g for g in metrics[key].get(s, {}).get("group_accuracy", {}) if g not in groups]
    header = ["", *[f"{s} {label}" for s in splits for _, label in models]]
    rows = []
    for g in groups:
        rows.append([g, *[_pct(metrics[k].get(s, {}).get("group_accuracy", {}).get(g))
                          for s in splits for k, _ in models]])
    for name, field in (("worst-group", "worst_group_accuracy"),
                        ("average (all samples)", "average_accuracy"),
                        ("weighted average (train group proportions)", "weighted_average_accuracy")):
        rows.append([name, *[_pct(metrics[k].get(s, {}).get(field)) for s in splits for k, _ in models]])
    parts.append(_table(header, rows, "metrics"))
    if len(models) == 1:
        parts.append(f"<p class='missing'>Only {models[0][1]} has been evaluated so far.</p>")
    return "\n".join(parts)


def compare_summary(results: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Per method (in the results' order): seeds, mean and sample std of worst-group accuracy (%),
    and whether it is the reference that uses train group labels."""
    rows = results[results["split"] == split]
    order = list(dict.fromkeys(rows["method"]))
    grouped = rows.groupby("method", sort=False)
    return pd.DataFrame({
        "method": order,
        "seeds": [int(grouped.get_group(m)["seed"].nunique()) for m in order],
        "wga_mean": [100 * float(grouped.get_group(m)["worst_group_accuracy"].mean()) for m in order],
        "wga_std": [100 * float(grouped.get_group(m)["worst_group_accuracy"].std(ddof=1))
                    if grouped.get_group(m)["seed"].nunique() > 1 else 0.0 for m in order],
        "reference": [bool(grouped.get_group(m)["reference_upper_bound"].any()) for m in order],
    })


def comparison_chart(summary: pd.DataFrame) -> bytes:
    """Bars: mean test worst-group accuracy per method, error bars one std over seeds."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(5.0, 0.9 * len(summary)), 3.4))
    ax = fig.add_subplot()
    labels = [f"{m}\n(train groups)" if ref else m for m, ref in zip(summary["method"], summary["reference"],
                                                                      strict=True)]
    colours = ["#bbbbbb" if ref else ("#1f77b4" if m == "ddb" else "#7f7f7f")
               for m, ref in zip(summary["method"], summary["reference"], strict=True)]
    ax.bar(range(len(summary)), summary["wga_mean"], yerr=summary["wga_std"], color=colours, capsize=4)
    ax.set_xticks(range(len(summary)), labels, fontsize=9)
    ax.set_ylabel("test worst-group accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("raydbb compare: mean ± std over seeds")
    return _figure_png(fig)


def _comparison_section(results: pd.DataFrame) -> str:
    summary = compare_summary(results)
    rows = [[m + (" (reference: train group labels)" if ref else ""), n, f"{mean:.1f} ± {std:.1f}"]
            for m, n, mean, std, ref in summary.itertuples(index=False)]
    return (_img(png_data_uri(comparison_chart(summary)), "worst-group accuracy per method", cls="chart")
            + _table(["method", "seeds", "test worst-group accuracy %"], rows))


def _class_names(run: dict[str, Any]) -> list[str]:
    tau = run["tau"] or {}
    if tau.get("class_names"):
        return list(tau["class_names"])
    manifest = run["manifest"]
    labels = manifest[["source_label", "target_label"]].to_numpy().ravel().tolist() if len(manifest) else []
    return [str(i) for i in range(int(max(labels, default=-1)) + 1)]


def pick_samples(manifest: pd.DataFrame, per_reason: int = 6, seed: int = 0) -> pd.DataFrame:
    """Up to ``per_reason`` rows of each ``prune_reason`` (kept first), drawn with a fixed seed."""
    if manifest.empty:
        return manifest
    rng = np.random.default_rng(seed)
    reasons = sorted(manifest["prune_reason"].unique(), key=lambda r: (r != "kept", r))
    picked = []
    for reason in reasons:
        rows = manifest[manifest["prune_reason"] == reason].sort_values("sample_id")
        take = rng.choice(len(rows), size=min(per_reason, len(rows)), replace=False)
        picked.append(rows.iloc[np.sort(take)])
    return pd.concat(picked, ignore_index=True)


def _thumb(path: str, kind: str) -> str:
    from raydbb.data.images import read_image, read_mask

    if not path:
        return f"<div class='placeholder'>no {kind}</div>"
    try:
        array = read_mask(path).astype(np.uint8) * 255 if kind == "mask" else read_image(path)
    except DataError:
        return f"<div class='placeholder'>{kind} unreadable</div>"
    return _img(png_data_uri(_array_png(array)), kind, THUMB, "thumb")


def _samples_section(run: dict[str, Any], per_reason: int) -> str:
    manifest = run["manifest"]
    if manifest.empty:
        return "<p class='missing'>No generation manifest yet (the generate step writes it).</p>"
    names = _class_names(run)

    def name(i: int) -> str:
        return names[i] if 0 <= i < len(names) else str(i)

    cards = []
    for row in pick_samples(manifest, per_reason).itertuples(index=False):
        y, t = int(row.source_label), int(row.target_label)
        status = "kept" if row.kept else f"pruned: {row.prune_reason}"
        scores = (f"p<sub>{_esc(name(y))}</sub>(x')={_num(row.p_source)} vs τ={_num(row.tau)}<br>"
                  f"p<sub>{_esc(name(t))}</sub>(x')={_num(row.p_target)} · IG={_num(row.ig_score)}")
        cls = "kept" if row.kept else "pruned"
        cards.append(
            f"<div class='card {cls}'><div class='imgs'>{_thumb(row.source_path, 'source')}"
            f"{_thumb(row.mask_path, 'mask')}{_thumb(row.image_path, 'repaint')}</div>"
            f"<div class='cap'><b>{_esc(status)}</b> · {_esc(name(y))} → {_esc(name(t))}<br>{scores}<br>"
            f"<span class='id'>{_esc(row.sample_id)}</span></div></div>")
    return ("<p>Each card: source x (class y) / mask / repaint x' (target y'). The probability rule drops "
            "x' when p<sub>y</sub>(x') ≥ τ<sub>y</sub>; the attribution rule when the IG score ≤ δ.</p>"
            f"<div class='grid'>{''.join(cards)}</div>")


def prune_counts(manifest: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Rows per (target class, prune reason), with a total column and row."""
    if manifest.empty:
        return pd.DataFrame()
    target = [class_names[t] if 0 <= t < len(class_names) else str(t) for t in manifest["target_label"]]
    table = pd.crosstab(pd.Series(manifest["prune_reason"].to_numpy(), name="reason"),
                        pd.Series(target, name="target"), margins=True, margins_name="total")
    order = sorted(table.index[:-1], key=lambda r: (r != "kept", r)) + ["total"]
    return table.loc[order]


def _pruning_section(run: dict[str, Any]) -> str:
    cfg_prune = run["config"].get("prune", {})
    names = _class_names(run)
    parts = []
    tau = (run["tau"] or {}).get("by_class")
    delta = cfg_prune.get("delta")
    rule = cfg_prune.get("prob_rule")
    settings = [["δ (IG threshold; keep only if score > δ)", _num(delta, 4) if delta is not None else "n/a"],
                ["probability rule (drop if p_y(x') ≥ τ_y)", {True: "on", False: "off"}.get(rule, "n/a")]]
    retrain = run["config"].get("retrain", {})
    if retrain:
        settings += [["retrain: repaints from", retrain.get("prune_from", "n/a")],
                     ["retrain: λ", json.dumps(retrain.get("lambdas"))],
                     ["retrain: trains", "the head, on cached features" if retrain.get("head_on_features")
                      else "the head" if retrain.get("last_layer_only") else "the whole network"],
                     ["retrain: originals through the inpainter's VAE in their masks",
                      "yes" if retrain.get("round_trip_originals") else "no"]]
    if tau:
        settings += [[f"τ {k}", _num(v, 4)] for k, v in tau.items()]
    parts.append(_table(["setting", "value"], settings, "settings"))
    counts = prune_counts(run["manifest"], names)
    if counts.empty:
        parts.append("<p class='missing'>No generation manifest yet.</p>")
        return "\n".join(parts)
    header = ["prune reason", *[f"→ {c}" for c in counts.columns]]
    parts.append(_table(header, [[idx, *row] for idx, row in zip(counts.index, counts.to_numpy().tolist(),
                                                                    strict=True)], "counts"))
    parts.append(_score_chart(run["manifest"], names, delta))
    return "\n".join(parts)


def _score_chart(manifest: pd.DataFrame, names: Sequence[str], delta: float | None) -> str:
    """Histograms of p_y(x') - τ_y and of the IG score, split by decision."""
    from matplotlib.figure import Figure

    rows = manifest[np.isfinite(manifest["p_source"].to_numpy(dtype=float))]
    if rows.empty:
        return ""
    fig = Figure(figsize=(10, 3.0))
    ax1, ax2 = fig.subplots(1, 2)
    margin = rows["p_source"].to_numpy(float) - rows["tau"].to_numpy(float)
    ig = rows["ig_score"].to_numpy(float)
    for reason, colour in (("kept", "#2ca02c"), ("prob", "#d62728"), ("ig", "#ff7f0e")):
        sel = (rows["prune_reason"] == reason).to_numpy()
        if sel.any():
            ax1.hist(margin[sel], bins=30, alpha=0.6, color=colour, label=reason)
            finite = sel & np.isfinite(ig)
            if finite.any():
                ax2.hist(ig[finite], bins=30, alpha=0.6, color=colour, label=reason)
    ax1.axvline(0, color="k", lw=1)
    ax1.set_title("p_y(x') − τ_y (≥ 0: probability rule drops)", fontsize=9)
    if delta is not None and math.isfinite(delta):
        ax2.axvline(delta, color="k", lw=1)
    ax2.set_title("IG score of the target class over the mask (≤ δ: dropped)", fontsize=9)
    for ax in (ax1, ax2):
        ax.legend(fontsize=8)
    return _img(png_data_uri(_figure_png(fig)), "score distributions", cls="chart")


def stage_throughput(manifest: pd.DataFrame) -> list[list[str]]:
    """Per model stage: rows timed, busy seconds per row and rows per busy second (per actor)."""
    out = []
    for col in ("t_mask", "t_inpaint", "t_prune"):
        if col not in manifest:
            continue
        t = manifest[col].to_numpy(dtype=float)
        t = t[np.isfinite(t) & (t > 0)]
        if len(t):
            out.append([col[2:], str(len(t)), f"{1000 * t.mean():.1f}", f"{1 / t.mean():.2f}"])
    return out


def _throughput_section(run: dict[str, Any]) -> str:
    parts = []
    stages = stage_throughput(run["manifest"])
    if stages:
        parts.append("<p>Model stages, from the manifest's per-row timings (one actor, while busy; "
                     "the mask stage times source images, the others generated samples):</p>")
        parts.append(_table(["stage", "rows timed", "ms / row", "rows / busy s"], stages, "stages"))
    gen = run["markers"].get("generate", {}).get("summary", {})
    if gen.get("wall_s"):
        parts.append(f"<p>Generate step: {_esc(gen.get('written', 0))} samples written in "
                     f"{float(gen['wall_s']):.1f} s ({float(gen.get('samples_per_s', 0)):.2f} samples/s "
                     f"end to end, {_esc(gen.get('engine', '?'))} engine).</p>")
    steps = [[name, f"{float(m.get('seconds', 0)):.1f}", m.get("finished_at", "")]
             for name, m in sorted(run["markers"].items(), key=lambda kv: str(kv[1].get("finished_at", "")))]
    if steps:
        parts.append(_table(["step", "seconds (last run)", "finished at"], steps, "steps"))
    return "\n".join(parts) or "<p class='missing'>No timings recorded yet.</p>"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;
max-width:1150px}
h1{font-size:22px} h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left} thead{background:#f4f4f4}
img.chart{max-width:100%;display:block;margin:6px 0}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{border:2px solid #ccc;border-radius:6px;padding:6px;width:304px;font-size:12px}
.card.kept{border-color:#2ca02c} .card.pruned{border-color:#d62728}
.imgs{display:flex;gap:4px} img.thumb{image-rendering:pixelated;background:#000}
.placeholder{width:96px;height:96px;background:#eee;color:#888;font-size:11px;display:flex;align-items:center;
justify-content:center;text-align:center}
.cap{margin-top:4px;line-height:1.35} .id{color:#888;font-size:10px;word-break:break-all}
.missing{color:#a60} .meta{color:#666;font-size:13px}
"""


def _gate_section(run: dict[str, Any]) -> str:
    gate = run.get("gate")
    if not gate:
        return "<p class='missing'>No inpainting model in this run's config.</p>"
    if "results" not in gate:
        return (f"<p class='missing'>No quality gate is recorded for <code>{_esc(gate['model'])}</code>. "
                "For the synthetic benchmark: <code>python -m benchmarks.inpainter_quality --model DIR "
                "--record</code>.</p>")
    rows = [[r["direction"], r["n"], _pct(r["target_rate"]), _pct(r["leak"]), _pct(r["judge_on_sources"]),
             _pct(r["own_rate"]),
             f"{r['vae_psnr']:.1f} dB / {r['vae_sharpness_ratio']:.2f}" if "vae_psnr" in r else "–"]
            for r in gate["results"]]
    verdict = "gate: " + ", ".join(f"({name.split('_')[0]}) {'pass' if ok else 'FAIL'}"
                                   for name, ok in gate["gate"].items())
    inpaint, mask = run["config"].get("inpaint", {}), run["config"].get("mask", {})
    used = {"steps": inpaint.get("steps"), "guidance": inpaint.get("guidance_scale"),
            "strength": inpaint.get("strength"), "dilate": mask.get("dilate"),
            "match_noise": inpaint.get("match_noise")}
    differ = [f"{k} {gate.get(k)} (this run: {v})" for k, v in used.items()
              if v is not None and gate.get(k) is not None and float(v) != float(gate[k])]
    note = (f"<p class='missing'>Measured with other settings than this run's: {_esc('; '.join(differ))}.</p>"
            if differ else "")
    return (f"<p class='meta'>Model <code>{_esc(gate['model'])}</code>, measured "
            f"{_esc(gate.get('date', '?'))} by <code>{_esc(gate.get('command', '?'))}</code>: "
            f"{gate.get('steps')} steps, guidance {gate.get('guidance')}, "
            + ("" if "strength" not in gate else f"strength {gate['strength']:g}, ")
            + f"mask dilation {gate.get('dilate')} px"
            + ("" if "match_noise" not in gate
               else f", noise matching {'on' if gate['match_noise'] else 'off'}")
            + ". A judge that sees only the painted region says "
            "which bird was painted (a); (b) is the share of mask pixels in the target's "
            "majority-background colours; (c) the judge on the unedited birds. Targets: (a) ≥ 90 % "
            "each direction, (b) ≤ 10 %, (c) ≥ 98 %.</p>"
            + _table(["direction", "n", "(a) judged as target %", "(b) background leak %",
                      "(c) judge on sources %", "own-class → own %", "VAE round trip: PSNR / sharpness"],
                     rows)
            + f"<p>{_esc(verdict)}</p>" + note)


def render_report(run: dict[str, Any], per_reason: int = 6) -> str:
    """The whole report as one HTML string (see the module docstring)."""
    cfg = run["config"]
    data = cfg.get("data", {})
    meta = (f"run folder {_esc(run['root'])} · dataset {_esc(data.get('name', '?'))} "
            f"({_esc(data.get('root', '?'))}) · seed {_esc(cfg.get('seed', '?'))} · "
            f"written {_esc(time.strftime('%Y-%m-%d %H:%M:%S'))}")
    sections = {
        "accuracy": ("Accuracy per group: before (ERM) and after (DDB)", _accuracy_section(run["metrics"])),
        "samples": ("Repaints: source / mask / repaint, kept and pruned", _samples_section(run, per_reason)),
        "pruning": ("Pruning: counts by reason, τ and δ", _pruning_section(run)),
        "throughput": ("Throughput", _throughput_section(run)),
        "gate": ("Inpainter quality gate", _gate_section(run)),
    }
    if run.get("compare") is not None:
        sections["comparison"] = ("Comparison with other methods (raydbb compare)",
                                  _comparison_section(run["compare"]))
    body = "\n".join(f"<section id='{key}'><h2>{_esc(title)}</h2>\n{content}</section>"
                     for key, (title, content) in sections.items())
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>raydbb report</title>"
            f"<style>{CSS}</style></head><body><h1>raydbb run report</h1><p class='meta'>{meta}</p>\n"
            f"{body}\n</body></html>\n")


def write_report(run_dir: str | Path, out: str | Path | None = None, per_reason: int = 6) -> Path:
    """Write the report of run folder ``run_dir`` to ``out`` (default ``run_dir/report.html``)."""
    path = Path(out) if out is not None else RunDir(run_dir).report
    storage.write_text(path, render_report(read_run(run_dir), per_reason))
    return path
