"""The ``raydbb`` command line. Each subcommand lives in ``raydbb/commands/<name>.py``."""

from __future__ import annotations

import argparse
import importlib
import sys

from raydbb.config import parse_args
from raydbb.errors import RaydbbError

# Modules that define ``register(subparsers)``; imported lazily so ``--help`` stays fast.
COMMAND_MODULES = [
    "raydbb.commands.data",
    "raydbb.commands.invert",
    "raydbb.commands.prune",
    "raydbb.commands.generate",
    "raydbb.commands.retrain",
    "raydbb.commands.tune",
    "raydbb.commands.train_erm",
    "raydbb.commands.evaluate",
    "raydbb.commands.submit",
    "raydbb.commands.train_inpainter",
    "raydbb.commands.demo",
    "raydbb.commands.report",
    "raydbb.commands.compare",
    "raydbb.commands.export",
]

DESCRIPTION = """\
raydbb: Diffusion Driven Balancing (DDB) on Ray.

Find majority-group training images with an ERM classifier, repaint their causal part as the
other class with a diffusion inpainter, prune repaints that did not change what the classifier
sees, and retrain with the kept repaints up-weighted.

Typical order:  data synth/inspect -> train-erm -> invert -> generate -> retrain -> evaluate
Every config-driven command takes --config FILE plus section.field=value overrides.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raydbb", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except RaydbbError as err:
        print(f"raydbb: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
