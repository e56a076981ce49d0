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
    ray.init(
        num_cpus=cfg.num_cpus,
        object_store_memory=cfg.object_store_memory,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
