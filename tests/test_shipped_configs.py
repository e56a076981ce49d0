"""Every config shipped with raydbb validates, and every path it names either exists, is produced by
the run itself, is a model id on the hub, or is a documented placeholder for the user's storage."""

from __future__ import annotations

from pathlib import Path

import pytest

from raydbb.config import RaydbbConfig, load_config
from raydbb.configs import DEMO_CONFIG, FAST_CONFIG, demo_config

ROOT = Path(__file__).resolve().parents[1]
JOB_CONFIGS = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))
# Where the GPU job configs expect the user's data and weights (jobs/README.md: "Paths in the
# configs ... are examples: point them at your storage").
PLACEHOLDER_ROOTS = ("/data/", "/models/", "/mnt/shared/")


def named_paths(cfg: RaydbbConfig) -> dict[str, str]:
    fields = {
        "data.root": cfg.data.root, "classifier.weights": cfg.classifier.weights,
        "inpaint.model": cfg.inpaint.model, "inpaint.tokens_dir": cfg.inpaint.tokens_dir,
        "generate.classifier": cfg.generate.classifier, "retrain.checkpoint": cfg.retrain.checkpoint,
        "mask.detector": cfg.mask.detector, "mask.segmenter": cfg.mask.segmenter,
    }
    return {k: v for k, v in fields.items() if v}


def is_hub_id(value: str) -> bool:
    parts = value.split("/")
    return len(parts) == 2 and all(parts) and not value.startswith((".", "/")) and not Path(value).exists()


def check(cfg: RaydbbConfig) -> list[str]:
    problems = []
    out = Path(cfg.out)
    for name, value in named_paths(cfg).items():
        path = Path(value)
        made_by_run = (path == out or out in path.parents
                       or (name == "data.root" and cfg.data.name == "synthetic"))  # the synth step draws it
        if path.exists() or made_by_run or is_hub_id(value) or value.startswith(PLACEHOLDER_ROOTS):
            continue
        problems.append(f"{name}={value}")
    return problems


@pytest.mark.parametrize("path", JOB_CONFIGS, ids=lambda p: p.name)
def test_job_config_validates_and_names_only_reachable_paths(path):
    cfg = load_config(path)
    assert check(cfg) == []


def test_synthetic_job_runs_the_packaged_inpainter_as_shipped():
    cfg = load_config(ROOT / "jobs" / "configs" / "synthetic.yaml")
    assert (Path(cfg.inpaint.model) / "model_index.json").is_file()


@pytest.mark.parametrize("fast", [False, True], ids=[DEMO_CONFIG, FAST_CONFIG])
def test_packaged_demo_configs_validate_and_name_only_reachable_paths(tmp_path, fast):
    assert check(demo_config(tmp_path / "demo", fast=fast)) == []


def test_placeholder_roots_are_documented():
    text = " ".join((ROOT / "jobs" / "README.md").read_text().split())
    assert "are examples: point them at your storage" in text


def test_saved_configs_name_shipped_models_by_package_name_not_install_path(tmp_path):
    # A run folder's config.yaml and compare's fingerprints must survive reinstalling raydbb
    # elsewhere (another clone, another venv): shipped models are written as package:<name>.
    from raydbb.assets import synthetic_inpainter_path
    from raydbb.compare import fingerprint

    cfg = demo_config(tmp_path / "demo")
    assert Path(cfg.inpaint.model) == synthetic_inpainter_path()  # resolved for use
    cfg.to_yaml(tmp_path / "saved.yaml")
    text = (tmp_path / "saved.yaml").read_text()
    assert "model: package:synthetic_inpainter\n" in text
    assert "weights: package:synthetic_backbone/backbone.safetensors\n" in text
    assert str(synthetic_inpainter_path().parent) not in text
    assert load_config(tmp_path / "saved.yaml").inpaint.model == cfg.inpaint.model
    by_path = cfg.model_copy(update={"inpaint": cfg.inpaint.model_copy(
        update={"model": str(synthetic_inpainter_path())})})
    # DDB reads the whole config, inpaint.model included (ERM's fingerprint does not hold it).
    assert fingerprint(by_path, "ddb", 0, {}) == fingerprint(cfg, "ddb", 0, {})
    other = cfg.model_copy(update={"inpaint": cfg.inpaint.model_copy(update={"model": "/elsewhere/model"})})
    assert fingerprint(other, "ddb", 0, {}) != fingerprint(cfg, "ddb", 0, {})
    assert fingerprint(other, "erm", 0, {}) == fingerprint(cfg, "erm", 0, {})
