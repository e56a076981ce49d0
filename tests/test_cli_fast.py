"""The CLI answers at once: --help, every subcommand's --help and a config error import none of the
heavy libraries (torch, diffusers, transformers, Ray), which take seconds to load."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "diffusers", "transformers", "ray")
PROBE = """
import sys
from raydbb.cli import main
try:
    code = main({argv!r})
except SystemExit as exit:
    code = exit.code
print("HEAVY", sorted(m for m in {heavy!r} if m in sys.modules), "CODE", code, file=sys.stderr)
"""


def _probe(argv: list[str]) -> tuple[list[str], str]:
    run = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv, heavy=HEAVY)],
                         capture_output=True, text=True, timeout=120)
    line = [ln for ln in run.stderr.splitlines() if ln.startswith("HEAVY")][-1]
    return eval(line.split("HEAVY ", 1)[1].split(" CODE")[0]), line  # a list literal we printed


def _commands() -> list[str]:
    from raydbb.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(sub.choices)


@pytest.mark.parametrize("argv", [["--help"], *([c, "--help"] for c in _commands())], ids=" ".join)
def test_help_imports_no_heavy_library(argv):
    heavy, line = _probe(argv)
    assert heavy == [], line


def test_config_error_imports_no_heavy_library():
    heavy, line = _probe(["train-erm", "train.lr=.inf"])
    assert heavy == [] and "CODE 2" in line, line
