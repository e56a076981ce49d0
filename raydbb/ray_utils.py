"""Connecting to Ray: the same code runs on a laptop and on a cluster; only the address differs."""

from __future__ import annotations

import logging
import os

from raydbb.config import RayConfig


def init_ray(cfg: RayConfig) -> None:
    """Connect to ``cfg.address`` (or ``RAY_ADDRESS``), else start a local Ray instance.

    A no-op when Ray is already initialised (tests, or a driver inside a Ray job).
    """
    import ray

    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return
    # Ray starts its workers at niceness 15 (background priority). A local raydbb run is the
    # user's foreground job: at 15 its actors get a small share of the cores next to any normal
    # process (measured: engine steps several times slower on a busy 2-core machine).
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(
        num_cpus=cfg.num_cpus,
        object_store_memory=cfg.object_store_memory,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
