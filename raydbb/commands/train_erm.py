"""``raydbb train-erm``: train the ERM classifier under Ray Train, select on val worst-group accuracy."""

from __future__ import annotations

import argparse

from raydbb.commands import config_command
from raydbb.config import config_from_args

HELP = """\
Train the ERM classifier on the training split (no group labels used for training), validate
every epoch and keep the epoch with the best validation worst-group accuracy (the model-selection
rule of the paper and its baselines). Training runs under Ray Train: train.num_workers workers of
train.cpus_per_worker CPUs each, on GPUs with train.use_gpu=true (same code).

Writes to OUT/erm/:
  model.safetensors, classifier.json   the selected checkpoint (architecture, classes, val metrics)
  metrics.json                         val and test: worst_group_accuracy, average_accuracy (all
                                       samples), weighted_average_accuracy (train group
                                       proportions), group_accuracy, group_count; run history
and prints the per-group table. A rerun with the same config is skipped (step marker
OUT/.steps/train_erm.json, shared with `python -m raydbb.jobs.pipeline`).

Examples:
  raydbb train-erm --config jobs/configs/synthetic.yaml
  raydbb train-erm --config jobs/configs/waterbirds.yaml \\
      classifier.weights=/models/resnet50-11ad3fa6.pth train.use_gpu=true
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    config_command(
        subparsers, "train-erm", "train the ERM classifier (Ray Train), write OUT/erm/ and metrics.json",
        HELP, run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)  # first: a config error is reported without loading torch
    if args.dry_run:
        from raydbb.plan import run_dry

        return run_dry(cfg, "train-erm")
    from raydbb.rundir import RunDir
    from raydbb.workflow import TRAIN_ERM, run_command

    run_command(cfg, TRAIN_ERM.name, TRAIN_ERM.run)
    print(f"{RunDir(cfg.out).erm / 'metrics.json'} holds the metrics and the epoch history")
    return 0
