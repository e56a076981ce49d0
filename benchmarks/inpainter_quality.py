"""Quality gate of the shipped synthetic inpainter: does a repaint show the class it was asked for?

DDB needs repaints of the causal region (the bird) that a classifier sees as the *target* class.
This benchmark measures exactly that on the synthetic benchmark, through the same inpaint stage the
engine runs (``raydbb.ddb.stages.inpaint.InpaintStage``: per-row seeds, resize, paste-back):

1. data: ``write_synthetic(seed=0)`` — the inpainter was trained on its *train* split; the gate
   uses its *test* split (never seen by the inpainter), balanced over the four groups, and, for
   reference, the train split's majority groups (what the demo actually repaints);
2. judge: the demo-sized ``small_cnn`` trained on a *group-balanced* synthetic training set drawn
   with another seed (both classes on both backgrounds in equal numbers, so it judges the bird,
   not the background);
3. repaint every image's bird region (its dataset mask dilated by ``--dilate`` px) with the OTHER
   class's prompt and with its own class's prompt (control), and classify.

Reported: the share of cross-class repaints classified as the target class (the gate: a clear majority),
the same for own-class repaints, the judge's accuracy on the unedited images, whether every pixel
outside the mask is the source's (paste-back), the raw pipeline's error outside the mask (VAE round
trip, no paste-back), and the inpainting time per image. A grid of examples is saved as PNG and
the table goes to RESULTS.md. Steps, guidance and dilation default to the demo's
(``raydbb/configs/demo.yaml``), so the gate measures what the demo runs.

    python -m benchmarks.inpainter_quality [--model DIR] [--n 200] [--steps N] [--guidance G] [--dilate PX]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmarks.cli import BenchCommand
from benchmarks.fixtures import CLASS_NAMES, bench_dir, train_demo_classifier
from benchmarks.results import markdown_table, section_header
from raydbb.config import DataConfig, InpaintConfig, StageResources
from raydbb.configs import demo_config
from raydbb.data.images import read_image, read_mask, write_png_atomic
from raydbb.data.registry import load_records
from raydbb.data.synthetic import GENERATOR_VERSION, write_synthetic
from raydbb.ddb.stages.inpaint import InpaintStage
from raydbb.ddb.stages.mask import dilate_mask
from raydbb.engine.stage import object_column
from raydbb.models.checkpoint import load_classifier
from raydbb.models.transforms import to_model_input

JUDGE_SEED = 1  # the balanced judge's data is drawn with another seed than the inpainter's
COMMAND = "python -m benchmarks.inpainter_quality"


def judge_classifier(root: Path, epochs: int = 12) -> torch.nn.Module:
    """The balanced-data ``small_cnn`` judge (trained once, cached under ``root``)."""
    data = write_synthetic(root / "balanced_data", seed=JUDGE_SEED, train_correlation=0.5,
                           landbird_fraction=0.5, n_train=3000, n_val=0, n_test=0, progress=False)
    ckpt = root / f"judge_e{epochs}"
    if not (ckpt / "classifier.json").is_file():
        train_demo_classifier(data, ckpt, epochs=epochs, seed=JUDGE_SEED)
    model, _ = load_classifier(ckpt)
    return model


@torch.no_grad()
def predict(model: torch.nn.Module, images: list[np.ndarray], image_size: int = 64) -> np.ndarray:
    """Predicted class of uint8 HxWx3 images (the engine's one preprocessing)."""
    return model(to_model_input(images, image_size)).argmax(1).numpy()


def pick_rows(frame: pd.DataFrame, per_group: int, seed: int) -> pd.DataFrame:
    """Up to ``per_group`` rows of every group present, in a seeded order."""
    parts = [g.sample(n=min(per_group, len(g)), random_state=seed) for _, g in frame.groupby("group")]
    return pd.concat(parts).reset_index(drop=True)


def repaint(stage: InpaintStage, images: list[np.ndarray], masks: list[np.ndarray], targets: np.ndarray,
            seeds: np.ndarray, batch: int) -> tuple[list[np.ndarray], float]:
    """Inpaint through the engine's stage; returns the images and the mean model seconds per image."""
    out, seconds = [], []
    for start in range(0, len(images), batch):
        sl = slice(start, start + batch)
        n = len(images[sl])
        result = stage({"source_image": object_column(images[sl]), "mask": object_column(masks[sl]),
                        "target_label": targets[sl].astype(np.int64), "seed": seeds[sl].astype(np.int64),
                        "prune_reason": np.full(n, "", dtype=object)})
        out.extend(np.asarray(im) for im in result["image"])
        seconds.extend(result["t_inpaint"])
    return out, float(np.mean(seconds))


def evaluate_subset(name: str, rows: pd.DataFrame, stage: InpaintStage, judge: torch.nn.Module,
                    args: argparse.Namespace, grid: list[np.ndarray]) -> dict[str, Any]:
    images = [read_image(p) for p in rows["path"]]
    masks = [dilate_mask(read_mask(p), args.dilate) for p in rows["mask"]]
    labels = rows["label"].to_numpy()
    seeds = args.seed * 1_000_003 + np.arange(len(rows))
    cross, sec = repaint(stage, images, masks, 1 - labels, seeds, args.batch)
    own, _ = repaint(stage, images, masks, labels, seeds, args.batch)
    pred_cross, pred_own, pred_src = predict(judge, cross), predict(judge, own), predict(judge, images)
    kept_outside = [bool((im[m == 0] == src[m == 0]).all())
                    for im, src, m in zip(cross, images, masks, strict=True)]
    per_class = {f"{CLASS_NAMES[c]}->{CLASS_NAMES[1 - c]}": float(np.mean(pred_cross[labels == c] == 1 - c))
                 for c in (0, 1) if (labels == c).any()}
    for i in range(min(4, len(rows))):
        grid.append(np.concatenate([images[i], np.repeat(masks[i][..., None] * 255, 3, -1).astype(np.uint8),
                                    cross[i], own[i]], axis=1))
    return {
        "subset": name, "n": len(rows),
        "cross_class_target_rate": float(np.mean(pred_cross == 1 - labels)),
        "cross_class_by_direction": per_class,
        "own_class_rate": float(np.mean(pred_own == labels)),
        "judge_accuracy_on_sources": float(np.mean(pred_src == labels)),
        "background_exact_rate": float(np.mean(kept_outside)),
        "seconds_per_image": sec,
        "mask_share": float(np.mean([m.mean() for m in masks])),
    }


def raw_outside_error(model: str, rows: pd.DataFrame, args: argparse.Namespace) -> float:
    """Mean |Δ| (0-255) outside the mask of the pipeline's own output (paste-back off)."""
    cfg = InpaintConfig(model=model, steps=args.steps, guidance_scale=args.guidance, paste_back=False,
                        resources=StageResources(batch_size=args.batch, model_batch_size=args.batch))
    stage = InpaintStage(cfg, CLASS_NAMES)
    images = [read_image(p) for p in rows["path"]]
    masks = [dilate_mask(read_mask(p), args.dilate) for p in rows["mask"]]
    out, _ = repaint(stage, images, masks, 1 - rows["label"].to_numpy(), np.arange(len(rows)), args.batch)
    diffs = [np.abs(o.astype(int) - s.astype(int))[m == 0].mean()
             for o, s, m in zip(out, images, masks, strict=True)]
    return float(np.mean(diffs))


def report(summary: dict[str, Any], info: dict[str, Any], load: list[float], command: str) -> str:
    """The RESULTS.md section: one row per subset."""
    rows = [{"images": r["subset"], "n": r["n"],
             "cross-class → target": f"{r['cross_class_target_rate']:.1%}",
             **{d: f"{v:.1%}" for d, v in r["cross_class_by_direction"].items()},
             "own class → own": f"{r['own_class_rate']:.1%}",
             "judge on sources": f"{r['judge_accuracy_on_sources']:.1%}",
             "pixels outside mask unchanged": f"{r['background_exact_rate']:.0%}",
             "s/image": f"{r['seconds_per_image']:.2f}"} for r in summary["results"]]
    return (section_header("7. Quality of the shipped synthetic inpainter", command, info, load)
            + f"\nEach image's bird (dataset mask dilated {summary['dilate']} px) repainted with the other "
            f"class's prompt and, as a control, its own class's, {summary['steps']} DDIM steps, guidance "
            f"{summary['guidance']:g}; judged by a small_cnn trained on group-balanced synthetic data.\n\n"
            + markdown_table(rows)
            + f"\n- raw pipeline output outside the mask (before paste-back): mean |Δ| = "
            f"{summary['raw_outside_mask_abs_error']:.1f}/255\n")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Repaint the test and train-majority subsets and judge them; the summary of both."""
    root = bench_dir() / "inpainter_quality" / f"synthetic_v{GENERATOR_VERSION}"
    t0 = time.perf_counter()
    data = write_synthetic(root / "data_seed0", seed=0, progress=False)
    records = load_records(DataConfig(name="synthetic", root=str(data)))
    judge = judge_classifier(root)
    cfg = InpaintConfig(model=args.model, steps=args.steps, guidance_scale=args.guidance,
                        resources=StageResources(batch_size=args.batch, model_batch_size=args.batch))
    stage = InpaintStage(cfg, CLASS_NAMES)
    stage.setup()
    test = pick_rows(records.split("test"), args.n // 4, args.seed)
    train = records.split("train")
    train_major = pick_rows(train[train["label"] == train["spurious"]], args.n_train // 2, args.seed)
    grid: list[np.ndarray] = []
    results = [evaluate_subset("test (balanced groups)", test, stage, judge, args, grid)]
    if len(train_major):
        results.append(evaluate_subset("train majority groups", train_major, stage, judge, args, grid))
    raw = raw_outside_error(args.model, test.head(32), args)
    write_png_atomic(root / "examples.png", np.concatenate(grid, axis=0))
    return {"model": args.model, "root": str(root), "steps": args.steps, "guidance": args.guidance,
            "dilate": args.dilate, "scheduler": type(stage.pipe.scheduler).__name__, "threads": args.threads,
            "raw_outside_mask_abs_error": raw, "results": results,
            "wall_seconds": round(time.perf_counter() - t0, 1)}


def print_summary(summary: dict[str, Any]) -> None:
    """One line per subset, then the raw pipeline's error and where the examples are."""
    results, root, raw = summary["results"], Path(summary["root"]), summary["raw_outside_mask_abs_error"]
    for r in results:
        print(f"{r['subset']:<24} n={r['n']:<4} cross-class -> target {r['cross_class_target_rate']:.1%} "
              f"{r['cross_class_by_direction']}  own-class {r['own_class_rate']:.1%}  "
              f"judge on sources {r['judge_accuracy_on_sources']:.1%}  background exact "
              f"{r['background_exact_rate']:.0%}  {r['seconds_per_image']:.2f} s/image")
    print(f"raw pipeline output outside the mask (no paste-back): mean |Δ| = {raw:.1f}/255; "
          f"examples (source | mask | other class | own class): {root / 'examples.png'}")


def main(argv: list[str] | None = None) -> int:
    demo = demo_config(bench_dir() / "unused")  # the demo's sampler settings are the defaults
    cli = BenchCommand(__doc__, "inpainter_quality", whole_doc=True)
    cli.add("--model", help="inpainting pipeline folder (default: the one in raydbb/assets)")
    cli.add("--n", type=int, default=200, help="test images (balanced over the 4 groups)")
    cli.add("--n-train", type=int, default=100, help="train majority-group images (reference)")
    cli.steps(demo.inpaint.steps, "DDIM steps (default %(default)s)")
    cli.add("--guidance", type=float, default=demo.inpaint.guidance_scale,
            help="classifier-free guidance scale (default %(default)s)")
    cli.add("--dilate", type=int, default=demo.mask.dilate,
            help="mask dilation radius in pixels (default %(default)s)")
    cli.add("--batch", type=int, default=8, help="images per pipeline call")
    cli.add("--seed", type=int, default=0)
    cli.add("--threads", type=int, default=2, help="torch threads")
    cli.add("--json", metavar="PATH", help="also write the results here")
    args = cli.parse(argv)
    command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
    torch.set_num_threads(args.threads)
    if args.model is None:
        from raydbb.assets import synthetic_inpainter_path

        args.model = str(synthetic_inpainter_path())
    summary = cli.run(args, lambda _: measure(args), lambda s, info, load: report(s, info, load, command),
                      fixtures=False, echo=False)
    print_summary(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
