"""A real multi-node Ray cluster on this one machine, for tests: one ``ray start --block`` process
per node (head and workers) on loopback, free ports, a private temp dir, each node in its own
process session so that one node can be killed (its raylet and workers) as a lost machine would be.

Nodes declare CPUs, GPUs and labels; the GPUs are resources only (nothing here needs CUDA). Never
runs ``ray stop``, which would stop every Ray instance on the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
STORE = 200 * 1024 * 1024


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports nothing listens on right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _node_ports() -> list[str]:
    node_mgr, obj_mgr, metrics, rt_env, agent_http, agent_grpc = free_ports(6)
    return ["--node-manager-port", str(node_mgr), "--object-manager-port", str(obj_mgr),
            "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(rt_env),
            "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
            # workers bind ports the OS picks: two raylets drawing from Ray's default range collide
            "--min-worker-port", "0", "--max-worker-port", "0"]


def _resources(cpus: float, gpus: float, labels: dict[str, str] | None) -> list[str]:
    out = ["--num-cpus", f"{cpus:g}", "--num-gpus", f"{gpus:g}", "--object-store-memory", str(STORE)]
    if labels:
        out += ["--labels", ",".join(f"{k}={v}" for k, v in labels.items())]
    return out


def launcher_resource_overrides(launcher: Path) -> list[str]:
    """The resource overrides (pool sizes, GPUs, node labels) the launcher yaml's job passes in its
    ``metadata.raydbb.entrypoint``, without the paths, which point at the cluster's shared storage."""
    import shlex

    import yaml

    words = shlex.split(yaml.safe_load(launcher.read_text())["metadata"]["raydbb"]["entrypoint"])
    sections = ("mask", "prune", "select", "inpaint", "generate")
    return [w for w in words if "=" in w and w.split(".")[0] in sections]


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, the process group ``proc`` leads, until none of it is left."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            time.sleep(1)  # let children in the group see the signal before the next check
            os.killpg(proc.pid, 0)  # raises when no process of the group is left
        except (subprocess.TimeoutExpired, PermissionError):
            continue
        except ProcessLookupError:
            return


class LocalCluster:
    """Start with :meth:`start_head`, add nodes with :meth:`add_node`, end with :meth:`stop`."""

    def __init__(self) -> None:
        # short: Ray's socket paths are length-limited
        self.tmp = Path(tempfile.mkdtemp(prefix="rdbc-", dir="/tmp"))
        self.nodes: list[subprocess.Popen] = []
        self.gcs = ""
        self.dashboard = ""
        self._logs: list = []

    def env(self) -> dict[str, str]:
        """The environment of the nodes, and of drivers that should meet only this cluster."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        env.update({
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",  # the job's `python` is this venv's
            "RAY_AUTH_MODE": "disabled",  # loopback-only test cluster; token auth is covered by Ray itself
            "RAY_USAGE_STATS_ENABLED": "0",
            "TMPDIR": str(self.tmp),
            "OMP_NUM_THREADS": "1",
        })
        return env

    def _spawn(self, args: list[str]) -> subprocess.Popen:
        log = open(self.tmp / f"node{len(self.nodes)}.log", "w")  # noqa: SIM115  # closed in stop()
        self._logs.append(log)
        proc = subprocess.Popen([str(VENV_BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1",
                                 *args, "--disable-usage-stats"], stdout=log, stderr=subprocess.STDOUT,
                                env=self.env(), cwd=self.tmp, start_new_session=True)
        self.nodes.append(proc)
        return proc

    def log(self, index: int) -> str:
        return (self.tmp / f"node{index}.log").read_text()[-3000:]

    def start_head(self, cpus: float, gpus: float = 0, labels: dict[str, str] | None = None,
                   dashboard: bool = False) -> str:
        """Start the head; returns its GCS address (``127.0.0.1:PORT``)."""
        gcs, dash, client = free_ports(3)
        self.gcs = f"127.0.0.1:{gcs}"
        extra = (["--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash)] if dashboard
                 else ["--include-dashboard", "false"])
        self.dashboard = f"http://127.0.0.1:{dash}" if dashboard else ""
        self._spawn(["--head", "--port", str(gcs), "--ray-client-server-port", str(client),
                     "--temp-dir", str(self.tmp / "ray"), *extra, *_node_ports(),
                     *_resources(cpus, gpus, labels)])
        return self.gcs

    def add_node(self, cpus: float, gpus: float = 0, labels: dict[str, str] | None = None) -> int:
        """Start a worker node; returns its index for :meth:`kill`."""
        self._spawn(["--address", self.gcs, *_node_ports(), *_resources(cpus, gpus, labels)])
        return len(self.nodes) - 1

    def wait_nodes(self, n: int, timeout: float = 180) -> None:
        """Block until ``n`` nodes are alive (asked of the GCS by a short Python process)."""
        probe = ("import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
                 "print(sum(1 for x in ray.nodes() if x['Alive']))")
        deadline = time.monotonic() + timeout
        while True:
            for i, proc in enumerate(self.nodes):
                if proc.poll() is not None and proc.returncode not in (-9, -15):
                    raise RuntimeError(f"node {i} exited with {proc.returncode}:\n{self.log(i)}")
            done = subprocess.run([sys.executable, "-c", probe, self.gcs], capture_output=True, text=True,
                                  env=self.env(), timeout=120)
            lines = done.stdout.strip().splitlines()
            if lines and lines[-1].isdigit() and int(lines[-1]) >= n:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} nodes not up after {timeout:g} s:\n{done.stderr[-2000:]}")
            time.sleep(2)

    def kill(self, index: int) -> None:
        """Remove node ``index`` at once, as a lost machine: SIGKILL its raylet and workers."""
        try:
            os.killpg(self.nodes[index].pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.nodes[index].wait(timeout=30)

    def stop(self) -> None:
        """Stop every node (workers first, the head last) and remove the temp dir."""
        for proc in reversed(self.nodes):
            stop_group(proc)
        for log in self._logs:
            log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
