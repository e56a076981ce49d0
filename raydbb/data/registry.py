"""One entry point from a :class:`~raydbb.config.DataConfig` to the records of its dataset."""

from __future__ import annotations

from raydbb.config import DataConfig
from raydbb.data.celeba import read_celeba
from raydbb.data.generic_csv import read_generic_csv
from raydbb.data.metashift import read_metashift
from raydbb.data.records import RecordSet
from raydbb.data.waterbirds import read_waterbirds
from raydbb.errors import DataError


def load_records(cfg: DataConfig) -> RecordSet:
    """Read the dataset ``cfg.name`` under ``cfg.root`` into the common schema.

    ``synthetic`` is the generic CSV layout that ``raydbb data synth`` writes, read by the same reader.
    """
    if cfg.name == "waterbirds":
        return read_waterbirds(cfg.root)
    if cfg.name == "celeba":
        return read_celeba(cfg.root, cfg.csv_file, cfg.balanced_train, cfg.split_seed)
    if cfg.name == "metashift":
        return read_metashift(cfg.root, cfg.val_fraction, cfg.split_seed)
    if cfg.name in ("csv", "synthetic"):
        return read_generic_csv(cfg.root, cfg.csv_file, cfg.class_names, cfg.spurious_names, name=cfg.name)
    raise DataError(f"unknown dataset {cfg.name!r}; expected waterbirds, celeba, metashift, csv or synthetic")
