"""Subcommands of the ``raydbb`` CLI: argument parsing and one call into the library each."""

import argparse
from collections.abc import Callable

from raydbb.config import add_config_args
from raydbb.plan import add_dry_run_arg


def config_command(subparsers: argparse._SubParsersAction, name: str, summary: str, description: str,
                   run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """The parser of a config-driven command: ``--config FILE``, ``section.field=value`` overrides
    and ``--dry-run``; the command adds its own options to it."""
    parser = subparsers.add_parser(name, help=summary, description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    add_dry_run_arg(parser)
    parser.set_defaults(func=run)
    return parser
