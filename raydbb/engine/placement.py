"""Will the stages' actor pools fit the cluster? Checked before any work, against the alive nodes.

Ray Data starts every actor pool of a pass at its full size and waits for them; an actor no node
can hold is not an error in Ray, it is a wait that never ends (the pass shows "pending" forever).
:func:`placement_problems` packs the pools onto the nodes as Ray would have to — each actor on one
node, with the CPUs, GPUs and labels it asks for, all pools at once — and names each pool that does
not fit, with the shortfall. Plain-task stages (read, load, write) then need one node with their
CPUs still free, or they would wait behind the actors.

Ray-free: nodes are plain :class:`Node` records (see :func:`raydbb.engine.adapter.alive_nodes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raydbb.engine.stage import Stage


@dataclass
class Node:
    """One alive node: its id, CPUs and GPUs, and its Ray labels."""

    node_id: str
    cpus: float
    gpus: float
    labels: dict[str, str] = field(default_factory=dict)

    def matches(self, wanted: dict[str, str]) -> bool:
        return all(self.labels.get(k) == v for k, v in wanted.items())


def _asks(stage: Stage) -> str:
    r = stage.resources
    gpu = f" + {r.num_gpus:g} GPU" if r.num_gpus else ""
    where = "".join(f" on nodes labelled {k}={v}" for k, v in sorted(r.node_labels.items()))
    return f"{r.num_cpus:g} CPU{gpu}{where}"


def _free(nodes: list[Node], wanted: dict[str, str]) -> str:
    mine = [n for n in nodes if n.matches(wanted)]
    if not mine:
        return "no alive node carries those labels"
    return "free: " + ", ".join(f"{n.node_id[:8]} {n.cpus:g} CPU + {n.gpus:g} GPU" for n in mine)


def placement_problems(stages: list[Stage], nodes: list[Node]) -> list[str]:
    """One line per stage whose pool (or tasks) the ``nodes`` cannot hold next to the other pools."""
    free = [Node(n.node_id, n.cpus, n.gpus, dict(n.labels)) for n in nodes]
    problems = []
    # The scarcest asks first (GPUs, then CPUs), as a packer that wants everything to fit must.
    pools = sorted((s for s in stages if s.stateful),
                   key=lambda s: (-s.resources.num_gpus, -s.resources.num_cpus))
    for stage in pools:
        r = stage.resources
        placed = 0
        for _ in range(r.actors):
            spot = next((n for n in free if n.matches(r.node_labels)
                         and n.cpus >= r.num_cpus - 1e-9 and n.gpus >= r.num_gpus - 1e-9), None)
            if spot is None:
                break
            spot.cpus -= r.num_cpus
            spot.gpus -= r.num_gpus
            placed += 1
        if placed < r.actors:
            problems.append(f"stage {stage.name}: {r.actors} actors x {_asks(stage)} do not fit the cluster: "
                            f"its alive nodes hold {placed} next to the other pools "
                            f"({_free(free, r.node_labels)})")
    # one line for the task stages that share an ask (load, expand and write share generate.io)
    starved: dict[tuple[str, str], list[str]] = {}
    for stage in (s for s in stages if not s.stateful):
        r = stage.resources
        if not any(n.matches(r.node_labels) and n.cpus >= r.num_cpus - 1e-9 for n in free):
            starved.setdefault((_asks(stage), _free(free, r.node_labels)), []).append(stage.name)
    for (asks, room), names in starved.items():
        problems.append(f"stage {', '.join(names)}: its tasks need {asks} that the actor pools leave "
                        f"on no node of the cluster ({room})")
    return problems
