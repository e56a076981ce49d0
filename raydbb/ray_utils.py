"""Connecting to Ray: the same code runs on a laptop and on a cluster; only the address differs."""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile

from raydbb.config import RayConfig
from raydbb.errors import RaydbbError


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
    # Ray turns token authentication on for every new local instance and says so on each start;
    # that is what a local run should do, so the notice is not shown (docs/clusters.md: clusters).
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        _MessageFilter("Token authentication is enabled for this Ray cluster"))
    for attempt in (1, 2):
        try:
            _start_local(cfg)
            return
        except Exception as err:  # Ray raises a bare Exception when its node does not come up
            if STARTUP_TIMEOUT not in str(err):
                raise
            ray.shutdown()
            if attempt == 2:
                raise RaydbbError(f"the local Ray instance did not start twice ({STARTUP_TIMEOUT}; the "
                                  "machine is busy): try again, or set ray.num_cpus lower") from None


STARTUP_TIMEOUT = "timed out during startup"
# Local instances run without the dashboard, so they have no state API. Ray Train's placement-group
# cleaner asks that API whether its controller is alive; left to find one, it can reach another
# cluster's dashboard on the default port (a `ray start` head, a test suite's job server), hear
# "no such actor" and remove the placement group of a live training run. A loopback port nothing
# serves makes every such lookup fail, which the cleaner treats as "unknown, keep going".
NO_API_SERVER = "http://127.0.0.1:9"


def _start_local(cfg: RayConfig) -> None:
    import ray
    from ray._private.services import get_node_ip_address

    # Every process of this instance must know its address: Ray Train's helper actors look the
    # cluster up by themselves and, with a second Ray instance on the machine (a test suite next to
    # a demo), fail with "Found multiple active Ray instances". The GCS port is chosen here so the
    # address can go into the job's environment before the instance starts.
    port = _free_port()
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    try:
        ray.init(
            address="local",  # our own instance, even where `ray start` left one running
            num_cpus=cfg.num_cpus,
            object_store_memory=cfg.object_store_memory,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=True,
            runtime_env={"env_vars": {"RAY_ADDRESS": f"{get_node_ip_address()}:{port}",
                                      "RAY_API_SERVER_ADDRESS": NO_API_SERVER,
                                      # Ray Train's watcher reports spot-node preemptions; a local
                                      # instance has no such nodes, and the actor it starts logs the
                                      # restart notice of absorb_actor_restart_notice.
                                      "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"},
                         "worker_process_setup_hook": "raydbb.ray_utils.quiet_worker_logs"},
        )
    finally:
        del os.environ["RAY_GCS_SERVER_PORT"]  # a later instance in this process picks its own


RESTART_NOTICE = "has constructor arguments in the object store and max_restarts > 0"
_notice_absorbed = False


def absorb_actor_restart_notice() -> None:
    """Take Ray's once-per-process restart notice for actor pools off the user's screen.

    Ray's core worker logs an error-level line ("... has constructor arguments in the object store
    and max_restarts > 0 ...") the first time a process creates a restartable actor with an
    argument passed by reference. Ray Data creates every actor pool that way (its data context and
    map function go by reference) and holds those references for the pool's lifetime, so the
    restart the line warns about works; to a user it reads like a failure. The line is logged once
    per process, so a throwaway actor is created here with stderr captured, which spends it; any
    other output captured in that instant is passed on. Keeping ``max_restarts=0`` instead would
    turn a crashed actor into a failed run. Idempotent; needs Ray initialised.
    """
    global _notice_absorbed
    if _notice_absorbed:
        return
    import ray

    @ray.remote(num_cpus=0, max_restarts=1)
    class _Spend:
        def __init__(self, _arg: object) -> None:
            pass

    arg = ray.put(0)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            actor = _Spend.remote(arg)  # the core worker logs the notice synchronously, here
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        ray.kill(actor)
        captured.seek(0)
        other = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                 if RESTART_NOTICE not in line]
    sys.stderr.write("".join(other))
    _notice_absorbed = True


def quiet_worker_logs() -> None:
    """Run in every worker process of a local instance: drop the warning Ray Train's placement-group
    cleaner repeats every few seconds when the state API is off (local instances run without the
    dashboard that serves it). Nothing the user can act on; a local instance ends with its driver."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").addFilter(
        _MessageFilter("Failed to query Ray Train Controller actor state"))


def quiet_progress_notice() -> None:
    """Drop Ray Data's notice that progress bars are off: the user turned them off (--no-progress)."""
    logging.getLogger("ray.data._internal.progress").addFilter(_MessageFilter("Progress bars"))


class _MessageFilter(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])
