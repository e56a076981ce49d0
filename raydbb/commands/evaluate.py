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
Print, per split, the accuracy of every (class, spurious) group, the worst-group accuracy, the
average over all samples and the average weighted by the TRAINING group proportions (the
Waterbirds convention). Two uses:

A run's evaluation (--config, no --checkpoint/--dataset/--root/--out): the evaluate step of the
pipeline. Every checkpoint of the run (OUT/erm, and OUT/ddb once retrained) is scored on val and
test into OUT/metrics.json, through the same resumable step runner as the other commands: a rerun
with nothing changed is skipped (marker OUT/.steps/evaluate.json), a new retraining makes it run
again.

Any checkpoint on any dataset (--checkpoint, --dataset/--root, --out or --splits): a checkpoint
folder (model.safetensors + classifier.json, as written by train-erm or retrain) is scored on the
dataset of --dataset/--root (or the config's data section) into
CHECKPOINT/evaluation-<dataset>.json (--out to choose). No run folder, config.yaml or marker is
written, and the checkpoint's own metrics.json (its training record) is never replaced.

Examples:
  raydbb evaluate --config jobs/configs/synthetic.yaml
  raydbb evaluate --checkpoint runs/demo/erm --dataset synthetic --root runs/demo/data
  raydbb evaluate --checkpoint runs/demo/ddb --out runs/demo/ddb-on-test.json --splits test
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = config_command(
        subparsers, "evaluate",
        "per-group / worst-group accuracy of a checkpoint on a dataset's val and test", HELP, run)
    parser.add_argument("--checkpoint", metavar="DIR",
                        help="checkpoint folder (default: OUT/erm of the config)")
    parser.add_argument("--dataset", choices=DATASETS, help="dataset format (overrides data.name)")
    parser.add_argument("--root", metavar="DIR", help="dataset folder (overrides data.root)")
    parser.add_argument("--splits", help="comma-separated splits (default val,test)")
    parser.add_argument("--out", metavar="FILE",
                        help="metrics file (default: CHECKPOINT/evaluation-<dataset>.json)")
    parser.add_argument("--device", help="torch device, e.g. cuda (default: the config's device)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)  # first: a config error is reported without loading torch
    from raydbb.data.registry import load_records
    from raydbb.training.evaluate import evaluate_checkpoint, write_metrics
    from raydbb.training.metrics import format_group_table

    if args.device:
        cfg.device = args.device
    ad_hoc = any(v is not None for v in (args.checkpoint, args.dataset, args.root, args.out, args.splits))
    if args.dataset:
        cfg.data.name = args.dataset
    if args.root:
        cfg.data.root = args.root
    ckpt = Path(args.checkpoint) if args.checkpoint else RunDir(cfg.out).erm
    splits = [s.strip() for s in (args.splits or "val,test").split(",") if s.strip()]
    if args.dry_run:
        from raydbb.plan import run_dry

        missing = [] if (ckpt / "classifier.json").is_file() else [
            f"--checkpoint {ckpt}: no classifier.json (not a checkpoint folder)"]
        what = (f"checkpoint: {ckpt}; splits: {splits}" if ad_hoc
                else f"the run's checkpoints -> {RunDir(cfg.out).metrics}")
        return run_dry(cfg, "evaluate", problems=missing, notes=[what])
    if not ad_hoc:
        from raydbb.workflow import EVALUATE, run_command

        result = run_command(cfg, EVALUATE.name, EVALUATE.run, progress=not args.no_progress)
        if result["status"] == "ran":
            print(f"wrote {RunDir(cfg.out).metrics}")
        return 0
    records = load_records(cfg.data)
    metrics = evaluate_checkpoint(ckpt, records, splits, device=cfg.device, progress=not args.no_progress)
    out = Path(args.out) if args.out else ckpt / f"evaluation-{sanitize_id(records.name)}.json"
    if out.resolve() == (ckpt / "metrics.json").resolve():
        raise ConfigError(f"--out {out}: that is the checkpoint's training record; choose another file")
    write_metrics(out, metrics, run={"checkpoint": str(ckpt), "dataset": records.name,
                                     "data_root": str(cfg.data.root)})
    print(format_group_table(metrics, title=f"{ckpt} on {records.name} ({cfg.data.root})"))
    print(f"wrote {out}")
    return 0
