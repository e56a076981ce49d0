"""``raydbb data``: look at a dataset the way raydbb reads it, and build the synthetic benchmark."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raydbb.config import DATASETS, DataConfig, build_config

if TYPE_CHECKING:  # pandas-backed: imported when a command runs, not for --help
    from raydbb.data.records import RecordSet

INSPECT_HELP = """\
Read a dataset exactly as training and generation will, validate it (missing files, columns,
images, unknown split or label values fail with one line), and print the number of samples per
(split, group) together with the class and spurious-attribute names.

Layouts (docs/datasets.md has the details):
  waterbirds  ROOT/metadata.csv (img_filename,y,place,split) + images relative to ROOT
  celeba      ROOT/list_attr_celeba.txt + list_eval_partition.txt, or ROOT/metadata.csv
              (image_id,Blond_Hair,Male,split); images in ROOT/img_align_celeba/
  metashift   ROOT/{train,test}/{cat,dog}/<class>(<context>)/ as distributed by DISC
  csv         ROOT/metadata.csv (path,label[,spurious][,split][,mask]) + optional classes.json
  synthetic   the folder written by `raydbb data synth` (csv layout)

Example:  raydbb data inspect --dataset waterbirds --root /data/waterbird_complete95_forest2water2
"""

SYNTH_HELP = """\
Draw the embedded synthetic spurious-correlation benchmark: landbird-like vs waterbird-like shapes
on land vs water textures, with a pixel-exact foreground mask per image. In train the class agrees
with the background with probability --train-correlation; in val and test the correlation is
broken. Deterministic from --seed. Written in the generic CSV layout, then inspected.

Example:  raydbb data synth --out runs/demo/data --seed 0
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="inspect a dataset or build the synthetic benchmark",
        description="Dataset tools: `inspect` a dataset folder, `synth` the synthetic benchmark.",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)

    inspect = sub.add_parser(
        "inspect", help="per-(split, group) counts and class names of a dataset folder",
        description=INSPECT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inspect.add_argument("--dataset", required=True, choices=DATASETS, help="dataset format of ROOT")
    inspect.add_argument("--root", required=True, metavar="DIR", help="dataset folder")
    inspect.add_argument("--format", choices=["table", "json"], default="table",
                         help="human-readable table (default) or JSON on stdout")
    inspect.add_argument("--csv-file", metavar="NAME",
                         help="csv/synthetic/celeba-CSV: metadata file inside ROOT (default metadata.csv)")
    inspect.add_argument("--balanced-train", action="store_true",
                         help="celeba: show the seeded class-balanced train subsample")
    inspect.add_argument("--val-fraction", type=float, metavar="P",
                         help="metashift: share of each test folder moved to val (default 0.15)")
    inspect.add_argument("--split-seed", type=int, metavar="N",
                         help="seed of the metashift val draw / celeba balanced subsample (default 0)")
    inspect.add_argument("--check-images", action="store_true",
                         help="decode every image and list the ones that cannot be read "
                              "(exit status 1 when there are any)")
    inspect.set_defaults(func=run_inspect)

    synth = sub.add_parser(
        "synth", help="write the synthetic benchmark (generic CSV layout) and inspect it",
        description=SYNTH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    synth.add_argument("--out", required=True, metavar="DIR", help="folder to write (created if missing)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; same seed, same images (default 0)")
    synth.add_argument("--train-correlation", type=float, metavar="P",
                       help="P(background matches class) in train; val/test are balanced (default 0.95)")
    synth.add_argument("--n-train", type=int, metavar="N", help="number of train images")
    synth.add_argument("--n-val", type=int, metavar="N", help="number of validation images")
    synth.add_argument("--n-test", type=int, metavar="N", help="number of test images")
    synth.add_argument("--size", type=int, metavar="PX", help="image side in pixels (default 64)")
    synth.add_argument("--format", choices=["table", "json"], default="table",
                       help="how to print the counts of the result")
    synth.set_defaults(func=run_synth)


def _given(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """Only the options the user set, so the defaults stay in one place (config / the writer)."""
    return {n: getattr(args, n) for n in names if getattr(args, n) not in (None, False)}


def inspect_summary(records: RecordSet, root: str) -> dict[str, Any]:
    """What ``data inspect --format json`` prints: names, per-(split, group) counts, totals."""
    frame = records.frame
    counts = records.split_group_counts()
    return {
        "dataset": records.name,
        "root": root,
        "class_names": records.class_names,
        "spurious_names": records.spurious_names,
        "group_names": records.group_names(),
        "counts": counts,
        "totals": {split: int(sum(c.values())) for split, c in counts.items()},
        "with_mask": {s: int(frame.loc[frame["split"] == s, "mask"].notna().sum()) for s in counts},
    }


def _numbered(names: list[str]) -> str:
    return ", ".join(f"{n} ({i})" for i, n in enumerate(names)) or "none"


def format_inspect(summary: dict[str, Any]) -> str:
    """The readable table of :func:`inspect_summary`."""
    lines = [
        f"{summary['dataset']} at {summary['root']}",
        f"classes:  {_numbered(summary['class_names'])}",
        f"spurious: {_numbered(summary['spurious_names'])}",
    ]
    if summary["spurious_names"]:
        lines.append(f"groups:   label * {len(summary['spurious_names'])} + spurious, named class/spurious")
    else:
        lines.append("groups:   unknown (no spurious column); worst-group accuracy needs one on val/test")
    show_masks = any(summary["with_mask"].values())
    width = max([len("group"), *(len(g) for c in summary["counts"].values() for g in c)])
    header = f"{'split':<6} {'group':<{width}} {'count':>7} {'share':>7}" + ("  masks" if show_masks else "")
    lines += ["", header, "-" * len(header)]
    for split, counts in summary["counts"].items():
        total = summary["totals"][split]
        present = [(g, n) for g, n in counts.items() if n]
        for i, (group, n) in enumerate(present):
            lines.append(f"{split if i == 0 else '':<6} {group:<{width}} {n:>7} {100 * n / total:>6.1f}%")
        tail = f"{'':<6} {'total':<{width}} {total:>7} {'':>7}"
        lines.append(tail + (f"  {summary['with_mask'][split]:>5}" if show_masks else ""))
        empty = [g for g, n in counts.items() if not n]
        if empty:  # listed compactly: an empty group is worth seeing, a row of zeros is noise
            lines.append(f"{'':<6} no samples: {', '.join(empty)}")
    if "unreadable_images" in summary:
        bad = summary["unreadable_images"]
        lines += ["", f"images that cannot be read: {len(bad)}"]
        lines += [f"  {reason}" for reason in list(bad.values())[:20]]
        if len(bad) > 20:
            lines.append(f"  ... and {len(bad) - 20} more (--format json lists them all)")
    return "\n".join(line.rstrip() for line in lines)


def _print(records: RecordSet, root: str, fmt: str) -> None:
    summary = inspect_summary(records, root)
    print(json.dumps(summary, indent=2) if fmt == "json" else format_inspect(summary))


def _load(data: dict[str, Any]) -> RecordSet:
    from raydbb.data.registry import load_records

    cfg: DataConfig = build_config({"data": data}).data  # one-line ConfigError on bad values
    return load_records(cfg)


def run_inspect(args: argparse.Namespace) -> int:
    """``raydbb data inspect``."""
    data = {"name": args.dataset, "root": args.root}
    data.update(_given(args, ["csv_file", "balanced_train", "val_fraction", "split_seed"]))
    records = _load(data)
    summary = inspect_summary(records, str(Path(args.root).expanduser().absolute()))
    if args.check_images:
        from raydbb.data.scan import unreadable_images

        summary["unreadable_images"] = unreadable_images(records.frame["path"].astype(str))
    print(json.dumps(summary, indent=2) if args.format == "json" else format_inspect(summary))
    return 1 if summary.get("unreadable_images") else 0


def run_synth(args: argparse.Namespace) -> int:
    """``raydbb data synth``."""
    from raydbb.data.synthetic import write_synthetic  # imported here: owned by its own module

    out = write_synthetic(args.out, seed=args.seed,
                          **_given(args, ["train_correlation", "n_train", "n_val", "n_test", "size"]))
    records = _load({"name": "synthetic", "root": str(out)})
    if args.format == "table":
        print(f"wrote the synthetic benchmark to {out}\n")
    _print(records, str(out), args.format)
    return 0
