"""Shared fixtures: one local Ray instance per test session, GPU tests skipped on CPU machines."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")  # Ray >= 2.5x's default; tests use the v2 API
# Spot-instance preemption watching is one more actor per Ray Train run; nothing to watch locally.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance with 4 logical CPUs (2 cores here; stages use fractional CPUs)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING",
                 object_store_memory=512 * 1024 * 1024)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def torch_one_thread():
    """One torch thread for a module's tiny models: deterministic numbers, and no OpenMP threads
    spinning against each other on a shared 2-core machine."""
    from raydbb.models.threads import torch_threads

    with torch_threads(1):
        yield
