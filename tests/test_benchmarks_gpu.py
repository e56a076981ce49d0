"""The quick benchmark set with the GPU stage sizing, on a GPU node (skipped on CPU machines).

Runs the documented command itself — ``python -m benchmarks.run_quick --profile gpu`` — in a
subprocess, so that it starts its own Ray with the node's GPUs (the test session's Ray has 4 CPUs
only) and writes its tables to a temporary RESULTS.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.gpu
@pytest.mark.slow
def test_quick_benchmarks_run_with_the_gpu_profile(tmp_path) -> None:
    results = tmp_path / "RESULTS.md"
    env = {**os.environ, "RAYDBB_BENCH_DIR": str(tmp_path / "bench")}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run_quick", "--profile", "gpu", "--results",
                           str(results)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = results.read_text()
    assert "profile `gpu`" in text and "GPU: none" not in text
    for title in ("1. Engine vs plain loop", "2. Engine overhead", "3. IG pruning cost", "4. Scaling",
                  "5. Memory"):
        assert f"## {title}" in text
    ratio = re.search(r"engine vs loop \(generate, steady state\): ([0-9.]+)×", text)
    assert ratio and float(ratio.group(1)) > 0
    assert "keep/prune decisions identical to the engine's: 100 %" in text
