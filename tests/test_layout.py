"""The package's dependency rules, checked on the source (no imports executed).

Imports run one way: the CLI (``raydbb.commands``, ``raydbb.cli``) and the job entrypoints
(``raydbb.jobs``) sit on top and nothing imports them; the generic engine knows nothing of the DDB
method, the training stack, the workflow or the tools; the method never imports the tools; no
module reaches into another module's private names; and there is no import cycle, counting the
imports made inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "raydbb"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """``(imported module, imported names, line)`` for every raydbb import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("raydbb")]
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("raydbb"):
            found.append((node.module, [a.name for a in node.names], node.lineno))
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(target: str, names: list[str]) -> list[str]:
    """The modules an import statement depends on (``from pkg import submodule`` counts the submodule)."""
    subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
    return subs if subs and len(subs) == len(names) else [target]


GRAPH = {mod: {dep for target, names, _ in imports_of(path) for dep in resolve(target, names)
               if dep != mod and dep in MODULES}
         for mod, path in MODULES.items()}


def _in(mod: str, *packages: str) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in packages)


def violations(sources: tuple[str, ...], forbidden: tuple[str, ...],
               allowed: tuple[str, ...] = ()) -> list[str]:
    return [f"{mod} imports {dep}" for mod, deps in GRAPH.items()
            if _in(mod, *sources) and not _in(mod, *allowed) for dep in sorted(deps) if _in(dep, *forbidden)]


def test_nothing_imports_the_cli_or_the_job_entrypoints():
    assert violations(("raydbb",), ("raydbb.commands", "raydbb.jobs", "raydbb.cli"),
                      allowed=("raydbb.commands", "raydbb.cli", "raydbb.jobs")) == []


def test_job_entrypoints_do_not_import_the_cli():
    assert violations(("raydbb.jobs",), ("raydbb.commands", "raydbb.cli")) == []


def test_the_engine_imports_nothing_of_the_method_training_workflow_or_tools():
    assert violations(("raydbb.engine",), ("raydbb.ddb", "raydbb.training", "raydbb.workflow",
                                           "raydbb.tools", "raydbb.rundir")) == []


def test_the_method_and_training_do_not_import_tools_or_the_workflow():
    assert violations(("raydbb.ddb", "raydbb.training", "raydbb.data", "raydbb.models"),
                      ("raydbb.tools", "raydbb.workflow")) == []


def test_generic_training_does_not_import_the_method():
    assert violations(("raydbb.training", "raydbb.data", "raydbb.models"), ("raydbb.ddb",)) == []


def test_no_private_name_is_imported_from_another_module():
    bad = [f"{mod}:{line} imports {name} from {target}"
           for mod, path in MODULES.items() for target, names, line in imports_of(path)
           for name in names if name.startswith("_") and target != mod]
    assert bad == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_reports_a_hand_made_cycle_and_accepts_a_dag():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_the_package():
    assert find_cycle(GRAPH) is None

