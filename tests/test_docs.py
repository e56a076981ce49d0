"""The documentation cannot drift from the code.

* README.md is a front page: at most 200 lines, starting with the two set-up commands, and its
  package map names the file of each equation, the Ray Data adapter and the manifest schema.
* Every relative link in README.md, docs/, cluster/README.md and jobs/README.md resolves (files and
  ``#anchors``), and no page points at documents outside the repository.
* Every ``raydbb ...`` command shown on those pages is a subcommand of the real CLI parser
  and uses only options that subcommand has; every ``python -m`` module and ``make`` target exists.
* docs/configuration.md lists exactly the fields of :class:`raydbb.config.RaydbbConfig`, with
  their defaults and the accepted values of every choice field.
* docs/manifest.md lists exactly the columns of :data:`raydbb.engine.manifest.SCHEMA` with their
  Arrow types.
"""

from __future__ import annotations

import argparse
import re
import shlex
import typing
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS, ROOT / "cluster" / "README.md", ROOT / "jobs" / "README.md"]
COMMAND_PAGES = PAGES

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def split_fences(text: str) -> tuple[list[str], list[list[str]]]:
    """(lines outside fenced code blocks, the fenced blocks' lines)."""
    prose: list[str] = []
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
            continue
        (prose if current is None else current).append(line)
    assert current is None, "unclosed code fence"
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose, _ = split_fences(path.read_text())
    seen: dict[str, int] = {}
    found = set()
    for line in prose:
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


# ------------------------------------------------------------------------------------ README

def test_readme_is_a_front_page() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; keep it a front page (<= 200)"
    assert lines[0] == "# raydbb"
    _, blocks = split_fences(README.read_text())
    first = [line.split("#")[0].strip() for line in blocks[0]]
    assert first[:2] == ["make demo", "make test"], "README must open with the two set-up commands"
    head = "\n".join(lines[:8])
    assert "```" in head and head.index("make demo") < head.index("make test")


# The done-when of the docs issue: from the package map alone, a newcomer finds these files.
PACKAGE_MAP = [
    ("Eq. 1", "raydbb/ddb/inversion/trainer.py"),
    ("Eq. 3", "raydbb/ddb/prune_rules.py"),
    ("Eq. 4–5", "raydbb/ddb/prune_rules.py"),
    ("Eq. 4–5", "raydbb/ddb/ig.py"),
    ("Eq. 6–8", "raydbb/ddb/retrain/loss.py"),
    ("Ray Data adapter", "raydbb/engine/adapter.py"),
    ("manifest schema", "raydbb/engine/manifest.py"),
]


def package_map_rows() -> list[str]:
    text = README.read_text()
    start = text.index("## Package map")
    end = text.index("\n## ", start + 1)
    return [line for line in text[start:end].splitlines() if line.startswith("|")]


@pytest.mark.parametrize(("label", "path"), PACKAGE_MAP)
def test_package_map_names_the_file(label: str, path: str) -> None:
    assert (ROOT / path).is_file(), f"{path} does not exist; update the package map and this test"
    rows = [r for r in package_map_rows() if label in r and f"]({path})" in r]
    assert rows, f"README package map: no row links {path} next to {label!r}"


# ------------------------------------------------------------------------------------ links

def links(path: Path) -> list[str]:
    prose, _ = split_fences(path.read_text())
    text = "\n".join(re.sub(r"`[^`]*`", "", line) if "](" not in line else line for line in prose)
    return LINK.findall(text)


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
            continue
        if not dest.resolve().is_relative_to(ROOT):
            broken.append(f"{target} (outside the repository)")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {rel(dest)})")
    assert not broken, f"{rel(page)}: broken links: {broken}"


@pytest.mark.parametrize("page", [README, *DOCS], ids=rel)
def test_no_references_outside_the_repository(page: Path) -> None:
    text = page.read_text()
    outside = [word for word in ("DESIGN", "§") if word in text]
    assert not outside, f"{rel(page)} refers to a document outside the repository ({outside})"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    targets = {(README.parent / t.partition("#")[0]).resolve() for t in links(README)}
    missing = [rel(p) for p in DOCS if p.resolve() not in targets]
    assert not missing, f"README.md does not link {missing}"


# ------------------------------------------------------------------------------------ commands

def shown_commands(page: Path) -> list[str]:
    """Command lines in fenced blocks (continuations joined, comments dropped) and inline code."""
    prose, blocks = split_fences(page.read_text())
    commands = []
    for block in blocks:
        joined = "\n".join(block).replace("\\\n", " ")
        for line in joined.splitlines():
            line = re.sub(r"\s#\s.*$", "", line).strip().removeprefix("$ ")
            if line:
                commands.append(line)
    for line in prose:
        commands += [c.strip() for c in re.findall(r"`([^`]+)`", line)]
    return commands


def tokens(command: str) -> list[str]:
    try:
        parts = shlex.split(command, comments=False)
    except ValueError:
        parts = command.split()
    return [p.strip("[]") for p in parts if p.strip("[]")]


@pytest.fixture(scope="module")
def cli() -> argparse.ArgumentParser:
    from raydbb.cli import build_parser

    return build_parser()


def subparsers_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def options_of(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def check_raydbb(cli: argparse.ArgumentParser, words: list[str]) -> str | None:
    """None when ``raydbb <words>`` names a real (sub)command with real options, else the problem."""
    parser, path = cli, ["raydbb"]
    while True:
        subs = subparsers_of(parser)
        if not subs:
            break
        if not words or words[0].startswith("-"):
            return None if not words or words[0] in ("-h", "--help") else f"{' '.join(path)}: no subcommand"
        word = words.pop(0)
        if word.startswith("<"):  # `raydbb <command> --help`
            return None
        if word not in subs:
            return f"{' '.join(path)} has no subcommand {word!r} (has {sorted(subs)})"
        parser, path = subs[word], [*path, word]
    known = options_of(parser)
    for word in words:
        if word.startswith("--"):
            option = word.split("=", 1)[0]
            if option not in known:
                return f"{' '.join(path)} has no option {option}"
    return None


def module_exists(module: str) -> bool:
    base = ROOT.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z_][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


@pytest.mark.parametrize("page", COMMAND_PAGES, ids=rel)
def test_commands_shown_exist(page: Path, cli: argparse.ArgumentParser) -> None:
    problems, checked = [], 0
    for command in shown_commands(page):
        words = tokens(command)
        if not words:
            continue
        if words[0] == "raydbb" and len(words) > 1:
            checked += 1
            problem = check_raydbb(cli, words[1:])
            if problem:
                problems.append(f"`{command}`: {problem}")
        elif words[0] in ("python", "python3") and words[1:2] == ["-m"] and len(words) > 2:
            if "<" in words[2]:  # `python -m raydbb.jobs.<step>`: a placeholder
                continue
            checked += 1
            if not module_exists(words[2]):
                problems.append(f"`{command}`: no module {words[2]}")
        elif words[0] == "make" and len(words) > 1 and "=" not in words[1]:
            checked += 1
            if words[1] not in make_targets():
                problems.append(f"`{command}`: no make target {words[1]}")
    assert not problems, f"{rel(page)}: " + "; ".join(problems)
    if page == README:
        assert checked >= 10, "the README should show the commands of the pipeline"


def test_command_checker_catches_mistakes(cli: argparse.ArgumentParser) -> None:
    assert check_raydbb(cli, ["generate", "--config", "x.yaml", "--engine", "loop"]) is None
    assert check_raydbb(cli, ["data", "inspect", "--dataset", "csv", "--root", "x"]) is None
    assert check_raydbb(cli, ["prune", "--manifest", "OUT", "--delta=0.05"]) is None
    assert "no subcommand 'regenerate'" in check_raydbb(cli, ["regenerate"])
    assert "no subcommand 'inspekt'" in check_raydbb(cli, ["data", "inspekt"])
    assert "no option --engin" in check_raydbb(cli, ["generate", "--engin", "loop"])


# ------------------------------------------------------------------------------------ tables

def tables(path: Path) -> list[list[dict[str, str]]]:
    """Every markdown table outside code blocks, as rows of {header: cell} with backticks removed."""
    prose, _ = split_fences(path.read_text())
    found: list[list[dict[str, str]]] = []
    header: list[str] | None = None
    rows: list[dict[str, str]] = []
    for line in [*prose, ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = [c.strip("`") for c in cells]
            elif not set("".join(cells)) <= set("-: "):
                rows.append(dict(zip(header, cells, strict=False)))
            continue
        if header is not None:
            found.append(rows)
        header, rows = None, []
    return found


def code(cell: str) -> str:
    return cell.strip().strip("`")


def render_default(value: object) -> str:
    """A default as the docs write it: strings bare, everything else as YAML flow."""
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def config_fields() -> tuple[dict[str, object], dict[str, object]]:
    """(leaf path -> pydantic FieldInfo, StageResources path -> its default)."""
    from pydantic import BaseModel

    from raydbb.config import RaydbbConfig, StageResources

    leaves: dict[str, object] = {}
    resources: dict[str, object] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            default = info.get_default(call_default_factory=True)
            if isinstance(default, StageResources):
                resources[prefix + name] = default
            elif isinstance(default, BaseModel):
                walk(type(default), f"{prefix}{name}.")
            else:
                leaves[prefix + name] = info

    walk(RaydbbConfig, "")
    return leaves, resources


CONFIG_DOC = ROOT / "docs" / "configuration.md"


def test_configuration_doc_lists_every_field_with_its_default() -> None:
    leaves, resources = config_fields()
    documented: dict[str, dict[str, str]] = {}
    documented_resources: dict[str, dict[str, str]] = {}
    for rows in tables(CONFIG_DOC):
        for row in rows:
            if "field" in row and "default" in row:
                documented[code(row["field"])] = row
            elif "resources" in row:
                documented_resources[code(row["resources"])] = row

    assert sorted(set(leaves) - set(documented)) == [], "fields missing from docs/configuration.md"
    assert sorted(set(documented) - set(leaves)) == [], "docs/configuration.md lists fields the config lacks"
    assert sorted(set(resources) - set(documented_resources)) == [], "resource sections missing"
    assert sorted(set(documented_resources) - set(resources)) == [], "unknown resource sections documented"

    wrong = []
    for path, info in leaves.items():
        row = documented[path]
        expected = render_default(info.get_default(call_default_factory=True))
        cell = code(row["default"])
        if len(expected) <= 60 and cell != expected:
            wrong.append(f"{path}: docs say {cell!r}, code has {expected!r}")
        is_choice = typing.get_origin(info.annotation) is typing.Literal
        choices = typing.get_args(info.annotation) if is_choice else ()
        missing = [c for c in choices if f"`{c}`" not in row["meaning"] and f"`{c}`" not in row["default"]]
        if missing:
            wrong.append(f"{path}: meaning does not name the accepted values {missing}")
    for path, default in resources.items():
        row = documented_resources[path]
        for name, value in default.model_dump().items():
            cell, expected = code(row[name]), render_default(value)
            if cell != expected:
                wrong.append(f"{path}.{name}: docs say {cell!r}, code has {expected!r}")
    assert not wrong, "docs/configuration.md disagrees with raydbb/config.py: " + "; ".join(wrong)


FILE_SUFFIXES = {"json", "yaml", "csv", "py", "md", "parquet", "png", "html", "safetensors"}


def test_documented_config_paths_exist() -> None:
    """Every `section.field` written in backticks in the docs or README names a real field."""
    from pydantic import BaseModel

    from raydbb.config import RaydbbConfig

    sections = set(RaydbbConfig.model_fields) - {"out", "seed", "device"}
    not_fields = {"ray.init", "ray.data", "tune.with_parameters"}
    spans = re.compile(r"`([a-z_]+(?:\.[a-z_]+)+)(?:\s*[=:][^`]*)?`")
    bad = []
    for page in COMMAND_PAGES:
        for dotted in spans.findall(page.read_text()):
            parts = dotted.split(".")
            if (parts[0] not in sections or parts[-1] in FILE_SUFFIXES
                    or any(dotted.startswith(n) for n in not_fields)):
                continue
            model: type[BaseModel] = RaydbbConfig
            for part in parts:
                if part not in model.model_fields:
                    bad.append(f"{rel(page)}: `{dotted}`")
                    break
                default = model.model_fields[part].get_default(call_default_factory=True)
                if not isinstance(default, BaseModel):
                    break  # a leaf: anything after it is a dict key such as a class name
                model = type(default)
    assert not bad, f"config paths that do not exist: {bad}"


def test_manifest_doc_matches_schema() -> None:
    import pyarrow as pa

    from raydbb.engine.manifest import SCHEMA

    doc = ROOT / "docs" / "manifest.md"
    rows = [row for t in tables(doc) for row in t if "column" in row and "type" in row]
    documented = {code(r["column"]): r["type"].strip() for r in rows}
    assert len(documented) == len(rows), "a column is documented twice"
    assert sorted(set(SCHEMA.names) - set(documented)) == [], "schema columns missing from docs/manifest.md"
    assert sorted(set(documented) - set(SCHEMA.names)) == [], "docs/manifest.md lists unknown columns"
    wrong = [f"{f.name}: docs say {documented[f.name]}, schema has {f.type}"
             for f in SCHEMA if pa.type_for_alias(documented[f.name]) != f.type]
    assert not wrong, wrong
    assert [code(r["column"]) for r in rows] == list(SCHEMA.names), "keep the table in the schema's order"
