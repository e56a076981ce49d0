"""raydbb.workflow: step markers, skip on rerun, re-run from the first changed step, a real cheap run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from raydbb.config import RaydbbConfig, load_config
from raydbb.errors import ConfigError, RaydbbError
from raydbb.rundir import CONFIG_FILE, STALE_DIR, STEPS_DIR
from raydbb.workflow import (
    GENERATE,
    INVERT,
    TRAIN_ERM,
    Step,
    pipeline_steps,
    read_marker,
    resolve_config,
    run_steps,
    step_inputs,
)

# ----------------------------------------------------------------------------------------------
# Marker logic on three small steps that write files (the real steps are exercised further down).


class Recorder:
    """Three file-writing steps a -> b -> c; counts how often each ran."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def step(self, name: str, inputs: tuple[str, ...], fail: bool = False) -> Step:
        def run(cfg: RaydbbConfig, progress: bool) -> dict[str, Any]:
            self.calls.append(name)
            if fail:
                raise RaydbbError(f"{name} failed")
            Path(cfg.out, name).mkdir(parents=True, exist_ok=True)
            Path(cfg.out, name, "result.txt").write_text(f"{name} epochs={cfg.train.epochs}\n")
            return {"wrote": name}

        return Step(name, f"step {name}", inputs, run,
                    done_file=lambda c: Path(c.out, name, "result.txt"),
                    outputs=lambda c: [Path(c.out, name).resolve()])

    def pipeline(self) -> list[Step]:
        return [self.step("a", ("data",)), self.step("b", ("train",)), self.step("c", ("prune",))]


def _cfg(out: Path, *overrides: str) -> RaydbbConfig:
    return load_config(None, [f"out={out}", *overrides])


def test_rerun_skips_finished_steps_without_calling_them(tmp_path: Path) -> None:
    rec = Recorder()
    first = run_steps(_cfg(tmp_path), pipeline=rec.pipeline())
    assert rec.calls == ["a", "b", "c"]
    assert [r["status"] for r in first.values()] == ["ran", "ran", "ran"]
    marker = read_marker(tmp_path, "b")
    assert marker["summary"] == {"wrote": "b"} and marker["inputs"]["train.epochs"] == 10
    assert set(marker["upstream"]) == {"a"}

    start = time.perf_counter()
    second = run_steps(_cfg(tmp_path), pipeline=rec.pipeline())
    assert time.perf_counter() - start < 2.0
    assert rec.calls == ["a", "b", "c"]  # nothing ran again
    assert {r["status"] for r in second.values()} == {"skipped"}
    assert second["b"]["summary"] == {"wrote": "b"}


def test_changed_input_reruns_from_that_step_and_archives_old_outputs(tmp_path: Path, capsys) -> None:
    rec = Recorder()
    run_steps(_cfg(tmp_path, "train.epochs=1"), pipeline=rec.pipeline())
    rec.calls.clear()
    capsys.readouterr()

    result = run_steps(_cfg(tmp_path, "train.epochs=2"), pipeline=rec.pipeline())
    assert rec.calls == ["b", "c"]  # a's inputs (data) did not change; c runs because b ran again
    assert [result[n]["status"] for n in "abc"] == ["skipped", "ran", "ran"]
    text = capsys.readouterr().out
    assert "train.epochs: 1 -> 2" in text and "earlier step(s) b ran again" in text
    assert (tmp_path / "b" / "result.txt").read_text() == "b epochs=2\n"
    stale = sorted((tmp_path / STALE_DIR).iterdir())
    assert [p.name.split("-")[-2] for p in stale] == ["b", "c"]
    assert (stale[0] / "b" / "result.txt").read_text() == "b epochs=1\n"  # old output kept, not deleted


def test_resource_fields_do_not_rerun_anything(tmp_path: Path) -> None:
    rec = Recorder()
    run_steps(_cfg(tmp_path), pipeline=rec.pipeline())
    rec.calls.clear()
    faster = _cfg(tmp_path, "train.num_workers=4", "prune.resources.actors=3", "prune.resources.num_gpus=0.5",
                  "ray.address=auto", "device=cuda")
    run_steps(faster, pipeline=rec.pipeline())
    assert rec.calls == []
    inputs = step_inputs(rec.pipeline()[2], _cfg(tmp_path))
    assert "prune.delta" in inputs and not any("resources" in k for k in inputs)


def test_an_added_field_at_its_neutral_value_leaves_finished_steps_done(tmp_path: Path) -> None:
    """train.lr_schedule came after run folders existed: at "constant" (what training did before it)
    it is no input of any step, so a marker written without it still matches; "cosine" reruns."""
    rec = Recorder()
    run_steps(_cfg(tmp_path), pipeline=rec.pipeline())
    marker = read_marker(tmp_path, "b")
    assert marker is not None and not any("lr_schedule" in k for k in marker["inputs"])
    rec.calls.clear()
    run_steps(_cfg(tmp_path, "train.lr_schedule=constant"), pipeline=rec.pipeline())
    assert rec.calls == []
    run_steps(_cfg(tmp_path, "train.lr_schedule=cosine"), pipeline=rec.pipeline())
    assert rec.calls == ["b", "c"]
    assert read_marker(tmp_path, "b")["inputs"]["train.lr_schedule"] == "cosine"


def test_refuse_mode_names_the_changed_field_and_runs_nothing(tmp_path: Path) -> None:
    rec = Recorder()
    run_steps(_cfg(tmp_path), pipeline=rec.pipeline())
    rec.calls.clear()
    with pytest.raises(RaydbbError, match=r"step a .* out of date: config changed \(data.split_seed: 0 -> 3"):
        run_steps(_cfg(tmp_path, "data.split_seed=3"), pipeline=rec.pipeline(), on_change="refuse")
    assert rec.calls == [] and not (tmp_path / STALE_DIR).exists()


def test_failed_step_leaves_no_marker_and_runs_again(tmp_path: Path) -> None:
    rec = Recorder()
    broken = [rec.step("a", ("data",)), rec.step("b", ("train",), fail=True)]
    with pytest.raises(RaydbbError, match="b failed"):
        run_steps(_cfg(tmp_path), pipeline=broken)
    assert read_marker(tmp_path, "a") is not None and read_marker(tmp_path, "b") is None
    rec.calls.clear()
    run_steps(_cfg(tmp_path), pipeline=rec.pipeline())
    assert rec.calls == ["b", "c"]


def test_missing_output_or_corrupt_marker_reruns_the_step(tmp_path: Path) -> None:
    rec = Recorder()
    run_steps(_cfg(tmp_path), pipeline=rec.pipeline())
    (tmp_path / "c" / "result.txt").unlink()
    (tmp_path / STEPS_DIR / "a.json").write_text("{not json")
    rec.calls.clear()
    run_steps(_cfg(tmp_path), pipeline=rec.pipeline())
    assert rec.calls == ["a", "b", "c"]  # a re-ran, so b and c are out of date too


def test_step_subset_and_unknown_step(tmp_path: Path) -> None:
    rec = Recorder()
    assert list(run_steps(_cfg(tmp_path), ["a", "c"], pipeline=rec.pipeline())) == ["a", "c"]
    assert rec.calls == ["a", "c"]
    with pytest.raises(ConfigError, match=r"step 'retrian': expected one of \['a', 'b', 'c'\]"):
        run_steps(_cfg(tmp_path), ["retrian"], pipeline=rec.pipeline())


def test_resolved_config_is_saved_and_reloads(tmp_path: Path) -> None:
    run_steps(_cfg(tmp_path, "inpaint.steps=7"), pipeline=Recorder().pipeline())
    saved = load_config(tmp_path / CONFIG_FILE)
    assert saved == resolve_config(_cfg(tmp_path, "inpaint.steps=7"))
    assert saved.inpaint.tokens_dir == str(tmp_path / "tokens") and saved.inpaint.steps == 7


def test_pipeline_composition(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg = resolve_config(_cfg(tmp_path / "run", f"data.root={data}"))
    assert [s.name for s in pipeline_steps(cfg)] == ["synth", "train_erm", "invert", "generate", "retrain",
                                                     "evaluate"]
    data.mkdir()
    (data / "metadata.csv").write_text("path,label\n")  # a dataset already there: no synth
    assert [s.name for s in pipeline_steps(cfg)][:2] == ["train_erm", "invert"]
    own = resolve_config(_cfg(tmp_path / "run", f"data.root={data}", f"inpaint.tokens_dir={tmp_path}/tok"))
    assert "invert" not in [s.name for s in pipeline_steps(own)]  # tokens learned elsewhere
    with pytest.raises(ConfigError, match=r"step 'invert' is not part of this run \(inpaint.tokens_dir"):
        run_steps(own, ["invert"])


# ----------------------------------------------------------------------------------------------
# Real steps: draw the synthetic benchmark, train a tiny ERM (Ray Train local mode), evaluate; rerun.


@pytest.mark.slow
def test_real_synth_train_evaluate_then_rerun_skips(ray_local, tmp_path: Path, capsys) -> None:
    overrides = [
        f"out={tmp_path / 'run'}", f"data.root={tmp_path / 'run' / 'data'}",
        "data.synthetic.n_train=48", "data.synthetic.n_val=16", "data.synthetic.n_test=16",
        "data.synthetic.size=32", "classifier.arch=small_cnn", "classifier.pretrained=false",
        "classifier.image_size=16", "classifier.width=4", "train.epochs=1", "train.batch_size=16",
        "train.num_workers=0", "train.augment=false",
    ]
    cfg = load_config(None, overrides)
    steps = ["synth", "train_erm", "evaluate"]
    first = run_steps(cfg, steps, progress=False)
    assert [r["status"] for r in first.values()] == ["ran"] * 3
    run = tmp_path / "run"
    assert (run / "data" / "metadata.csv").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"erm"} and set(metrics["erm"]) == {"val", "test", "run"}
    assert metrics["erm"]["test"]["num_samples"] == 16
    assert first["evaluate"]["summary"]["erm"]["test"] == metrics["erm"]["test"]["worst_group_accuracy"]
    weights = run / "erm" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns

    start = time.perf_counter()
    second = run_steps(cfg, steps, progress=False)
    assert time.perf_counter() - start < 5.0
    assert {r["status"] for r in second.values()} == {"skipped"}
    assert weights.stat().st_mtime_ns == stamp

    # `raydbb evaluate` on the run is its evaluate step: the same marker, so up to date -> skipped;
    # with OUT/metrics.json gone it runs again and writes the same numbers.
    from raydbb.cli import main

    capsys.readouterr()
    written = (run / "metrics.json").stat().st_mtime_ns
    assert main(["evaluate", "--no-progress", *overrides]) == 0
    assert "evaluate: already done" in capsys.readouterr().out
    assert (run / "metrics.json").stat().st_mtime_ns == written
    (run / "metrics.json").unlink()
    assert main(["evaluate", "--no-progress", *overrides]) == 0
    assert f"wrote {run / 'metrics.json'}" in capsys.readouterr().out
    assert json.loads((run / "metrics.json").read_text()) == metrics


def test_a_model_replaced_under_the_same_name_makes_invert_and_generate_out_of_date(tmp_path: Path) -> None:
    from raydbb.storage import folder_digest

    model = tmp_path / "model"
    (model / "vae").mkdir(parents=True)
    (model / "vae" / "weights.bin").write_bytes(b"round 2")
    cfg = load_config(None, [f"out={tmp_path / 'run'}", f"inpaint.model={model}"])
    first = step_inputs(GENERATE, cfg)["stamp.inpaint.model"]
    assert first == f"{model}@{folder_digest(model)}"
    assert step_inputs(INVERT, cfg)["stamp.inpaint.model"] == first
    assert "stamp.inpaint.model" not in step_inputs(TRAIN_ERM, cfg)  # ERM does not read the inpainter
    (model / "vae" / "weights.bin").write_bytes(b"round 3")  # same name, same size, new contents
    assert step_inputs(GENERATE, cfg)["stamp.inpaint.model"] != first
    # The digest is of the contents, not of where they live; a hub id is its own stamp.
    copy = tmp_path / "copy"
    (copy / "vae").mkdir(parents=True)
    (copy / "vae" / "weights.bin").write_bytes(b"round 3")
    assert folder_digest(copy) == folder_digest(model)
    (copy / "vae" / "weights.bin").rename(copy / "vae" / "other.bin")
    assert folder_digest(copy) != folder_digest(model)
    sd2 = "stabilityai/stable-diffusion-2-inpainting"
    hub = load_config(None, [f"out={tmp_path / 'run'}", f"inpaint.model={sd2}"])
    assert step_inputs(GENERATE, hub)["stamp.inpaint.model"] == sd2


def test_the_packaged_inpainter_is_stamped_by_its_package_name(tmp_path: Path) -> None:
    from raydbb.assets import QUALITY_GATE_RECORD, synthetic_inpainter_path
    from raydbb.storage import folder_digest

    path = synthetic_inpainter_path()
    expected = f"package:synthetic_inpainter@{folder_digest(path, ignore=(QUALITY_GATE_RECORD,))}"
    for name in (str(path), "package:synthetic_inpainter"):  # as the demo fills it in, as a config names it
        cfg = load_config(None, [f"out={tmp_path}", f"inpaint.model={name}"])
        assert step_inputs(GENERATE, cfg)["stamp.inpaint.model"] == expected
