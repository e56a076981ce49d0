"""``raydbb generate`` end to end on a tiny synthetic set with tiny real models, on local Ray."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from ddb_run import untrained_inputs

from raydbb.cli import main
from raydbb.config import load_config
from raydbb.data.images import read_image, read_mask
from raydbb.engine.manifest import read_manifest

CLASSES = ["landbird", "waterbird"]


@pytest.fixture(scope="module")
def setup_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data, sd = untrained_inputs(root, n_train=12, erm=root / "run" / "erm")
    small = {"num_cpus": 0.5, "batch_size": 4, "model_batch_size": 4}
    cfg = {
        "out": str(root / "run"),
        "seed": 3,
        "data": {"name": "synthetic", "root": str(data)},
        "select": {"fraction": 0.5, "token_pool_size": 2, "resources": {**small, "batch_size": 8}},
        "generate": {"io": {"num_cpus": 0.25, "batch_size": 4}, "manifest_rows_per_part": 4},
        "mask": {"source": "dataset", "resources": small},
        "inpaint": {"model": str(sd), "steps": 2, "guidance_scale": 2.0, "resources": small},
        "prune": {"ig_steps": 4, "resources": {**small, "model_batch_size": 16}},
    }
    path = root / "generate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return root, path


def _generate(config, capsys, *extra: str) -> dict:
    assert main(["generate", "--config", str(config), "--json", "--no-progress", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_end_to_end_then_resume_skips_all(ray_local, setup_run, capsys) -> None:
    root, config = setup_run
    out = root / "run"
    summary = _generate(config, capsys)

    # selection: ceil(half) of each class's training images, per class; one repaint per source
    meta = pd.read_csv(root / "data" / "metadata.csv")
    n_train = meta[meta["split"] == "train"]["label"].value_counts()
    want = {c: int(np.ceil(0.5 * n_train[c])) for c in CLASSES}
    assert summary["scored"] == 12 and summary["selected"] == want
    n = sum(want.values())
    assert summary["expected"] == n and summary["written"] == n and summary["skipped_resume"] == 0
    tau = json.loads((out / "tau.json").read_text())
    assert set(tau["by_class"]) == set(CLASSES) and all(0 < t < 1 for t in tau["tau"])
    assert all(len(pd.read_csv(out / "token_pool" / f"{c}.csv")) == 2 for c in CLASSES)
    selected = pd.read_csv(out / "select" / "selected.csv")

    manifest = pd.read_parquet(out / "manifest")  # plain pandas, no raydbb, no Ray
    assert len(manifest) == n and manifest["sample_id"].is_unique
    assert set(manifest["source_id"]) == set(selected["sample_id"])
    assert (manifest["target_label"] == 1 - manifest["source_label"]).all()
    assert set(manifest["prune_reason"]) <= {"kept", "prob", "ig", "no_mask"}
    assert (manifest["kept"] == (manifest["prune_reason"] == "kept")).all()
    assert (manifest["mask_source"] == "dataset").all()
    assert (manifest["inpaint_model"] == str(root / "sd")).all()
    generated = manifest[manifest["image_path"] != ""]
    assert len(generated) == summary["generated"] > 0
    assert np.isfinite(generated[["p_source", "p_target", "tau", "ig_score"]].to_numpy()).all()
    assert generated["prompt"].str.contains("a photo of a").all()

    frame = read_manifest(out)
    for _, row in frame[frame["image_path"] != ""].iterrows():
        image, source = read_image(row["image_path"]), read_image(row["source_path"])
        mask = read_mask(row["mask_path"])
        assert image.shape == source.shape == (32, 32, 3)
        np.testing.assert_array_equal(image[~mask], source[~mask])  # paste-back: only the mask changes

    # A finished run is skipped by its step marker (the one the pipeline runner writes): nothing
    # is scored again and the summary is the recorded one.
    marker = json.loads((out / ".steps" / "generate.json").read_text())
    assert marker["summary"] == summary
    assert main(["generate", "--config", str(config), "--json", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == summary and "generate: already done" in captured.err
    # Killed after the last sample but before its marker: the rerun resumes sample by sample.
    (out / ".steps" / "generate.json").unlink()
    again = _generate(config, capsys)
    assert again["skipped_resume"] == n and again["written"] == 0
    assert len(read_manifest(out)) == n


@pytest.mark.parametrize("name", ["waterbirds", "celeba", "metashift"])
def test_example_configs_validate_and_fit_their_node(name) -> None:
    from pathlib import Path

    from raydbb.config import load_config
    from raydbb.ddb.select import class_quota

    cfg = load_config(Path(__file__).parents[1] / "jobs" / "configs" / f"{name}.yaml")
    assert cfg.device == "cuda" and cfg.inpaint.dtype == "float16"
    stages = [cfg.mask.resources, cfg.inpaint.resources, cfg.prune.resources]
    gpus = sum(r.actors * r.num_gpus for r in stages)
    assert all(r.num_gpus > 0 for r in stages) and gpus <= (1 if name == "metashift" else 4)
    names = {"waterbirds": ["landbird", "waterbird"], "celeba": ["not_blond", "blond"],
             "metashift": ["cat", "dog"]}[name]
    assert set(cfg.mask.text_prompts or {}) <= set(names)
    class_quota(cfg.select, names, [10, 10])  # per-class fractions name real classes


def test_bad_config_fails_in_one_line_before_scoring(setup_run, capsys, tmp_path) -> None:
    root, config = setup_run
    out = tmp_path / "fresh"
    (out / "erm").mkdir(parents=True)
    for f in ("model.safetensors", "classifier.json"):
        (out / "erm" / f).write_bytes((root / "run" / "erm" / f).read_bytes())
    bad = "select.per_class_fraction={seabird: 0.5}"
    assert main(["generate", "--config", str(config), f"out={out}", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown class 'seabird'" in err
    assert not (out / "select").exists()  # nothing was scored

    assert main(["generate", "--config", str(config), f"out={tmp_path / 'none'}"]) == 2
    err = capsys.readouterr().err
    assert "ERM checkpoint" in err and "generate.classifier=DIR" in err


def test_rerun_with_changed_settings_is_refused_then_recorded_when_allowed(ray_local, setup_run, capsys):
    root, config = setup_run
    out = root / "run"
    if not (out / "manifest").is_dir():
        _generate(config, capsys)
    before = pd.read_parquet(out / "manifest")
    changed = ["inpaint.guidance_scale=3.0", "prune.delta=0.5"]
    assert main(["generate", "--config", str(config), "--no-progress", *changed]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds samples made with other settings" in err
    assert "inpaint.guidance_scale: 2.0 -> 3.0" in err and "prune.delta: 0.0 -> 0.5" in err
    assert "--allow-changed" in err and "raydbb prune" in err
    # Nothing changed on disk: the recorded settings are still the ones the samples were made with.
    assert load_config(out / "generate_config.yaml").inpaint.guidance_scale == 2.0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifest"), before)

    # The same name for other model files (a retrained or updated inpainter) is another setting too.
    scheduler = root / "sd" / "scheduler" / "scheduler_config.json"
    original = scheduler.read_text()
    scheduler.write_text(original + "\n")
    try:
        assert main(["generate", "--config", str(config), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert "holds samples made with other settings (stamp.inpaint.model: " in err
    finally:
        scheduler.write_text(original)

    again = _generate(config, capsys, "--allow-changed", *changed)
    assert again["written"] == 0  # every sample was already there
    history = json.loads((out / "generate_changes.json").read_text())
    assert history[-1]["changed"] == ["inpaint.guidance_scale: 2.0 -> 3.0", "prune.delta: 0.0 -> 0.5"]
    _generate(config, capsys, "--allow-changed")  # back to the original settings for other tests


def test_generate_uses_the_tokens_invert_left_in_out_as_the_pipeline_does(tmp_path) -> None:
    from raydbb.ddb.generate import with_learned_tokens

    cfg = load_config(None, [f"out={tmp_path}"])
    resolved, note = with_learned_tokens(cfg)
    assert resolved.inpaint.tokens_dir is None and note.startswith("no learned tokens")
    (tmp_path / "tokens").mkdir()
    resolved, note = with_learned_tokens(cfg)
    assert resolved.inpaint.tokens_dir == str(tmp_path / "tokens") and note.startswith("using the learned")
    given = load_config(None, [f"out={tmp_path}", "inpaint.tokens_dir=/elsewhere"])
    assert with_learned_tokens(given) == (given, "")
