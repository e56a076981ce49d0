"""What is sampled while a benchmark runs: the machine's load, and the memory of this process, the
processes it started and Ray's object store.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from benchmarks.machine import psutil_module

T = TypeVar("T")
MIB = 2**20
LOAD_INTERVAL = 5.0  # seconds between load-average samples


class Sampler:
    """Calls ``fn()`` every ``interval`` seconds on a background thread; keeps the values.

    Use as a context manager around the measured work; ``values`` holds what ``fn`` returned.
    """

    def __init__(self, fn: Callable[[], Any], interval: float = 1.0) -> None:
        self.fn = fn
        self.interval = interval
        self.values: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.values.append(self.fn())
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.values.append(self.fn())


def load_average() -> float:
    """The 1-minute load average (other users' work on a shared machine shows up here)."""
    return os.getloadavg()[0]


def under_load(fn: Callable[[], T]) -> tuple[T, list[float]]:
    """``fn()`` and the load averages sampled while it ran."""
    with Sampler(load_average, LOAD_INTERVAL) as load:
        result = fn()
    return result, load.values


def process_memory() -> dict[str, float]:
    """Summed RSS and PSS (bytes) of this process and all its descendants, and how many there are."""
    psutil = psutil_module()
    me = psutil.Process()
    rss = pss = 0.0
    count = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # a worker that exited between listing and reading
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        count += 1
    return {"rss": rss, "pss": pss, "processes": count}


def store_stats() -> dict[str, float]:
    """Object-store bytes in use on all nodes and bytes spilled to disk so far (raylet's store stats)."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    stats = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address)).store_stats
    return {"store": float(stats.object_store_bytes_used), "spilled": float(stats.spilled_bytes_total)}


def peaks(samples: list[dict[str, float]]) -> dict[str, float]:
    """The peak of every memory figure over ``samples``."""
    return {key: max(s[key] for s in samples) for key in ("rss", "pss", "store", "processes")}


def peak_columns(r: dict[str, float]) -> dict[str, Any]:
    """The table columns of one run's :func:`peaks`, in MiB."""
    return {"peak Σ RSS MiB": f"{r['rss'] / MIB:.0f}", "peak Σ PSS MiB": f"{r['pss'] / MIB:.0f}",
            "peak object store MiB": f"{r['store'] / MIB:.1f}", "processes": int(r["processes"])}


def growth(small: dict[str, float], large: dict[str, float]) -> dict[str, float]:
    """How much the peak Σ RSS and Σ PSS grew from the ``small`` run to the ``large`` one."""
    return {"ratio_rss": large["rss"] / small["rss"], "ratio_pss": large["pss"] / small["pss"]}
