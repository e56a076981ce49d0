"""Configs shipped inside the package: the demo's (``demo.yaml``, ``demo_fast.yaml``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from raydbb.assets import synthetic_inpainter_available, synthetic_inpainter_path
from raydbb.config import RaydbbConfig, build_config, merge_trees, parse_overrides
from raydbb.errors import ConfigError

DEMO_CONFIG = "demo.yaml"
FAST_CONFIG = "demo_fast.yaml"


def packaged_config(name: str) -> dict[str, Any]:
    """The raw tree of the packaged config ``name`` (e.g. ``demo.yaml``)."""
    text = resources.files("raydbb").joinpath("configs", name).read_text()
    tree = yaml.safe_load(text) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"packaged config {name}: expected a mapping")
    return tree


def demo_config(out: str | Path, seed: int = 0, train_correlation: float | None = None, fast: bool = False,
                overrides: list[str] | None = None) -> RaydbbConfig:
    """The demo's config: ``demo.yaml`` (+ ``demo_fast.yaml``), then the run's values, then overrides.

    The run's values: ``out``, ``data.root = OUT/data``, ``seed`` for the run, the data, training
    and textual inversion, ``data.synthetic.train_correlation`` when given, and ``inpaint.model``
    = the shipped synthetic inpainter unless the config names another.
    """
    tree = packaged_config(DEMO_CONFIG)
    if fast:
        tree = merge_trees(tree, packaged_config(FAST_CONFIG))
    run: dict[str, Any] = {"out": str(out), "seed": seed, "data": {"root": str(Path(out) / "data")},
                           "train": {"seed": seed}, "invert": {"seed": seed}}
    if train_correlation is not None:
        run["data"]["synthetic"] = {"train_correlation": train_correlation}
    tree = merge_trees(merge_trees(tree, run), parse_overrides(overrides))
    if not tree.get("inpaint", {}).get("model") and synthetic_inpainter_available():
        tree = merge_trees(tree, {"inpaint": {"model": str(synthetic_inpainter_path())}})
    return build_config(tree)
