"""``raydbb evaluate``: group metrics of a classifier checkpoint on a dataset's val and test splits."""

from __future__ import annotations

import argparse
from pathlib import Path

from raydbb.commands import config_command
from raydbb.config import DATASETS, config_from_args
from raydbb.errors import ConfigError
from raydbb.ids import sanitize_id
from raydbb.rundir import RunDir

HELP = """\
Evaluate a checkpoint folder (model.safetensors + classifier.json, as written by train-erm) on a
dataset and print, per split, the accuracy of every (class, spurious) group, the worst-group
accuracy, the average over all samples and the average weighted by the TRAINING group
proportions (the Waterbirds convention). Writes the same numbers to CHECKPOINT/evaluation-<dataset>.json
(--out to choose); the checkpoint's own metrics.json (its training record) is never replaced.

The dataset comes from --dataset/--root, or from the data section of --config (plus overrides);
the checkpoint defaults to OUT/erm of the config.

Examples:
  raydbb evaluate --checkpoint runs/demo/erm --dataset synthetic --root runs/demo/data
  raydbb evaluate --config jobs/configs/synthetic.yaml --out runs/demo/eval.json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = config_command(
        subparsers, "evaluate",
        "per-group / worst-group accuracy of a checkpoint on a dataset's val and test", HELP, run)
    parser.add_argument("--checkpoint", metavar="DIR",
                        help="checkpoint folder (default: OUT/erm of the config)")
    parser.add_argument("--dataset", choices=DATASETS, help="dataset format (overrides data.name)")
    parser.add_argument("--root", metavar="DIR", help="dataset folder (overrides data.root)")
    parser.add_argument("--splits", default="val,test", help="comma-separated splits (default val,test)")
    parser.add_argument("--out", metavar="FILE",
                        help="metrics file (default: CHECKPOINT/evaluation-<dataset>.json)")
    parser.add_argument("--device", help="torch device, e.g. cuda (default: the config's device)")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)  # first: a config error is reported without loading torch
    from raydbb.data.registry import load_records
    from raydbb.training.evaluate import evaluate_checkpoint, write_metrics
    from raydbb.training.metrics import format_group_table

    if args.dataset:
        cfg.data.name = args.dataset
    if args.root:
        cfg.data.root = args.root
    ckpt = Path(args.checkpoint) if args.checkpoint else RunDir(cfg.out).erm
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    if args.dry_run:
        from raydbb.plan import run_dry

        missing = [] if (ckpt / "classifier.json").is_file() else [
            f"--checkpoint {ckpt}: no classifier.json (not a checkpoint folder)"]
        return run_dry(cfg, "evaluate", problems=missing, notes=[f"checkpoint: {ckpt}; splits: {splits}"])
    records = load_records(cfg.data)
    metrics = evaluate_checkpoint(ckpt, records, splits, device=args.device or cfg.device, progress=True)
    out = Path(args.out) if args.out else ckpt / f"evaluation-{sanitize_id(records.name)}.json"
    if out.resolve() == (ckpt / "metrics.json").resolve():
        raise ConfigError(f"--out {out}: that is the checkpoint's training record; choose another file")
    write_metrics(out, metrics, run={"checkpoint": str(ckpt), "dataset": records.name,
                                     "data_root": str(cfg.data.root)})
    print(format_group_table(metrics, title=f"{ckpt} on {records.name} ({cfg.data.root})"))
    print(f"wrote {out}")
    return 0
