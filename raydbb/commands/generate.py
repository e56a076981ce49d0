"""``raydbb generate``: select majority proxies, repaint them as the other class, prune, write a manifest."""

from __future__ import annotations

import argparse
import json

from raydbb.commands import config_command
from raydbb.config import config_from_args

HELP = """\
Generate counterfactual training images (DDB steps 1, 4, 5, 6) into the run folder `out`:

  1. score every training image with the ERM checkpoint (generate.classifier, default <out>/erm):
     per-sample loss -> the lowest-loss share per class (select.fraction / count /
     per_class_fraction) are the majority proxies; tau per class -> <out>/tau.json; the token
     pool for `raydbb invert` -> <out>/token_pool/<class>.csv
  2. stream the selected images through Ray Data actor pools:
     load -> mask -> expand (one row per other class and variant) -> inpaint -> prune -> write
     PNGs under <out>/images and <out>/masks, Parquet manifest parts under <out>/manifest.

Rerunning the same command into the same `out` resumes: a finished run is skipped (its step
marker OUT/.steps/generate.json, the one `python -m raydbb.jobs.pipeline` writes), an interrupted
one skips the samples already in the manifest (the summary says how many). Resources per stage
come from the config (mask/inpaint/prune.resources.{actors,num_cpus,num_gpus,batch_size,
model_batch_size}); the same config runs locally or on a cluster (ray.address or RAY_ADDRESS).

Example:
  raydbb generate --config jobs/configs/synthetic.yaml out=runs/demo inpaint.n_variants=2
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = config_command(
        subparsers, "generate", "select, mask, inpaint and prune counterfactuals into a Parquet manifest",
        HELP, run)
    parser.add_argument("--engine", choices=["ray", "loop"], default="ray",
                        help="ray: Ray Data actor pools (default); loop: the same stages in one "
                             "sequential process (baseline for benchmarks and debugging)")
    parser.add_argument("--allow-changed", action="store_true",
                        help="add samples to an out whose earlier samples were made with other settings "
                             "(refused by default; the change is recorded in OUT/generate_changes.json)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)  # first: a config error is reported without loading torch
    if args.dry_run:
        from raydbb.plan import run_dry

        return run_dry(cfg, "generate")
    from raydbb.ddb.generate import format_summary, run_generate
    from raydbb.workflow import run_command

    def generate(cfg, progress):
        return run_generate(cfg, engine=args.engine, progress=progress, allow_changed=args.allow_changed)

    summary = run_command(cfg, "generate", generate, progress=not args.no_progress,
                          stdout_for_result=args.json)["summary"]
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0
