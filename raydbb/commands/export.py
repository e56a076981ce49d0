"""``raydbb export``: the balanced training set of a run in layouts other training stacks read."""

from __future__ import annotations

import argparse
import json

from raydbb.config import add_config_args

HELP = """\
Write the balanced training set of a run folder (the original training split plus the repaints
raydbb retrain would use, chosen by the same rule and shares) for a training stack of your own
(timm, Lightning, a Hugging Face Trainer). Every row carries its label, its group where the
dataset knows it (originals; repaints are "unknown"), its lineage (source_id, source_label, the
file it came from) and its weight: 1 for originals, lambda of its label for repaints.

Formats (into --dest, default OUT/export/<format>/):
  imagefolder  DEST/<class>/<file> + DEST/rows.csv   torchvision.datasets.ImageFolder(DEST)
  csv          DEST/train/<file> + DEST/train/metadata.csv (file_name, label, group, source_id,
               weight, ...): the Hugging Face "imagefolder" convention,
               load_dataset("imagefolder", data_dir=DEST)
  webdataset   DEST/shard-NNNNNN.tar (<key>.png, <key>.cls, <key>.json) + DEST/rows.csv
Each also writes DEST/export.json (counts per class, lambda, the config used).

The config is --config FILE when given, else the run's OUT/ddb/retrain_config.yaml, else
OUT/config.yaml, else OUT/generate_config.yaml; section.field=value overrides apply on top (e.g.
retrain.keep_fraction=0.5). Images are copied (--hardlink: hard links where the filesystem allows).
The export is built beside DEST and renamed into place when complete; a non-empty DEST is replaced
only with --overwrite.

Examples:
  raydbb export --run runs/demo --format imagefolder
  raydbb export --run runs/demo --format webdataset --shard-size 500 --dest /data/demo-wds
  raydbb export --run runs/demo --format csv --config runs/demo/tune/best.yaml
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="write the balanced training set (originals + kept repaints) as ImageFolder, "
                       "WebDataset shards or HF imagefolder CSV",
        description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", metavar="OUT", help="the run folder (default: the config's out)")
    parser.add_argument("--format", required=True, choices=["imagefolder", "webdataset", "csv"],
                        help="layout to write")
    parser.add_argument("--dest", metavar="DIR", help="folder to write (default OUT/export/<format>)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --dest")
    parser.add_argument("--hardlink", action="store_true",
                        help="hard-link images instead of copying them (copies where links fail)")
    parser.add_argument("--shard-size", type=int, default=1000, metavar="N",
                        help="webdataset: samples per tar shard (default 1000)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_config_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from raydbb.config import load_config
    from raydbb.ddb.export import export_run, format_summary, run_config
    from raydbb.errors import ConfigError

    if args.run is None:
        if args.config is None:
            raise ConfigError("give --run OUT (the run folder) or --config FILE (its out is the run)")
        cfg, source = load_config(args.config, args.overrides), args.config
        folder = cfg.out
    else:
        folder = args.run
        cfg, source = run_config(folder, args.config, args.overrides)
    summary = export_run(folder, args.format, cfg, dest=args.dest, overwrite=args.overwrite,
                         link=args.hardlink, shard_size=args.shard_size, config_source=source)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0
