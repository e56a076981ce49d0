"""``raydbb retrain``: reweighted retraining (Eq. 6-8) from the ERM weights on originals + kept repaints."""

from __future__ import annotations

import argparse

from raydbb.commands import config_command
from raydbb.config import config_from_args

HELP = """\
Retrain the classifier on the original training split plus the kept repaints of a raydbb
generate run, each repaint labelled with its target class. Per batch

    L = CE(originals in the batch) + sum_c lambda_c * CE(repaints labelled c in the batch)

(each CE a mean over its subset; a subset absent from the batch adds exactly 0). Training starts
from the ERM checkpoint (retrain.checkpoint, default OUT/erm), runs under Ray Train with the
train section's workers (train.num_workers, train.cpus_per_worker, train.use_gpu) for
retrain.epochs epochs at retrain.lr, and keeps the epoch with the best validation worst-group
accuracy.

Which repaints: the rows the prune rules decided. retrain.prune_from=manifest (default) uses
the manifest's recorded kept column; retrain.prune_from=config re-decides the stored scores
with prune.delta / prune.prob_rule (as the best.yaml of raydbb tune does). Then, per target
class, the retrain.keep_fraction share with the highest IG score.

Options:
  retrain.lambdas=6 or retrain.lambdas="{landbird: 6, waterbird: 8}"   (every class, by name)
  retrain.last_layer_only=true      train the linear head only (backbone frozen)
  --fast                            = retrain.head_on_features=true: head only, on backbone
                                    features computed once (no augmentation; retrain.fast_epochs
                                    epochs at retrain.fast_lr; seconds) — reproduces the score of
                                    a raydbb tune trial with the same config and seed

Writes OUT/ddb/: model.safetensors + classifier.json (the selected model), metrics.json (val,
test: the layout of raydbb evaluate, plus the start model's numbers under run.start_metrics),
retrain_config.yaml; and prints the group table of the ERM model next to the retrained one. A
rerun with the same config and options is skipped (step marker OUT/.steps/retrain.json, shared
with `python -m raydbb.jobs.pipeline`).

Examples:
  raydbb retrain --config jobs/configs/synthetic.yaml --manifest runs/demo
  raydbb retrain --config runs/demo/tune/best.yaml --manifest runs/demo retrain.epochs=10
  raydbb retrain --config runs/demo/tune/best.yaml --manifest runs/demo --fast
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = config_command(
        subparsers, "retrain", "reweighted retraining on originals + kept repaints (Ray Train) -> OUT/ddb",
        HELP, run)
    parser.add_argument("--manifest", metavar="DIR",
                        help="run folder of raydbb generate, or its manifest/ (default: the config's out)")
    parser.add_argument("--fast", action="store_true",
                        help="train the head on cached backbone features instead of the images "
                             "(= retrain.head_on_features=true)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)  # first: a config error is reported without loading torch
    if args.dry_run:
        from raydbb.plan import run_dry

        return run_dry(cfg, "retrain", manifest=args.manifest)
    from functools import partial

    from raydbb.workflow import RETRAIN, manifest_options, run_command, run_retrain_step

    if args.fast:
        cfg.retrain.head_on_features = True
    run_command(cfg, RETRAIN.name, partial(run_retrain_step, manifest=args.manifest),
                progress=not args.no_progress, options=manifest_options(cfg, args.manifest))
    return 0
