"""τ, the two prune rules, the prune stage on a real (tiny) checkpoint, and `raydbb prune` re-decisions."""

from __future__ import annotations

import argparse
import json
import math
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from captum.attr import IntegratedGradients

from raydbb.commands import prune as prune_cmd
from raydbb.config import ClassifierConfig, PruneConfig
from raydbb.ddb.prune_rules import compute_tau, decide, load_tau
from raydbb.ddb.stages.prune import PruneStage
from raydbb.engine.manifest import ManifestWriter, manifest_columns, part_files, read_manifest
from raydbb.engine.stage import empty_image, empty_mask, object_column
from raydbb.errors import ConfigError, DataError
from raydbb.models.checkpoint import load_classifier, save_classifier
from raydbb.models.classifier import build_classifier
from raydbb.models.transforms import mask_to_model, to_model_input

SIZE = 32


# ---------------------------------------------------------------- τ and the rules (hand cases)

def test_tau_is_the_per_class_mean_of_p_true():
    probs = np.array([0.9, 0.7, 0.2, 0.4, 0.6, 0.5])
    labels = np.array([0, 0, 1, 1, 1, 2])
    np.testing.assert_allclose(compute_tau(probs, labels, 3), [0.8, 0.4, 0.5])
    with pytest.raises(DataError, match=r"classes \[2\] have no training images"):
        compute_tau(probs[:5], labels[:5], 3)
    with pytest.raises(DataError, match="labels outside 0..1"):
        compute_tau(probs, labels, 2)


def test_rules_include_their_boundaries_and_prob_wins():
    p = np.array([0.30, 0.50, 0.49, 0.10, 0.80, 0.20])
    tau = np.array([0.50, 0.50, 0.50, 0.50, 0.50, 0.50])
    ig = np.array([1.00, 1.00, 0.25, 0.25, -1.0, 0.26])
    #            kept   p==τ  s==δ   s==δ  both   s>δ
    assert decide(p, tau, ig, delta=0.25).tolist() == ["kept", "prob", "ig", "ig", "prob", "kept"]
    assert decide(p, tau, ig, delta=0.25, prob_rule=False).tolist() == ["kept", "kept", "ig", "ig", "ig",
                                                                        "kept"]
    assert decide(p, tau, ig, delta=-math.inf).tolist() == ["kept", "prob", "kept", "kept", "prob", "kept"]


def test_rules_refuse_nan_scores_they_need():
    p, tau, ig = np.array([0.2, np.nan]), np.array([0.5, 0.5]), np.array([1.0, 1.0])
    with pytest.raises(DataError, match="1 rows have NaN p_source/tau"):
        decide(p, tau, ig, delta=0.0)
    assert decide(p, tau, ig, delta=0.0, prob_rule=False).tolist() == ["kept", "kept"]
    with pytest.raises(DataError, match="1 rows have NaN ig_score"):
        decide(np.array([0.2, 0.2]), tau, np.array([1.0, np.nan]), delta=0.0)
    no_ig = decide(np.array([0.2, 0.2]), tau, np.array([1.0, np.nan]), delta=-math.inf)
    assert no_ig.tolist() == ["kept"] * 2


def test_load_tau_reads_the_run_file_format(tmp_path):
    path = tmp_path / "tau.json"
    path.write_text(json.dumps({"classifier": "x", "class_names": ["a", "b"], "tau": [0.75, None]}))
    tau = load_tau(path)
    assert tau[0] == 0.75 and math.isnan(tau[1])
    path.write_text(json.dumps({"tau": [0.5, 1.5]}))
    with pytest.raises(DataError, match=r"must lie in \[0, 1\]"):
        load_tau(path)
    with pytest.raises(DataError, match="not found"):
        load_tau(tmp_path / "missing.json")


# ---------------------------------------------------------------- the stage on a saved checkpoint

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ClassifierConfig(arch="small_cnn", pretrained=False, image_size=SIZE, width=4)
    model = build_classifier(cfg, num_classes=2)
    with torch.no_grad():  # a random net with some spread in its outputs, so the scores differ
        model.head.weight.mul_(20.0)
    return save_classifier(model, tmp_path_factory.mktemp("erm"), {"class_names": ["land", "water"]})


def make_batch(n_pending: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Pending rows with pasted-back repaints, plus one no_mask row and one unreadable-source row."""
    rng = np.random.default_rng(seed)
    sources, repaints, masks = [], [], []
    for _ in range(n_pending):
        src = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
        mask = np.zeros((40, 48), dtype=np.uint8)
        top, left = rng.integers(0, 20), rng.integers(0, 24)
        mask[top:top + 20, left:left + 24] = 1
        rep = src.copy()
        rep[mask == 1] = rng.integers(0, 256, size=(int(mask.sum()), 3), dtype=np.uint8)
        sources.append(src)
        repaints.append(rep)
        masks.append(mask)
    sources += [rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8), empty_image()]
    repaints += [empty_image(), empty_image()]
    masks += [empty_mask(), empty_mask()]
    labels = np.array([i % 2 for i in range(n_pending)] + [0, 1], dtype=np.int64)
    n = n_pending + 2
    return {
        "sample_id": np.array([f"s{i}" for i in range(n)], dtype=object),
        "source_id": np.array([f"src{i}" for i in range(n)], dtype=object),
        "source_label": labels,
        "target_label": 1 - labels,
        "source_image": object_column(sources),
        "image": object_column(repaints),
        "mask": object_column(masks),
        "prune_reason": np.array([""] * n_pending + ["no_mask", "error:image_read"], dtype=object),
        "error": np.array([""] * (n_pending + 1) + ["unreadable"], dtype=object),
    }


def run_stage(checkpoint, batch, tau=(0.5, 0.5), **cfg) -> dict[str, np.ndarray]:
    resources = {"batch_size": 16, "model_batch_size": 12}
    cfg = PruneConfig(ig_steps=8, resources=resources, **cfg)
    # shipped to the actor before setup(), as the Ray adapter does
    stage = pickle.loads(pickle.dumps(PruneStage(cfg, classifier_dir=checkpoint, tau=tau)))
    stage.setup()
    return stage(batch)


def test_stage_scores_match_direct_model_and_captum(checkpoint):
    batch = make_batch()
    out = run_stage(checkpoint, batch, tau=(0.3, 0.6), delta=-math.inf, prob_rule=False)
    model, _ = load_classifier(checkpoint)
    pending = np.arange(8)
    with torch.no_grad():
        probs = torch.softmax(model(to_model_input(list(batch["image"][:8]), SIZE)), 1).double().numpy()
    np.testing.assert_allclose(out["p_source"][pending], probs[pending, batch["source_label"][:8]], rtol=1e-6)
    np.testing.assert_allclose(out["p_target"][pending], probs[pending, batch["target_label"][:8]], rtol=1e-6)
    np.testing.assert_array_equal(out["tau"][pending], np.where(batch["source_label"][:8] == 0, 0.3, 0.6))
    ig = IntegratedGradients(model)
    ref = []
    for i in pending:  # captum per image, its defaults except n_steps
        x = to_model_input([batch["source_image"][i]], SIZE)
        xp = to_model_input([batch["image"][i]], SIZE)
        attr = ig.attribute(xp, baselines=x, target=int(batch["target_label"][i]), n_steps=8)
        ref.append(float((attr[0].sum(0) * mask_to_model(batch["mask"][i], SIZE)).sum()))
    assert np.abs(ref).max() > 1e-3
    np.testing.assert_allclose(out["ig_score"][pending], ref, rtol=1e-4, atol=1e-6)
    assert out["kept"][pending].all() and (out["prune_reason"][pending] == "kept").all()


def test_stage_passes_decided_rows_through(checkpoint):
    batch = make_batch(n_pending=2)
    out = run_stage(checkpoint, batch)
    for key in ("p_source", "p_target", "tau", "ig_score"):
        assert out[key].dtype == np.float64
        assert np.isnan(out[key][2:]).all() and np.isfinite(out[key][:2]).all()
    assert out["prune_reason"][2:].tolist() == ["no_mask", "error:image_read"]
    assert out["error"][2:].tolist() == ["", "unreadable"]
    assert not out["kept"][2:].any()
    assert out["source_image"][2] is batch["source_image"][2]  # untouched, still there for the writer
    assert batch["prune_reason"][:2].tolist() == ["", ""]  # the input batch is not modified


def test_stage_turns_unusable_rows_into_recorded_errors(checkpoint):
    batch = make_batch(n_pending=3)
    batch["mask"][1] = np.ones((10, 10), dtype=np.uint8)  # a mask that does not fit its image
    out = run_stage(checkpoint, batch)
    assert out["prune_reason"][1] == "error:prune_input"
    assert "must share height and width" in out["error"][1]
    assert np.isnan(out["ig_score"][1]) and np.isfinite(out["ig_score"][[0, 2]]).all()


def test_stage_decisions_follow_the_rules_at_the_boundaries(checkpoint):
    batch = make_batch()
    free = run_stage(checkpoint, batch, delta=-math.inf, prob_rule=False)
    p, s, y = free["p_source"][:8], free["ig_score"][:8], batch["source_label"][:8]
    # τ for each class exactly at the second-highest p_source of that class, δ exactly at the median score.
    tau = [float(np.sort(p[y == c])[-2]) for c in (0, 1)]
    delta = float(np.sort(s)[3])
    out = run_stage(checkpoint, batch, tau=tau, delta=delta)
    np.testing.assert_array_equal(out["p_source"][:8], p)  # deterministic: same scores again
    reasons = out["prune_reason"][:8]
    expected = np.where(p >= np.array(tau)[y], "prob", np.where(s <= delta, "ig", "kept"))
    assert reasons.tolist() == expected.tolist()
    assert (reasons == "prob").sum() == 4  # two per class: the row exactly at τ drops too
    at_tau = np.flatnonzero(p == np.array(tau)[y])
    assert len(at_tau) == 2 and (reasons[at_tau] == "prob").all()
    at_delta = int(np.flatnonzero(s == delta)[0])
    assert reasons[at_delta] == ("prob" if p[at_delta] >= tau[y[at_delta]] else "ig")
    assert "ig" in reasons.tolist()
    assert out["kept"][:8].tolist() == (reasons == "kept").tolist()


def test_stage_config_errors(checkpoint):
    with pytest.raises(ConfigError, match=r"tau is undefined .* for classes \[1\]"):
        PruneStage(PruneConfig(), classifier_dir=checkpoint, tau=[0.5, float("nan")])
    stage = PruneStage(PruneConfig(), classifier_dir=checkpoint, tau=[0.5, 0.5, 0.5])
    with pytest.raises(ConfigError, match="tau has 3 classes but classifier"):
        stage.setup()


# ---------------------------------------------------------------- raydbb prune --manifest

def write_manifest(out, batch: dict[str, np.ndarray], rows_per_part: int) -> None:
    with ManifestWriter(out, rows_per_part=rows_per_part) as writer:
        cols = manifest_columns(batch, {"classifier": "erm"})
        n = len(cols["sample_id"])
        for start in range(0, n, rows_per_part):
            writer.add({k: v[start:start + rows_per_part] for k, v in cols.items()})


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="raydbb")
    prune_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_reprune_equals_deciding_at_generation_time(checkpoint, tmp_path, capsys):
    batch = make_batch()
    generated = run_stage(checkpoint, batch, tau=(0.5, 0.5), delta=-math.inf)  # lenient first run
    out = tmp_path / "run"
    write_manifest(out, generated, rows_per_part=4)
    assert len(part_files(out)) == 3
    delta = float(np.median(generated["ig_score"][:8]))
    stricter = run_stage(checkpoint, batch, tau=(0.5, 0.5), delta=delta)
    assert set(stricter["prune_reason"][:8]) >= {"ig"}

    assert cli(["prune", "--manifest", str(out / "manifest"), f"--delta={delta!r}", "--dry-run"]) == 0
    assert read_manifest(out)["prune_reason"].tolist() == generated["prune_reason"].tolist()
    assert cli(["prune", "--manifest", str(out), f"--delta={delta!r}"]) == 0
    frame = read_manifest(out).set_index("sample_id").loc[list(batch["sample_id"])]
    assert frame["prune_reason"].tolist() == stricter["prune_reason"].tolist()
    assert frame["kept"].tolist() == stricter["kept"].tolist()
    np.testing.assert_array_equal(frame["ig_score"].to_numpy(), generated["ig_score"])  # scores untouched
    text = capsys.readouterr().out
    n_ig = int((stricter["prune_reason"] == "ig").sum())
    assert f"delta={delta:g}, prob_rule=on" in text
    assert any(line.split() == ["ig", "0", str(n_ig)] for line in text.splitlines())
    assert any(line.split() == ["no_mask", "1", "1"] for line in text.splitlines())

    # and back: -inf disables the IG rule again, no_mask/error rows never change
    assert cli(["prune", "--manifest", str(out), "--delta=-inf"]) == 0
    again = read_manifest(out).set_index("sample_id").loc[list(batch["sample_id"])]
    assert again["prune_reason"].tolist() == generated["prune_reason"].tolist()


def test_reprune_with_a_tau_file_and_run_defaults(checkpoint, tmp_path, capsys):
    batch = make_batch()
    generated = run_stage(checkpoint, batch, tau=(0.5, 0.5), delta=-math.inf, prob_rule=False)
    out = tmp_path / "run"
    write_manifest(out, generated, rows_per_part=100)
    # the run's config says: prob rule off, δ = -inf
    (out / "generate_config.yaml").write_text("prune:\n  prob_rule: false\n  delta: -.inf\n")
    tau = (0.2, 0.9)
    (tmp_path / "tau.json").write_text(json.dumps({"tau": list(tau)}))
    tau_file = str(tmp_path / "tau.json")
    assert cli(["prune", "--manifest", str(out), "--tau-file", tau_file, "--prob-rule"]) == 0
    frame = read_manifest(out).set_index("sample_id").loc[list(batch["sample_id"])]
    expected = run_stage(checkpoint, batch, tau=tau, delta=-math.inf, prob_rule=True)
    assert frame["prune_reason"].tolist() == expected["prune_reason"].tolist()
    np.testing.assert_array_equal(frame["tau"].to_numpy()[:8], expected["tau"][:8])
    assert "delta=-inf, prob_rule=on, tau --tau-file" in capsys.readouterr().out


def test_reprune_errors_are_one_line(tmp_path, checkpoint):
    with pytest.raises(DataError, match="no Parquet parts under"):
        cli(["prune", "--manifest", str(tmp_path)])
    batch = make_batch(n_pending=2)
    out = tmp_path / "run"
    write_manifest(out, run_stage(checkpoint, batch), rows_per_part=100)
    (tmp_path / "short.json").write_text(json.dumps({"tau": [0.5]}))
    with pytest.raises(DataError, match="--tau-file has 1 classes but the manifest has source_label 1"):
        cli(["prune", "--manifest", str(out), "--tau-file", str(tmp_path / "short.json")])
    # a manifest row the rules decided but without an IG score cannot be re-decided silently
    frame = read_manifest(out, resolve_paths=False)
    frame.loc[0, "ig_score"] = np.nan
    for part in part_files(out):
        part.unlink()
    write_manifest(out, {k: frame[k].to_numpy() for k in frame.columns}, rows_per_part=100)
    with pytest.raises(DataError, match="1 rows have NaN ig_score"):
        cli(["prune", "--manifest", str(out), "--delta", "0"])
    assert isinstance(read_manifest(out), pd.DataFrame)
