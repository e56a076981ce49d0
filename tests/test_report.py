"""raydbb report: the HTML report of a run folder built by hand (metrics, manifest, tau, config, markers)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raydbb.cli import main
from raydbb.config import RaydbbConfig
from raydbb.data.images import write_png_atomic
from raydbb.ddb.report import SECTIONS, pick_samples, prune_counts, read_run, render_report, write_report
from raydbb.ddb.select import write_tau
from raydbb.engine.manifest import ManifestWriter, manifest_columns
from raydbb.errors import DataError
from raydbb.training.metrics import group_metrics

GROUPS = ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]
CLASSES = ["landbird", "waterbird"]


def _metrics(correct_per_group: list[int], n: int = 4) -> dict:
    """Group metrics where group g has ``correct_per_group[g]`` of ``n`` samples right."""
    labels = np.repeat([0, 0, 1, 1], n)
    groups = np.repeat(np.arange(4), n)
    preds = labels.copy()
    for g, c in enumerate(correct_per_group):
        preds[g * n + c:(g + 1) * n] = 1 - labels[g * n]
    return group_metrics(preds, labels, groups, GROUPS, [0.7, 0.05, 0.05, 0.2])


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    rng = np.random.default_rng(0)
    # Three sources with masks; four manifest rows: two kept, one pruned by the probability
    # rule, one skipped upstream (no mask, no repaint).
    rows = []
    for i, (reason, target) in enumerate([("kept", 1), ("kept", 0), ("prob", 1), ("no_mask", 1)]):
        src = out / "data" / f"src{i}.png"
        write_png_atomic(src, rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        mask_rel = image_rel = ""
        if reason != "no_mask":
            mask_rel, image_rel = f"masks/src{i}.png", f"images/s{i}.png"
            mask = np.zeros((16, 16), bool)
            mask[4:12, 4:12] = True
            write_png_atomic(out / mask_rel, mask)
            write_png_atomic(out / image_rel, rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        rows.append({
            "sample_id": f"s{i}", "source_id": f"src{i}", "source_path": str(src), "source_label": 1 - target,
            "target_label": target, "mask_path": mask_rel, "image_path": image_rel, "prune_reason": reason,
            "kept": reason == "kept", "p_source": 0.1 if reason == "kept" else 0.95, "tau": 0.9,
            "p_target": 0.8, "ig_score": 1.5, "t_inpaint": 0.5 if image_rel else 0.0,
        })
    batch = {k: np.array([r[k] for r in rows], dtype=object if isinstance(rows[0][k], str) else None)
             for k in rows[0]}
    with ManifestWriter(out) as writer:
        writer.add(manifest_columns(batch))
    write_tau(out, CLASSES, np.array([0.9, 0.8]), "erm")
    erm, ddb = _metrics([4, 3, 1, 4]), _metrics([4, 4, 3, 4])
    (out / "metrics.json").write_text(json.dumps({"erm": {"val": erm, "test": erm, "run": {}},
                                                  "ddb": {"val": ddb, "test": ddb, "run": {}}}))
    cfg = RaydbbConfig(out=str(out))
    cfg.prune.delta = 0.25
    cfg.to_yaml(out / "config.yaml")
    (out / ".steps").mkdir()
    (out / ".steps" / "generate.json").write_text(json.dumps({
        "step": "generate", "fingerprint": "x", "seconds": 12.5, "finished_at": "2026-01-01 00:00:00",
        "summary": {"wall_s": 10.0, "written": 4, "samples_per_s": 0.4, "engine": "ray"}}))
    return out


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.ids: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src") or "")
        if a.get("id"):
            self.ids.append(a["id"])
        if tag in ("link", "script", "iframe"):
            self.links.append(tag)


def test_report_is_self_contained_with_every_section(run_dir: Path) -> None:
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    text = path.read_text()
    parser = _Collect()
    parser.feed(text)
    assert set(SECTIONS) <= set(parser.ids)
    assert parser.links == []  # no external stylesheet, script or frame
    # 2 charts (accuracy, score histograms) + 3 cards with source/mask/repaint + 1 card with a source only
    assert len(parser.imgs) == 2 + 3 * 3 + 1
    for src in parser.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in text and "https://" not in text and "file://" not in text


def test_report_numbers(run_dir: Path) -> None:
    text = render_report(read_run(run_dir))
    # worst group: ERM 1/4 (waterbird/land), DDB 3/4; tau and delta as written
    assert "<td>worst-group</td><td>25.0</td><td>75.0</td><td>25.0</td><td>75.0</td>" in text
    assert "<td>τ landbird</td><td>0.9000</td>" in text and "<td>τ waterbird</td><td>0.8000</td>" in text
    assert "<td>0.2500</td>" in text
    # throughput: 3 timed inpaint rows of 0.5 s -> 500 ms/row, 2 rows/s; the generate marker's wall time
    assert "<td>inpaint</td><td>3</td><td>500.0</td><td>2.00</td>" in text
    assert "4 samples written in 10.0 s" in text
    assert "pruned: no_mask" in text and "no repaint" in text and "pruned: prob" in text
    # what the retraining trained, from the run's config (the default: whole network, no round trip)
    assert "<td>retrain: trains</td><td>the whole network</td>" in text
    assert "<td>retrain: originals through the inpainter&#x27;s VAE in their masks</td><td>no</td>" in text


def test_prune_counts_by_reason_and_target(run_dir: Path) -> None:
    counts = prune_counts(read_run(run_dir)["manifest"], CLASSES)
    assert list(counts.index) == ["kept", "no_mask", "prob", "total"]
    assert counts.loc["kept"].tolist() == [1, 1, 2]  # -> landbird, -> waterbird, total
    assert counts.loc["prob"].tolist() == [0, 1, 1]
    assert counts.loc["total"].tolist() == [1, 3, 4]


def test_pick_samples_per_reason_is_deterministic(run_dir: Path) -> None:
    manifest = read_run(run_dir)["manifest"]
    one = pick_samples(manifest, per_reason=1)
    assert one["prune_reason"].tolist() == ["kept", "no_mask", "prob"]
    assert one["sample_id"].tolist() == pick_samples(manifest, per_reason=1)["sample_id"].tolist()


def test_partial_run_reports_what_is_missing(run_dir: Path, tmp_path: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    del metrics["ddb"]
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    shutil.rmtree(run_dir / "manifest")
    text = render_report(read_run(run_dir))
    assert "Only ERM has been evaluated so far" in text
    assert "No generation manifest yet" in text
    with pytest.raises(DataError, match="run folder .* not found"):
        read_run(tmp_path / "nope")


def test_cli_writes_report_to_chosen_file(run_dir: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "elsewhere" / "r.html"
    assert main(["report", "--run", str(run_dir), "--out", str(target), "--samples", "1"]) == 0
    assert target.is_file() and str(target) in capsys.readouterr().out
    assert main(["report", "--run", str(tmp_path / "missing")]) == 2


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Debian's chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    path = write_report(run_dir)
    shot = tmp_path / "shot.png"
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}", f"--screenshot={shot}",
           "--window-size=1200,2000", path.resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape == (2000, 1200, 3)
    # The page drew something: dark text and coloured charts, not an empty white page.
    assert (image.min(axis=-1) < 80).mean() > 0.002
    assert np.unique(image.reshape(-1, 3), axis=0).shape[0] > 50
    # The metrics chart: bars in DDB's blue (#1f77b4) and ERM's grey (#9e9e9e).
    pixels = image.reshape(-1, 3).astype(int)
    for colour in ((31, 119, 180), (158, 158, 158)):
        assert (np.abs(pixels - colour).max(axis=1) <= 6).sum() > 500, colour
    # The sample grid: the run's images are random noise, so the grid is the only place with
    # a thousand or more distinct saturated colours (text and charts: greys and a few flat colours).
    saturated = pixels[(pixels.max(axis=1) - pixels.min(axis=1)) > 60]
    assert np.unique(saturated, axis=0).shape[0] > 1000  # 7 images of 16x16 noise: ~1600


def test_report_shows_the_comparison_when_the_run_holds_one(run_dir: Path) -> None:
    from raydbb.ddb.report import compare_summary

    rows = [("erm", 0, 0.50, False), ("erm", 1, 0.60, False), ("groupdro", 0, 0.90, True),
            ("groupdro", 1, 0.94, True), ("ddb", 0, 0.70, False), ("ddb", 1, 0.80, False)]
    frame = pd.DataFrame([{"method": m, "seed": s, "split": split, "reference_upper_bound": ref,
                           "worst_group_accuracy": w if split == "test" else 0.0}
                          for m, s, w, ref in rows for split in ("val", "test")])
    (run_dir / "compare").mkdir()
    frame.to_csv(run_dir / "compare" / "results.csv", index=False)
    summary = compare_summary(frame)
    assert list(summary["method"]) == ["erm", "groupdro", "ddb"]
    # mean and sample std of (50, 60) = 55 ± 7.07; of (90, 94) = 92 ± 2.83
    assert summary["wga_mean"].round(2).tolist() == [55.0, 92.0, 75.0]
    assert summary["wga_std"].round(2).tolist() == [7.07, 2.83, 7.07]
    html = write_report(run_dir).read_text()
    assert "id='comparison'" in html and "55.0 ± 7.1" in html
    assert "groupdro (reference: train group labels)" in html


def test_report_shows_the_quality_gate_recorded_in_the_model(run_dir: Path, tmp_path: Path) -> None:
    from benchmarks.inpainter_quality import write_record
    from raydbb.assets import QUALITY_GATE_RECORD
    from raydbb.config import load_config

    model = tmp_path / "inpainter"
    model.mkdir()
    cfg = load_config(run_dir / "config.yaml", [f"inpaint.model={model}", "inpaint.guidance_scale=8"])
    cfg.to_yaml(run_dir / "config.yaml")
    assert "No quality gate is recorded for" in render_report(read_run(run_dir))

    row = {"direction": "landbird->waterbird", "n": 100, "target_rate": 0.94, "leak": 0.004,
           "judge_on_sources": 1.0, "own_rate": 0.99, "vae_psnr": 23.21, "vae_sharpness_ratio": 0.218}
    summary = {"model": str(model), "root": "/somewhere/bench", "grid": "/somewhere/examples.png",
               "model_name": "inpainter", "model_corpus": "pretrain", "data_seed": 0, "steps": 20,
               "guidance": 4.0, "strength": 0.9, "dilate": 8, "match_noise": True,
               "scheduler": "DDIMScheduler", "judge": {}, "results": [row],
               "gate": {"a_target_rate": True, "b_leak": True, "c_judge_on_sources": True}}
    path = write_record(model, summary, "python -m benchmarks.inpainter_quality --record")
    assert path == model / QUALITY_GATE_RECORD
    assert "/somewhere" not in path.read_text()  # no paths of the machine that measured it
    text = render_report(read_run(run_dir))
    assert ("<td>landbird-&gt;waterbird</td><td>100</td><td>94.0</td><td>0.4</td><td>100.0</td><td>99.0</td>"
            "<td>23.2 dB / 0.22</td>") in text
    assert "gate: (a) pass, (b) pass, (c) pass" in text
    # The run's own sampler and mask settings (the default config's) are not the gate's: said so.
    assert "strength 0.9, mask dilation 8 px, noise matching on." in text
    assert ("Measured with other settings than this run's: steps 20 (this run: 50); guidance 4.0 "
            "(this run: 8.0); strength 0.9 (this run: 1.0); dilate 8 (this run: 0); match_noise True "
            "(this run: False).") in text
