"""``raydbb tune``: Ray Tune search over δ, the probability rule, repaint shares, λ_c and lr."""

from __future__ import annotations

import argparse

from raydbb.commands import config_command
from raydbb.config import config_from_args

HELP = """\
Search the retraining choices of DDB with Ray Tune, without regenerating anything:

  delta          IG threshold re-applied to the manifest's stored scores (tune.deltas, the
                 config's prune.delta and tune.delta_quantiles of the stored IG scores)
  prob rule      on / off (tune.prob_rule)
  keep fraction  per class, the share of its kept repaints used, highest IG score first
                 (tune.keep_fractions; stands in for the selection fraction alpha)
  lambda_c       per class, log-uniform in tune.lambda_range
  lr             the head learning rate of fast mode (retrain.fast_lr), log-uniform in
                 tune.lr_range (full retraining keeps retrain.lr)

Fast mode: the start model's backbone features are computed once for originals, repaints and
validation images and put in Ray's object store; each trial trains only the linear head on them
with the reweighted loss for retrain.fast_epochs epochs, reporting after every epoch; ASHA stops
unpromising trials (tune.grace_period, tune.reduction_factor). Objective: validation worst-group
accuracy of the epoch the trial would select. Budget: tune.num_samples trials and
tune.time_budget_s seconds; tune.max_concurrent_trials trials of tune.cpus_per_trial CPUs each
(fractions are fine on a small machine).

Writes OUT/tune/:
  best.yaml    the full config with the winning prune/retrain fields (retrain.prune_from=config);
               raydbb retrain --config OUT/tune/best.yaml accepts it, and with --fast reproduces
               the trial's validation score
  trials.csv   every trial: objective, epochs run, early stop, parameters, repaints per class
  ray/         Ray Tune's own experiment folder
With --full-retrain (or tune.full_retrain=true) the best configuration is then retrained in full
(raydbb retrain) into OUT/ddb.

The search is a step of the run folder (marker OUT/.steps/tune.json): run again with the same
settings, manifest, ERM model and repaints, it is skipped; any of those changed, it runs again.

Examples:
  raydbb tune --config jobs/configs/synthetic.yaml --manifest runs/demo tune.num_samples=200
  raydbb tune --config jobs/configs/synthetic.yaml --full-retrain tune.time_budget_s=300
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = config_command(
        subparsers, "tune", "Ray Tune over thresholds, repaint shares, lambda and lr -> OUT/tune/best.yaml",
        HELP, run)
    parser.add_argument("--manifest", metavar="DIR",
                        help="run folder of raydbb generate, or its manifest/ (default: the config's out)")
    parser.add_argument("--full-retrain", action="store_true",
                        help="retrain the best configuration in full afterwards (raydbb retrain)")
    parser.add_argument("--no-progress", action="store_true", help="no progress output from Ray Tune")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)  # first: a config error is reported without loading torch
    if args.dry_run:
        from raydbb.plan import run_dry

        return run_dry(cfg, "tune", manifest=args.manifest)
    from functools import partial

    from raydbb.config import load_config
    from raydbb.workflow import RETRAIN, TUNE, manifest_options, run_command, run_retrain_step, run_tune_step

    options = manifest_options(cfg, args.manifest)
    summary = run_command(cfg, TUNE.name, partial(run_tune_step, manifest=args.manifest),
                          progress=not args.no_progress, options=options)["summary"]
    if args.full_retrain or cfg.tune.full_retrain:
        # The retrain step of this run folder with the winning settings, in full (not the head on
        # cached features the search scored); a finished one is skipped.
        best = load_config(summary["best"]).model_copy(update={"out": cfg.out})
        best.retrain.head_on_features = False
        run_command(best, RETRAIN.name, partial(run_retrain_step, manifest=args.manifest),
                    progress=not args.no_progress, options=options)
    return 0
