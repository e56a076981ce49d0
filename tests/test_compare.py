"""``raydbb compare`` end to end at a tiny size: ERM + JTT, two seeds, each a Ray task; rerun skips.

DDB itself is not part of this test (its workflow inverts tokens and runs a diffusion inpainter:
minutes, not seconds); the compare machinery treats it like any other method.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from test_erm import _write_dataset

from raydbb.cli import main
from raydbb.compare import fingerprint, parse_grid_overrides, plan, run_compare
from raydbb.config import load_config
from raydbb.errors import ConfigError

GROUPS = [("red", "grass"), ("red", "sand"), ("blue", "grass"), ("blue", "sand")]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    counts = {"train": dict(zip(GROUPS, (8, 2, 2, 6), strict=True)),
              "val": dict.fromkeys(GROUPS, 2), "test": dict.fromkeys(GROUPS, 2)}
    return _write_dataset(tmp_path_factory.mktemp("cmp"), counts)


def _overrides(dataset, out):
    return [f"out={out}", "data.name=csv", f"data.root={dataset}",
            "classifier.arch=small_cnn", "classifier.pretrained=false", "classifier.image_size=16",
            "classifier.width=4", "train.epochs=2", "train.batch_size=8", "train.lr=0.01",
            "train.optimizer=adam", "train.num_workers=0", "train.augment=false"]


def test_compare_erm_and_jtt_two_seeds_then_resume(ray_local, small_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["compare", "--methods", "erm,jtt", "--seeds", "0,1", "--grid", "jtt.T=1",
            "--grid", "jtt.lambda_up=3", "--max-parallel", "2", *_overrides(small_dataset, out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished in") == 4 and "skipped" not in printed.split("wrote")[0]

    rows = pd.read_csv(out / "compare" / "results.csv")
    assert len(rows) == 2 * 2 * 2  # method x seed x split
    assert set(map(tuple, rows[["method", "seed", "split"]].to_numpy().tolist())) == {
        (m, s, sp) for m in ("erm", "jtt") for s in (0, 1) for sp in ("val", "test")}
    for col in ("worst_group_accuracy", "average_accuracy", "weighted_average_accuracy", "train_group_labels",
                "val_group_labels", "hparams", "grid", "selection", "wall_seconds", "acc[red/sand]"):
        assert col in rows.columns, col
    assert rows["worst_group_accuracy"].between(0, 1).all()
    jtt = rows[rows["method"] == "jtt"].iloc[0]
    assert (jtt["train_group_labels"], jtt["val_group_labels"]) == ("✗", "✓")
    assert json.loads(jtt["grid"]) == {"T": [1], "lambda_up": [3]}
    assert json.loads(jtt["hparams"])["T"] == 1

    doc = json.loads((out / "compare" / "runs" / "jtt" / "seed_1" / "result.json").read_text())
    assert doc["trials"][0]["chosen"] and doc["trials"][0]["error_set_size"] >= 0
    ident_file = out / "compare" / "runs" / "jtt" / "seed_1" / "identify_T1" / "classifier.json"
    ident = json.loads(ident_file.read_text())
    assert ident["epoch"] == 1 and ident["selection"] == "last epoch"

    table = (out / "compare" / "table.md").read_text()
    assert "| ERM | ✗/✓ | 2 |" in table and "| JTT | ✗/✓ | 2 |" in table and " ± " in table
    assert "paper WGA" not in table  # a csv dataset: no paper column

    # Rerun: every method x seed is skipped, the outputs are the same.
    before = (out / "compare" / "results.csv").read_text()
    summary = run_compare(load_config(None, _overrides(small_dataset, out)), ["erm", "jtt"], [0, 1],
                          parse_grid_overrides(["jtt.T=1", "jtt.lambda_up=3"]))
    assert summary["ran"] == [] and len(summary["skipped"]) == 4
    assert (out / "compare" / "results.csv").read_text() == before

    # A changed grid changes only that method's fingerprints (it would run again; ERM would not).
    cfg = load_config(None, _overrides(small_dataset, out))
    old = {(j.method, j.seed): j.fingerprint for w in plan(cfg, ["erm", "jtt"], [0, 1], {"jtt": {"T": [1]}})
           for j in w}
    new = {(j.method, j.seed): j.fingerprint for w in plan(cfg, ["erm", "jtt"], [0, 1], {"jtt": {"T": [2]}})
           for j in w}
    assert old[("erm", 0)] == new[("erm", 0)] and old[("jtt", 0)] != new[("jtt", 0)]


def test_compare_fingerprint_holds_only_what_the_method_reads(tmp_path):
    def prints(*overrides):
        cfg = load_config(None, [f"out={tmp_path}", *overrides])
        return {m: fingerprint(cfg, m, 0, {}) for m in ("erm", "jtt", "dac", "ddb")}

    base = prints()
    # DDB's own sections (and resource settings) leave the baselines' results valid ...
    ddb_only = prints("retrain.lambdas=2.5", "inpaint.guidance_scale=3", "prune.delta=0.1")
    assert [ddb_only[m] == base[m] for m in base] == [True, True, True, False]
    assert prints("generate.fused.actors=7", "ray.num_cpus=3") == base
    # ... what every method trains with changes them all.
    changed = prints("train.lr=0.5")
    assert all(changed[m] != base[m] for m in base)
    # DaC's fine-tuning phase has retrain's epochs and lr; ERM and JTT do not read them.
    assert [prints("retrain.epochs=9")[m] == base[m] for m in base] == [True, True, False, False]
    # An inpainter replaced in place (same inpaint.model) reruns DDB, and only DDB.
    model = tmp_path / "inpainter"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"round 2")
    before = prints(f"inpaint.model={model}")
    (model / "weights.bin").write_bytes(b"round 3")
    after = prints(f"inpaint.model={model}")
    assert [after[m] == before[m] for m in base] == [True, True, True, False]


def test_compare_plan_runs_erm_first_and_adds_it_when_needed(tmp_path):
    cfg = load_config(None, [f"out={tmp_path}"])
    waves = plan(cfg, ["dfr"], [0, 1])
    assert [[(j.method, j.seed) for j in w] for w in waves] == [[("erm", 0), ("erm", 1)],
                                                                [("dfr", 0), ("dfr", 1)]]
    assert waves[1][0].erm_dir == tmp_path / "compare" / "runs" / "erm" / "seed_0" / "model"
    with pytest.raises(ConfigError, match="unknown method"):
        plan(cfg, ["erm", "nope"], [0])
    with pytest.raises(ConfigError, match="expected method.param"):
        parse_grid_overrides(["jtt"])


def test_table_marks_groupdro_and_carries_paper_wga():
    from raydbb.compare import format_table, result_rows

    def doc(method, seed, wga):
        m = {"worst_group_accuracy": wga, "average_accuracy": 0.9, "weighted_average_accuracy": 0.95,
             "worst_group": "a", "group_accuracy": {"a": wga}}
        from raydbb.baselines.registry import METHODS

        meth = METHODS[method]
        return {"method": method, "seed": seed, "reference_upper_bound": meth.reference,
                "train_group_labels": meth.train_labels, "val_group_labels": meth.val_labels,
                "metrics": {"val": m, "test": m}, "hparams": {}, "grid": {}, "selection": "val WGA",
                "wall_seconds": 1.0}

    docs = [doc("erm", 0, 0.5), doc("erm", 1, 0.7), doc("groupdro", 0, 0.8)]
    table = format_table(result_rows(docs), docs, "waterbirds")
    assert "| ERM | ✗/✓ | 2 | 60.0 ± 14.1 | 50.0–70.0 |" in table and "| 74.6 |" in table
    assert "GroupDRO (reference upper bound: uses train group labels) | ✓/✓ | 1 | 80.0 | 80.0–80.0 |" in table
    assert "DISC (paper only, not run)" in table and "88.7" in table


def test_every_baseline_runs_end_to_end_in_process(ray_local, small_dataset, tmp_path):
    """GroupDRO, DFR, AFR, LISA, MaskTune and DaC at a tiny size, one seed, one-point grids (in-process)."""
    out = tmp_path / "run"
    cfg = load_config(None, [*_overrides(small_dataset, out), "retrain.epochs=1"])
    grids = {"groupdro": {"weight_decay": [0.1]}, "afr": {"gamma": [0.0, 4.0], "lambda": [0.1]},
             "masktune": {"fraction": [0.2]}, "dac": {"mask_fraction": [0.5]},
             "dfr": {"C": [1.0, 0.1], "n_subsets": [3]}}
    methods = ["groupdro", "dfr", "afr", "lisa", "masktune", "dac"]
    summary = run_compare(cfg, methods, [0], grids, use_ray=False)
    docs = {d["method"]: d for d in summary["results"]}
    assert set(docs) == {"erm", *methods}  # ERM added: DFR, MaskTune and DaC start from it
    for name, doc in docs.items():
        assert {"val", "test"} <= set(doc["metrics"]), name
        for key, values in doc["grid"].items():
            assert doc["hparams"][key] in values, (name, key)
    runs = out / "compare" / "runs"
    assert json.loads((runs / "groupdro" / "seed_0" / "trial_0" / "classifier.json").read_text())[
        "train_config"]["weight_decay"] == 0.1
    assert docs["masktune"]["selection"].startswith("validation average accuracy")
    assert docs["dfr"]["selection"].startswith("WGA on the held-out half of val")
    assert len(docs["afr"]["trials"]) == 2 and sum(t["chosen"] for t in docs["afr"]["trials"]) == 1
    assert len(list((runs / "masktune" / "seed_0" / "masked_0").glob("*.png"))) == 18  # every train image
    assert list((runs / "dac" / "seed_0" / "composed_0").glob("*__*.png"))
    dfr_meta = json.loads((runs / "dfr" / "seed_0" / "model" / "classifier.json").read_text())
    assert dfr_meta["head_only"] and dfr_meta["init_checkpoint"].endswith("erm/seed_0/model")
    table = summary["table"].read_text()
    assert "GroupDRO (reference upper bound: uses train group labels) | ✓/✓" in table
    assert "| MaskTune | ✗/✗ |" in table and "| DFR | ✗/✓✓ |" in table and "| LISA | ✓/✓ |" in table


def test_oracle_runs_the_ddb_workflow_with_perfect_repaints(ray_local, tmp_path):
    """``--methods oracle``: ERM, the redraw in place of inversion and inpainting, retraining without the
    VAE round trip, evaluation (fast demo sizes, in-process)."""
    from raydbb.configs import demo_config
    from raydbb.data.synthetic import write_synthetic
    from raydbb.engine.manifest import read_manifest

    data = write_synthetic(tmp_path / "data", seed=0, n_train=240, n_val=64, n_test=64, progress=False)
    cfg = demo_config(tmp_path / "cmp", fast=True, overrides=[f"data.root={data}"])
    assert cfg.retrain.round_trip_originals  # the demo's DDB round-trips; the oracle must not
    summary = run_compare(cfg, ["oracle"], [0], use_ray=False)
    (doc,) = summary["results"]
    assert doc["method"] == "oracle" and {"val", "test"} <= set(doc["metrics"])
    assert doc["hparams"]["retrain"]["round_trip_originals"] is False
    run = tmp_path / "cmp" / "compare" / "runs" / "oracle" / "seed_0" / "run"
    assert not (run / "tokens").exists()  # nothing is prompted: no inversion
    manifest = read_manifest(run)
    assert len(manifest) > 0 and set(manifest["inpaint_model"]) == {"synthetic-counterfactual"}
    assert "| DDB with perfect repaints" in summary["table"].read_text()


def test_a_compare_seed_seeds_what_the_demo_seed_seeds(tmp_path):
    from raydbb.baselines.common import seeded
    from raydbb.configs import demo_config

    ours, demo = seeded(demo_config(tmp_path), 3), demo_config(tmp_path, seed=3)
    seeds = [(c.seed, c.train.seed, c.invert.seed) for c in (ours, demo)]
    assert seeds == [(3, 3, 3)] * 2


def test_oracle_refuses_a_dataset_it_cannot_redraw_before_training(small_dataset, tmp_path):
    cfg = load_config(None, _overrides(small_dataset, tmp_path / "run"))
    with pytest.raises(ConfigError, match="data.name=csv: perfect counterfactuals exist only for the synth"):
        run_compare(cfg, ["oracle"], [0], use_ray=False)
    assert not (tmp_path / "run" / "compare" / "runs" / "oracle" / "seed_0" / "run" / "erm").exists()
