"""Smoke tests: every benchmark's core function at a minimal size, so the benchmarks do not rot.

Speed is not asserted (CI machines differ); the numbers each benchmark derives are checked
against the runs they came from, and the RESULTS.md writer against hand-made sections.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import engine_vs_loop, ig_cost, memory, scaling, stage_limits, streaming
from benchmarks.cli import BenchCommand
from benchmarks.fixtures import build_fixtures
from benchmarks.machine import machine_info
from benchmarks.pipeline import PipelineRun, SteadyState
from benchmarks.profiles import Profile
from benchmarks.results import SECTIONS, times, update_results

# Tiny everything: 2-row blocks so that a handful of sources gives a probe and a longer full run;
# dataset masks (no detector to load in the smoke run); one actor per pool on the test Ray's 4 CPUs.
SMOKE = Profile(
    name="smoke", device="cpu", ray_num_cpus=None, mask_source="dataset", layout="fused",
    fused={"actors": 1, "num_cpus": 0.5, "batch_size": 2, "model_batch_size": 2},
    io={"num_cpus": 0.25, "batch_size": 2},
    mask={"actors": 1, "num_cpus": 0.5, "batch_size": 2, "model_batch_size": 2},
    inpaint={"actors": 1, "num_cpus": 0.5, "batch_size": 2, "model_batch_size": 2},
    prune={"actors": 1, "num_cpus": 0.5, "batch_size": 2, "model_batch_size": 16},
    select={"actors": 1, "num_cpus": 0.5, "batch_size": 8, "model_batch_size": 8},
)
INFO = {"nproc": 2, "cpu": "test cpu", "memory_gib": 1.0, "gpu": "none", "torch": "t", "ray": "r",
        "date": "2026-01-01 00:00 UTC"}


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return build_fixtures(tmp_path_factory.mktemp("benchfx"), n_train=40, image_size=32, sd_sample_size=8)


@pytest.fixture(scope="module")
def evl(ray_local, fx, tmp_path_factory):
    return engine_vs_loop.measure(fx, n_sources=6, profile=SMOKE, inpaint_steps=1,
                                  variants=("loop", "fused", "pools"), passes=("generate",),
                                  work=tmp_path_factory.mktemp("evl"))


def test_steady_state_separates_startup() -> None:
    # 4 rows in 3 s (probe), 20 rows in 7 s: 16 extra rows in 4 extra seconds.
    st = SteadyState(PipelineRun("ray", rows=4, wall_s=3.0), PipelineRun("ray", rows=20, wall_s=7.0))
    assert st.steady_rate == pytest.approx(4.0)
    assert st.startup_s == pytest.approx(2.0)  # the probe's 3 s minus 4 rows at 4 rows/s
    assert st.total_rate == pytest.approx(20 / 7)
    assert times(1.6249) == "1.62×"


def test_update_results_keeps_other_sections(tmp_path) -> None:
    path = tmp_path / "RESULTS.md"
    update_results("memory", "## 5. Memory\nold\n", path)
    update_results("engine_vs_loop", "## 1. Engine\nfirst\n", path)
    update_results("memory", "## 5. Memory\nnew\n", path, preamble="# Results\nrun note\n")
    text = path.read_text()
    assert text.startswith("# Results\nrun note\n")
    assert "first" in text and "new" in text and "old" not in text
    assert text.index("## 1. Engine") < text.index("## 5. Memory")  # SECTIONS order, not call order
    with pytest.raises(ValueError, match="unknown results section"):
        update_results("nope", "x", path)
    assert SECTIONS[0] == "engine_vs_loop"


def test_bench_command_measures_prints_and_writes_its_section(tmp_path, capsys) -> None:
    cli = BenchCommand("Memory: a test.\n\nMore.", "memory")
    cli.sources(16, "samples")
    cli.steps()
    args = cli.parse(["--sources", "3", "--results", str(tmp_path / "R.md")])
    assert (args.sources, args.steps, cli.parser.description) == (3, 10, "Memory: a test.")
    result = cli.run(args, lambda fx: {"fx": fx, "n": args.sources},
                     lambda r, info, load: f"## 5. Memory\n{r['n']} on {info['nproc']} CPUs, {len(load)}\n",
                     fixtures=False)
    assert result == {"fx": None, "n": 3}
    assert "## 5. Memory\n3 on" in capsys.readouterr().out
    assert "<!-- begin memory -->\n## 5. Memory\n3 on" in (tmp_path / "R.md").read_text()


def test_mains_reject_bad_flags_before_measuring() -> None:
    with pytest.raises(SystemExit):
        streaming.main(["--small", "20", "--large", "10"])
    with pytest.raises(SystemExit):
        engine_vs_loop.main(["--variants", "loop,nope"])
    with pytest.raises(SystemExit):
        scaling.main(["--profile", "tpu"])


def test_engine_vs_loop_and_stage_limits(evl, fx, tmp_path) -> None:
    gen = evl["passes"]["generate"]
    for v in ("loop", "fused", "pools"):
        runs = evl["runs"]["generate"][v]
        assert gen[v]["rows"] == 6 and gen[v]["probe_rows"] == 2
        # (NaN when a noisy machine ran the tiny full run faster than its probe)
        assert gen[v]["steady_rate"] == pytest.approx(runs[0].steady_rate, nan_ok=True)
    # the headline engine is the profile's layout
    assert evl["engine"] == "fused"
    assert gen["ratio_steady_loop"] == pytest.approx(gen["fused"]["steady_rate"] / gen["loop"]["steady_rate"],
                                                     nan_ok=True)
    assert evl["decisions_agree"] == 1.0  # same stages, same inputs, same decisions in every layout
    assert "fused" in gen["fused"]["busy_ms"] and "fused" not in gen["pools"]["busy_ms"]
    text = engine_vs_loop.report(evl, INFO, [1.0])
    assert "engine vs loop (generate, steady state; fused layout): " in text
    assert "fused layout vs pools layout (generate, steady state): " in text
    with pytest.raises(ValueError, match="need loop and fused"):
        engine_vs_loop.measure(fx, profile=SMOKE, variants=("loop", "pools"))

    engine_run = evl["runs"]["generate"]["pools"][-1]
    lim = stage_limits.measure(fx, n_sources=6, profile=SMOKE, inpaint_steps=1, engine_run=engine_run,
                               work=tmp_path / "limits")
    assert set(lim["isolated"]) == {"mask", "inpaint", "prune"}
    rates = [v["rate"] for v in lim["isolated"].values()]
    assert lim["limits"]["slowest_stage"] == pytest.approx(min(rates))  # one actor per stage
    assert lim["limits"]["cpu"] == pytest.approx(lim["cores"] / sum(1 / r for r in rates))
    assert lim["fraction"] == pytest.approx(engine_run.steady_rate / lim["limits"]["binding"], nan_ok=True)
    assert "fraction of the limit reached" in stage_limits.report(lim, INFO, [])


def test_scaling_and_memory(ray_local, fx, tmp_path) -> None:
    sc = scaling.measure(fx, n_sources=4, actor_counts=(1, 2), profile=SMOKE, inpaint_steps=1,
                         work=tmp_path / "scaling")
    base = sc["runs"][1]["steady_rate"]
    for r in sc["runs"].values():  # (NaN when the noisy machine ran a tiny full run faster than its probe)
        assert r["ratio"] == pytest.approx(r["steady_rate"] / base, nan_ok=True)
    assert "2 vs 1 actors per pool" in scaling.report(sc, INFO, [])
    assert sc["layout"] == "fused" and "| cpu (fused layout) | fused | 2 |" in scaling.report(sc, INFO, [])

    mem = memory.measure(fx, n_sources=2, factor=2, profile=SMOKE, inpaint_steps=1, interval=0.2,
                         work=tmp_path / "memory")
    runs = mem["runs"]
    assert [r["rows"] for r in runs.values()] == [2, 4]
    for r in runs.values():
        assert r["rss"] >= r["pss"] > 0 and r["processes"] > 1 and r["samples"] >= 2
    assert mem["ratio_rss"] == pytest.approx(runs[4]["rss"] / runs[2]["rss"])
    assert "10×" not in memory.report(mem, INFO, []) and "2× vs 1×" in memory.report(mem, INFO, [])


def test_streaming_runs_generate_at_two_sizes(ray_local, fx, tmp_path) -> None:
    res = streaming.measure(fx, small=8, large=16, profile=SMOKE, interval=0.2, work=tmp_path, progress=False)
    runs = res["runs"]
    # half the training images are selected, two variants each: N samples for N images
    assert [(r["scored"], r["samples"]) for r in runs.values()] == [(8, 8), (16, 16)]
    assert res["ratio_pss"] == pytest.approx(runs[16]["pss"] / runs[8]["pss"])
    assert res["spilled"] == 0.0 and set(runs[8]["stages"]) >= {"mask", "inpaint", "prune"}
    text = streaming.report(res, INFO, [])
    assert "16 vs 8 samples" in text and "1.3× bound" in text and "| inpaint |" in text
    assert "profile `smoke` (fused layout)" in text


def test_ig_cost_matches_captum_and_picks_a_setting(fx) -> None:
    res = ig_cost.measure(fx, resnet_images=2, pairs=8, resnet_size=32, grid=(2, 8), small_batch=64,
                          methods=("gausslegendre", "riemann_trapezoid"))
    for name, r in res["at50"].items():
        # raydbb's batched IG is captum's IG: equal up to float rounding at the same 50 steps
        assert r["max_abs_diff"] <= 1e-4 * max(1.0, r["max_abs_score"]), name
    study = res["study"]
    assert study["n"] == 16 and len(study["rows"]) == 4
    ref = ig_cost.agreement(np.array([1.0, -1.0, 0.5]), np.array([2.0, 1.0, -0.1]), delta=0.0)
    assert ref == pytest.approx(1 / 3)
    chosen = ig_cost.smallest_setting(study["rows"])
    if chosen is not None:
        assert chosen["agree_median"] >= 0.99 and chosen["agree_zero"] >= 0.99
    assert "IG pruning cost" in ig_cost.report(res, machine_info(), [])


def test_comparison_section_from_hand_made_results(tmp_path) -> None:
    from benchmarks import comparison

    def doc(method, seed, wga, avg=0.9, wall=120.0):
        m = {"worst_group_accuracy": wga, "average_accuracy": avg}
        return {"method": method, "seed": seed, "metrics": {"val": m, "test": m}, "wall_seconds": wall}

    docs = [doc("erm", 0, 0.5, 0.88), doc("erm", 1, 0.4, 0.86), doc("jtt", 0, 0.9), doc("jtt", 1, 0.92),
            doc("dfr", 0, 0.95), doc("dfr", 1, 0.97), doc("ddb", 0, 0.97, 0.98, 300.0),
            doc("ddb", 1, 0.98, 0.99, 360.0)]
    gate = {"model_name": "synthetic_inpainter", "steps": 20, "guidance": 8.0, "match_noise": True,
            "grid": "g.png", "gate": {"a_target_rate": True, "b_leak": True, "c_judge_on_sources": False},
            "results": [{"direction": "landbird->waterbird", "target_rate": 0.94, "leak": 0.004,
                         "judge_on_sources": 0.97}]}
    data = {"seed": 0, "train_correlation": 0.95, "n_train": 3000, "n_val": 1200, "n_test": 1200, "size": 64}
    text = comparison.report({"docs": docs, "seeds": [0, 1, 2], "gate": gate, "data": data},
                             machine_info(), [1.0], "python -m benchmarks.comparison")
    # ERM: 50 and 40 -> mean 45.0, sample std 7.1; seed 2 was not run.
    assert "| ERM | ✗ / ✓ | 50.0 | 40.0 | – | **45.0 ± 7.1** | 40.0–50.0 | 87.0 | 45.0 | 2.0 |" in text
    assert "| DDB | ✗ / ✓ | 97.0 | 98.0 | – | **97.5 ± 0.7** | 97.0–98.0 | 98.5 | 97.5 | 5.5 |" in text
    # DFR (96.0) is the best method without train group labels: DDB +1.5.
    assert "(DFR): **+1.5** points" in text and "against ERM's 87.0" in text
    assert "(a) judged as target 94.0%, (b) background leak 0.4%, (c) judge on unedited birds 97.0%" in text
    assert "(c) ≥ 98 %: FAIL" in text and "noise matching on" in text
    update_results("comparison", text, tmp_path / "R.md")
    assert SECTIONS[-1] == "comparison" and "<!-- begin comparison -->" in (tmp_path / "R.md").read_text()
    with pytest.raises(SystemExit):
        comparison.main(["--methods", "erm,nope"])
