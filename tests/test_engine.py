"""The engine core with toy model stages: Ray actor pools vs the plain loop, skips, resume."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import ray.cloudpickle

from raydbb.config import StageResources
from raydbb.data.images import read_image, read_mask, write_png_atomic
from raydbb.ddb.generate import generate_samples, source_rows
from raydbb.ddb.stages.expand import ExpandStage, make_sample_id
from raydbb.engine.chain import ChainStage
from raydbb.engine.manifest import read_manifest
from raydbb.engine.seeds import derive_seed
from raydbb.engine.stage import Batch, Stage, empty_image, empty_mask, object_column, pending_rows
from raydbb.engine.stages.load import LoadStage
from raydbb.engine.stages.write import WriteStage

# Ray workers cannot import test modules: ship this module's toy stages by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

CLASSES = ["a", "b", "c"]  # three classes: every source fans out to two targets
IO = StageResources(num_cpus=0.25, batch_size=3)


class ToyMask(Stage):
    """Dataset masks; an empty one is a ``no_mask`` skip (what the real mask stage does)."""

    name = "mask"

    def setup(self) -> None:
        self.ready = True

    def __call__(self, batch: Batch) -> Batch:
        assert self.ready  # setup ran in this actor before any call
        pending = pending_rows(batch)
        reasons = np.array(batch["prune_reason"], dtype=object)
        masks = []
        for i, path in enumerate(batch["dataset_mask_path"]):
            mask = read_mask(path).astype(np.uint8) if pending[i] else empty_mask()
            if pending[i] and not mask.any():
                reasons[i] = "no_mask"
            masks.append(mask)
        n = len(masks)
        return {**batch, "mask": object_column(masks), "prune_reason": reasons,
                "mask_source": np.full(n, "dataset", dtype=object),
                "mask_model": np.full(n, "", dtype=object)}


class ToyInpaintPrune(Stage):
    """Paints the masked pixels one colour drawn from the row's seed; keeps even-sum colours.

    Fails on source ``s3`` while ``fail_marker`` exists (a crash in the middle of a run).
    """

    name = "inpaint"

    def __init__(self, resources: StageResources, fail_marker: Path | None = None) -> None:
        super().__init__(resources)
        self.fail_marker = str(fail_marker) if fail_marker else None

    def __call__(self, batch: Batch) -> Batch:
        if self.fail_marker and Path(self.fail_marker).exists() and "s3" in set(batch["source_id"]):
            raise RuntimeError("boom: simulated crash")
        pending = pending_rows(batch)
        reasons = np.array(batch["prune_reason"], dtype=object)
        images, kept = [], np.zeros(len(reasons), dtype=bool)
        for i in range(len(reasons)):
            if not pending[i]:
                images.append(empty_image())
                continue
            image = np.array(batch["source_image"][i])
            colour = np.random.default_rng(int(batch["seed"][i])).integers(0, 256, 3)
            image[np.asarray(batch["mask"][i]) > 0] = colour
            images.append(image)
            kept[i] = colour.sum() % 2 == 0
            reasons[i] = "kept" if kept[i] else "prob"
        prompts = [f"a photo of a {CLASSES[t]}" for t in batch["target_label"]]
        return {**batch, "image": object_column(images), "kept": kept, "prune_reason": reasons,
                "prompt": np.array(prompts, dtype=object),
                "inpaint_model": np.full(len(images), "toy", dtype=object)}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> pd.DataFrame:
    """Eight ragged source images: s5 is corrupt, s6 has an empty mask."""
    root = tmp_path_factory.mktemp("toydata")
    rng = np.random.default_rng(0)
    ids, paths, masks, labels = [], [], [], []
    for i in range(8):
        h, w = 10 + i, 12 + (i % 3)
        image, mask = rng.integers(0, 256, (h, w, 3), dtype=np.uint8), np.zeros((h, w), dtype=bool)
        if i != 6:
            mask[2:6, 3:8] = True
        write_png_atomic(root / f"s{i}.png", image)
        write_png_atomic(root / f"s{i}_mask.png", mask)
        ids.append(f"s{i}")
        paths.append(str(root / f"s{i}.png"))
        masks.append(str(root / f"s{i}_mask.png"))
        labels.append(i % 3)
    (root / "s5.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    frame = pd.DataFrame({"sample_id": ids, "path": paths, "label": labels, "split": "train", "mask": masks})
    return source_rows(frame)


def _stages(out: Path, fail_marker: Path | None = None) -> list[Stage]:
    return [
        LoadStage(IO),
        ToyMask(StageResources(actors=1, num_cpus=0.5, batch_size=2)),
        ExpandStage(CLASSES, n_variants=1, run_seed=7, resources=IO),
        ToyInpaintPrune(StageResources(actors=2, num_cpus=0.5, batch_size=2), fail_marker),
        WriteStage(out, {"classifier": "toy-erm"}, IO),
    ]


def _run(sources: pd.DataFrame, out: Path, engine: str, fail_marker: Path | None = None) -> dict:
    return generate_samples(sources, _stages(out, fail_marker), out, class_names=CLASSES, n_variants=1,
                            engine=engine, rows_per_part=5, progress=False)


def _expected_ids(sources: pd.DataFrame) -> set[str]:
    return {make_sample_id(s, CLASSES[t], 0) for s, y in zip(sources["source_id"], sources["source_label"],
                                                             strict=True) for t in range(3) if t != y}


def test_ray_actor_pools_match_plain_loop_and_record_skips(ray_local, sources, tmp_path) -> None:
    ray_summary = _run(sources, tmp_path / "ray", "ray")
    loop_summary = _run(sources, tmp_path / "loop", "loop")
    assert ray_summary["written"] == loop_summary["written"] == 16
    assert ray_summary["pruned"] == loop_summary["pruned"]
    assert ray_summary["pruned"]["error:image_read"] == 2 and ray_summary["pruned"]["no_mask"] == 2
    assert ray_summary["generated"] == 12 and ray_summary["kept"] == loop_summary["kept"]
    assert set(ray_summary["stages"]) >= {"load", "mask", "expand", "inpaint", "write"}

    cols = ["sample_id", "source_id", "source_label", "target_label", "seed", "variant", "kept",
            "prune_reason", "image_path", "mask_path", "prompt", "classifier", "inpaint_model", "error"]
    ray_rows = read_manifest(tmp_path / "ray", resolve_paths=False).sort_values("sample_id")[cols]
    loop_rows = read_manifest(tmp_path / "loop", resolve_paths=False).sort_values("sample_id")[cols]
    pd.testing.assert_frame_equal(ray_rows.reset_index(drop=True), loop_rows.reset_index(drop=True))
    assert set(ray_rows["sample_id"]) == _expected_ids(sources)

    rows = ray_rows.set_index("sample_id")
    assert rows.loc["s1__to-c__v0", "seed"] == derive_seed(7, "s1", 2, 0)
    bad = rows.loc["s5__to-a__v0"]
    assert bad["prune_reason"] == "error:image_read" and "s5.png" in bad["error"] and bad["image_path"] == ""
    empty = rows.loc["s6__to-b__v0"]
    assert empty["prune_reason"] == "no_mask" and empty["image_path"] == "" and not empty["kept"]
    assert (rows["classifier"] == "toy-erm").all()
    for sid in ("s0__to-b__v0", "s7__to-a__v0"):
        a = read_image(tmp_path / "ray" / rows.loc[sid, "image_path"])
        b = read_image(tmp_path / "loop" / rows.loc[sid, "image_path"])
        np.testing.assert_array_equal(a, b)  # same seed -> same pixels, whatever the batching
        src = read_image(sources.set_index("source_id").loc[rows.loc[sid, "source_id"], "source_path"])
        assert a.shape == src.shape  # ragged sizes survive the trip through Ray Data
        assert read_mask(tmp_path / "ray" / rows.loc[sid, "mask_path"]).sum() == 20


def test_fused_layout_runs_the_chain_in_one_pool_with_the_same_rows(ray_local, sources, tmp_path) -> None:
    fused = ChainStage(_stages(tmp_path / "fused"), StageResources(actors=2, num_cpus=0.5, batch_size=3))
    summary = generate_samples(sources, [fused], tmp_path / "fused", class_names=CLASSES, n_variants=1,
                               engine="ray", rows_per_part=5, progress=False)
    loop = _run(sources, tmp_path / "loop", "loop")
    assert summary["written"] == loop["written"] == 16 and summary["pruned"] == loop["pruned"]
    # every inner stage keeps its own timing, in running order, then the chain's
    assert list(summary["stages"])[:6] == ["load", "mask", "expand", "inpaint", "write", "fused"]
    cols = ["sample_id", "seed", "kept", "prune_reason", "image_path", "mask_path", "error"]
    a = read_manifest(tmp_path / "fused", resolve_paths=False).sort_values("sample_id")[cols]
    b = read_manifest(tmp_path / "loop", resolve_paths=False).sort_values("sample_id")[cols]
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    path = a.set_index("sample_id").loc["s0__to-b__v0", "image_path"]
    np.testing.assert_array_equal(read_image(tmp_path / "fused" / path), read_image(tmp_path / "loop" / path))


def test_chain_concatenates_ragged_object_columns_and_passes_empty_batches() -> None:
    from raydbb.engine.chain import concat_columns

    a = {"id": np.array([1, 2]), "img": object_column([np.zeros((2, 2)), np.ones((3, 1))])}
    b = {"id": np.array([3]), "img": object_column([np.full((2, 2), 7.0)])}
    out = concat_columns([a, b])
    assert out["id"].tolist() == [1, 2, 3] and out["img"].dtype == object and out["img"].shape == (3,)
    assert out["img"][1].shape == (3, 1) and out["img"][2][0, 0] == 7.0
    chain = ChainStage([ExpandStage(CLASSES, 1, 0, IO)], StageResources(batch_size=4))
    empty = {"source_id": np.array([], dtype=object), "source_label": np.array([], dtype=np.int64)}
    assert len(chain(empty)["source_id"]) == 0


def test_fused_layout_needs_gpus_when_its_stages_do(tmp_path) -> None:
    from raydbb.config import build_config
    from raydbb.ddb.generate import generation_stages
    from raydbb.errors import ConfigError

    cfg = build_config({"out": str(tmp_path), "generate": {"layout": "fused"},
                        "inpaint": {"resources": {"num_gpus": 1}}})
    with pytest.raises(ConfigError, match=r"generate.fused.num_gpus=0, but inpaint run on GPUs"):
        generation_stages(cfg, CLASSES, tmp_path, np.zeros(3))
    cfg = build_config({"out": str(tmp_path), "generate": {"layout": "fused"}})
    (chain,) = generation_stages(cfg, CLASSES, tmp_path, np.zeros(3))
    assert [s.name for s in chain.stages] == ["load", "mask", "expand", "inpaint", "prune", "write"]
    assert chain.resources.actors == 2 and chain.stateful


def test_resume_after_partial_and_crashed_runs(ray_local, sources, tmp_path) -> None:
    out = tmp_path / "run"
    # An earlier run that covered 3 sources (the plain loop: resume is the driver's job, and
    # each Ray run costs seconds of actor start-up on this machine).
    first = _run(sources.iloc[:3], out, "loop")
    assert first["written"] == 6

    marker = tmp_path / "fail"
    marker.touch()
    with pytest.raises(Exception, match="boom"):
        _run(sources, out, "ray", fail_marker=marker)
    marker.unlink()
    # what a killed process leaves: hidden temporary files, ignored and removed on resume
    (out / "manifest" / ".part-dead.parquet.1.tmp").write_bytes(b"PAR1")
    (out / "images" / ".s4__to-a__v0.png.1.tmp").write_bytes(b"\x89PNG")

    done_before = len(read_manifest(out))
    final = _run(sources, out, "loop")  # the same driver code as with Ray; Ray ran the todo path above
    assert final["expected"] == 16
    assert final["skipped_resume"] == done_before >= 6
    assert final["written"] == 16 - done_before
    manifest = read_manifest(out)
    assert len(manifest) == 16 and manifest["sample_id"].is_unique
    assert set(manifest["sample_id"]) == _expected_ids(sources)
    assert not list(out.rglob("*.tmp"))

    again = _run(sources, out, "ray")  # nothing left: no Ray work is started at all
    assert again["skipped_resume"] == 16 and again["written"] == 0
    assert len(read_manifest(out)) == 16


def test_seed_is_a_stable_function_of_the_sample_only() -> None:
    # A golden value: seeds must not change between processes, versions or machines.
    assert derive_seed(0, "train_17", 1, 0) == 2152361274667650466
    seeds = {derive_seed(r, s, t, v) for r in (0, 1) for s in ("a", "b") for t in (0, 1) for v in (0, 1)}
    assert len(seeds) == 16 and all(0 <= s < 2**63 for s in seeds)


def test_expand_fans_out_to_other_classes_and_variants() -> None:
    stage = ExpandStage(["cat", "dog", "fox bat"], n_variants=2, run_seed=5)
    batch = {"source_id": np.array(["x", "y"], dtype=object), "source_label": np.array([0, 2]),
             "source_image": object_column([np.zeros((2, 3, 3), np.uint8), np.ones((4, 1, 3), np.uint8)])}
    out = stage(batch)
    assert list(out["sample_id"][:2]) == ["x__to-dog__v0", "x__to-dog__v1"]
    # a class name with a space is sanitised, with a hash so that ids cannot collide
    assert out["sample_id"][2].startswith("x__to-fox_bat__v0-") and out["sample_id"][2] != out["sample_id"][3]
    assert out["target_label"].tolist() == [1, 1, 2, 2, 0, 0, 1, 1]
    assert out["variant"].tolist() == [0, 1] * 4
    assert out["seed"][5] == derive_seed(5, "y", 0, 1)
    assert out["source_image"][7].shape == (4, 1, 3)  # the row's own image travels with it
    # resume: only the listed (target, variant) pairs
    todo = stage({**batch, "todo": np.array(["2:1", ""], dtype=object)})
    assert todo["sample_id"].tolist() == [make_sample_id("x", "fox bat", 1)] and "todo" not in todo


def test_auto_block_rows() -> None:
    from raydbb.engine.adapter import auto_block_rows

    stages = _stages(Path("/tmp/unused"))  # smallest batch size 2
    assert auto_block_rows(10, stages) == 2  # small run: many small blocks so stages overlap
    assert auto_block_rows(800, stages) == 50
    assert auto_block_rows(20000, stages) == 64  # large run: bounded per-block overhead
    eights = [SimpleNamespace(batch_size=8), SimpleNamespace(batch_size=16)]
    assert auto_block_rows(200, eights) == 16  # 13 rounded up to whole batches of 8
    assert auto_block_rows(48, eights) == 8 and auto_block_rows(20000, eights) == 64


def test_tenths_log_prints_once_per_tenth_reached(capsys) -> None:
    from raydbb.progress import TenthsLog

    log = TenthsLog("generate:", 25, "samples")
    for done in range(1, 26):
        log(done)
    lines = capsys.readouterr().err.splitlines()
    # 10 * done // 25 steps up at 3, 5, 8, 10, 13, 15, 18, 20, 23, 25
    assert lines == [f"generate: {d}/25 samples" for d in (3, 5, 8, 10, 13, 15, 18, 20, 23, 25)]
    jump = TenthsLog("x", 25)
    jump(24, " (big batch)")
    jump(25)
    assert capsys.readouterr().err.splitlines() == ["x 24/25 (big batch)", "x 25/25"]


def test_generate_without_progress_bars_logs_its_progress(sources, tmp_path, capsys) -> None:
    summary = _run(sources, tmp_path / "out", "loop")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("generate: ")]
    total = len(_expected_ids(sources))
    assert summary["written"] == total  # the truncated image's rows are recorded skips
    assert lines and lines[-1] == f"generate: {total}/{total} samples"


def test_device_cpu_keeps_gpu_requests_but_runs_models_on_cpu():
    from raydbb.engine.executor import arrange

    gpu = StageResources(num_gpus=0.5)
    assert Stage(gpu).device == "cuda"  # a GPU request means CUDA by default
    stages = arrange([Stage(gpu), Stage(StageResources())], "pools", StageResources(), "generate.fused",
                     device="cpu")
    assert [s.device for s in stages] == ["cpu", "cpu"]
    assert stages[0].resources.num_gpus == 0.5  # still asked of Ray, so placed on a GPU node
