"""The machine a benchmark runs on: its description (the header of every results section) and
Ray started on it the way ``raydbb generate`` starts it.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.profiles import CPU_PROFILE, Profile

INIT_ATTEMPTS = 3
OBJECT_STORE_BYTES = 512 * 2**20  # the benchmarks' object store (None: Ray's default)


def psutil_module() -> Any:
    """psutil, which Ray bundles (``ray/thirdparty_files``, put on ``sys.path`` by ``import ray``)."""
    import importlib

    import ray  # noqa: F401

    return importlib.import_module("psutil")


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def nproc() -> int | None:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def machine_info() -> dict[str, Any]:
    """nproc, CPU model, memory, GPU, versions: the header of every results section."""
    import ray
    import torch

    psutil = psutil_module()

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "nproc": nproc(),
        "cpu": cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


@contextmanager
def local_ray(profile: Profile = CPU_PROFILE,
              object_store_memory: int | None = OBJECT_STORE_BYTES) -> Iterator[Any]:
    """Ray as ``raydbb generate`` starts it (:func:`raydbb.ray_utils.init_ray`): a local instance
    sized by ``profile``, or the cluster at ``RAY_ADDRESS``; shut down afterwards."""
    import ray

    from raydbb.config import RayConfig
    from raydbb.ray_utils import init_ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    started = not ray.is_initialized()
    if started:
        for attempt in range(1, INIT_ATTEMPTS + 1):
            try:
                init_ray(RayConfig(num_cpus=profile.ray_num_cpus, object_store_memory=object_store_memory))
                break
            except Exception as err:  # raylet start-up has a fixed 30 s limit; a busy machine misses it
                ray.shutdown()
                if attempt == INIT_ATTEMPTS:
                    raise
                print(f"ray.init failed ({err}); retrying ({attempt}/{INIT_ATTEMPTS})", flush=True)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
