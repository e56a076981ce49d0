"""Placement check (raydbb.engine.placement): the pools of a pass packed onto the alive nodes, by
hand-counted cases; and the run summary's per-node and per-actor figures. No Ray."""

from __future__ import annotations

from raydbb.config import StageResources
from raydbb.engine.placement import Node, placement_problems
from raydbb.engine.stage import Stage

MASKS = {"raydbb-stages": "mask-prune-select"}
INPAINT = {"raydbb-stages": "inpaint"}


def stage(name: str, actors: int = 1, cpus: float = 1, gpus: float = 0, labels=None, tasks=False) -> Stage:
    s = Stage(StageResources(actors=actors, num_cpus=cpus, num_gpus=gpus, node_labels=labels or {}))
    s.name = name
    s.stateful = not tasks
    return s


def cluster() -> list[Node]:
    # the launcher's node types: head, one gpu_masks node, one gpu_inpaint node
    return [Node("head0000", 8, 0, {"raydbb-stages": "io"}), Node("masks000", 16, 1, MASKS),
            Node("inpaint0", 96, 8, INPAINT)]


def test_the_launchers_plan_fits_its_node_types():
    stages = [stage("load", cpus=0.5, tasks=True), stage("mask", 1, 4, 0.5, MASKS),
              stage("inpaint", 8, 8, 1, INPAINT), stage("prune", 1, 4, 0.25, MASKS),
              stage("write", cpus=0.5, tasks=True)]
    assert placement_problems(stages, cluster()) == []


def test_one_actor_too_many_names_the_stage_and_what_fits():
    problems = placement_problems([stage("inpaint", 9, 8, 1, INPAINT)], cluster())
    assert problems == ["stage inpaint: 9 actors x 8 CPU + 1 GPU on nodes labelled raydbb-stages=inpaint do "
                        "not fit the cluster: its alive nodes hold 8 next to the other pools (free: inpaint0 "
                        "32 CPU + 0 GPU)"]


def test_pools_share_a_node_fractional_gpus_included():
    # 0.5 + 0.75 GPU do not fit one GPU: the larger ask is placed first, the other is short
    problems = placement_problems([stage("mask", 1, 1, 0.5, MASKS), stage("prune", 1, 1, 0.75, MASKS)],
                                  cluster())
    assert len(problems) == 1 and problems[0].startswith("stage mask: 1 actors x 1 CPU + 0.5 GPU")
    assert "hold 0 next to the other pools (free: masks000 15 CPU + 0.25 GPU)" in problems[0]


def test_labels_no_node_carries_and_tasks_left_without_cpus():
    problems = placement_problems([stage("inpaint", 1, 1, 1, {"raydbb-stages": "nowhere"})], cluster())
    assert problems[0].endswith("hold 0 next to the other pools (no alive node carries those labels)")
    one_node = [Node("n1", 2, 0)]
    problems = placement_problems([stage("load", cpus=0.5, tasks=True), stage("mask", 2, 1),
                                   stage("write", cpus=0.5, tasks=True)], one_node)
    assert problems == ["stage load, write: its tasks need 0.5 CPU that the actor pools leave on no node of "
                        "the cluster (free: n1 0 CPU + 0 GPU)"]


def test_run_summary_counts_nodes_and_keeps_each_stages_peaks():
    import numpy as np

    from raydbb.engine.stats import RunStats, format_stats

    stats = RunStats(["mask", "inpaint"])
    nan = float("nan")
    batches = ((["a", "a"], [900.0, 950.0], [12.5, 12.5]), (["b", "a"], [1200.0, 800.0], [nan, nan]))
    for nodes, rss, setup in batches:
        stats.add({"image_path": np.array(["x.png", ""], dtype=object), "kept": np.array([True, False]),
                   "prune_reason": np.array(["", "no_mask"], dtype=object),
                   "t_inpaint": np.array([2.0, 4.0]), "node_inpaint": np.array(nodes, dtype=object),
                   "rss_inpaint": np.array(rss), "setup_inpaint": np.array(setup)})
    stats.finish([], {"a": "aaaa (raydbb-stages=inpaint)", "b": "bbbb (lost)"})
    summary = stats.summary()
    assert summary["stages"]["inpaint"] == {"s_per_row": 3.0, "rows_per_busy_s": 1 / 3.0, "load_s": 12.5,
                                            "peak_rss_mib": 1200.0}
    assert summary["nodes"] == {"inpaint": {"aaaa (raydbb-stages=inpaint)": 3, "bbbb (lost)": 1}}
    lines = format_stats(summary)
    assert "    inpaint       3000.0 ms/row       0.33 rows/s  model load 12.5 s  peak RSS 1200 MiB" in lines
    assert lines[-1] == "    inpaint    aaaa (raydbb-stages=inpaint): 3, bbbb (lost): 1"
