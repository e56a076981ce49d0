"""Subcommands of the ``raydbb`` CLI; shared argument helpers."""

from __future__ import annotations

import argparse

from raydbb.config import RaydbbConfig, load_config


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` plus positional ``section.field=value`` overrides."""
    parser.add_argument("--config", help="YAML config file (defaults are used for missing fields)")
    parser.add_argument(
        "overrides", nargs="*", metavar="section.field=value",
        help="override any config field, e.g. train.epochs=3 data.root=/data/waterbirds",
    )


def config_from_args(args: argparse.Namespace) -> RaydbbConfig:
    return load_config(args.config, args.overrides)
