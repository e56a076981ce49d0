"""IG pruning cost: raydbb's batched mask-summed IG vs captum's ``IntegratedGradients`` per image,
then the quadrature and step count needed to reproduce the 50-step keep/prune decisions.

Pairs (source x, repaint x', mask m, target y') come from the synthetic generator, which can
redraw a sample with the other bird on the same background and pose: an *ideal* repaint (the
bird swapped, m = both birds) and a *failed* one (the bird erased to background, m = the bird).
Models: ResNet-50 at 224 px (random weights: speed and agreement only) and the demo classifier
(``small_cnn`` width 16 at 64 px, briefly trained).

1. **Speed and agreement at 50 steps.** captum's ``IntegratedGradients(model).attribute(x', x,
   target=y', n_steps=50)`` with its defaults (Gauss–Legendre, all 50 points in one batch), one call
   per image, then ``(attr.sum(channels) * m).sum()``; vs :func:`raydbb.ddb.ig.path_ig_scores`
   at 50 Gauss–Legendre steps (points of many images per forward/backward). Same images, model,
   threads, process.
2. **Steps needed.** On the demo classifier, every (quadrature, steps) setting is scored against
   the 50-step decisions ``score > δ``. δ is the *median* 50-step score — half the samples on each
   side, the hardest place for agreement — and, for reference, the config default δ = 0.
   The smallest setting reaching ≥ 99 % agreement at both is reported with its speed.

    python -m benchmarks.ig_cost [--resnet-images 4] [--pairs 200]
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from benchmarks.cli import BenchCommand
from benchmarks.results import log, markdown_table, section_header, times

COMMAND = "python -m benchmarks.ig_cost"
REFERENCE_STEPS = 50
METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_middle")
STEP_GRID = (2, 4, 6, 8, 12, 16, 24, 32)
TARGET_AGREEMENT = 0.99


def counterfactual_pairs(n: int, size: int = 64, seed: int = 0) -> dict[str, Any]:
    """``n`` ideal and ``n`` failed repaints (see the module docstring) as uint8 arrays.

    Returns ``sources``, ``repaints`` (lists of HxWx3), ``masks`` (HxW bool), ``targets`` (y').
    """
    from raydbb.data.synthetic import render_sample

    rng = np.random.default_rng(seed)
    out: dict[str, list] = {"sources": [], "repaints": [], "masks": [], "targets": [], "kind": []}
    for i in range(n):
        y, place = int(rng.integers(2)), int(rng.integers(2))
        src = render_sample(seed, "val", i, y, place, size)
        swap = render_sample(seed, "val", i, 1 - y, place, size)
        repaints = (("ideal", swap.image, src.mask | swap.mask), ("failed", src.background, src.mask))
        for kind, repaint, mask in repaints:
            out["sources"].append(src.image)
            out["repaints"].append(repaint)
            out["masks"].append(mask)
            out["targets"].append(1 - y)
            out["kind"].append(kind)
    out["targets"] = np.asarray(out["targets"], dtype=np.int64)
    return out


def model_inputs(pairs: dict[str, Any], image_size: int,
                 device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sources, repaints, mask weights) through raydbb's one preprocessing, on ``device``."""
    from raydbb.models.transforms import mask_to_model, to_model_input

    return (to_model_input(pairs["sources"], image_size).to(device),
            to_model_input(pairs["repaints"], image_size).to(device),
            torch.stack([mask_to_model(m, image_size) for m in pairs["masks"]]).to(device))


def captum_scores(model: torch.nn.Module, x: torch.Tensor, x1: torch.Tensor, w: torch.Tensor,
                  targets: np.ndarray, steps: int = REFERENCE_STEPS) -> np.ndarray:
    """captum ``IntegratedGradients`` per image with its defaults, summed over the mask (float64)."""
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(model)
    out = np.empty(len(targets), dtype=np.float64)
    for i in range(len(targets)):
        attr = ig.attribute(x1[i:i + 1], baselines=x[i:i + 1], target=int(targets[i]), n_steps=steps)
        out[i] = float((attr.sum(1) * w[i]).sum())
    return out


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)  # both IG functions return numpy arrays: GPU work is finished
    return value, time.perf_counter() - start


def compare_at_50(model: torch.nn.Module, pairs: dict[str, Any], image_size: int, batch_size: int) -> dict:
    """captum per image vs raydbb batched, both at 50 Gauss–Legendre steps."""
    from raydbb.ddb.ig import path_ig_scores

    log(f"IG at 50 steps: {len(pairs['targets'])} samples, image size {image_size}")
    x, x1, w = model_inputs(pairs, image_size, next(model.parameters()).device.type)
    ours, t_ours = timed(path_ig_scores, model, x, x1, w, pairs["targets"], steps=REFERENCE_STEPS,
                         method="gausslegendre", batch_size=batch_size)
    ref, t_ref = timed(captum_scores, model, x, x1, w, pairs["targets"])
    return {"n": len(ref), "captum_s": t_ref, "raydbb_s": t_ours, "speedup": t_ref / t_ours,
            "max_abs_diff": float(np.max(np.abs(ours - ref))), "max_abs_score": float(np.max(np.abs(ref))),
            "scores": ref, "raydbb_scores": ours}


def agreement(scores: np.ndarray, reference: np.ndarray, delta: float) -> float:
    """Share of samples whose keep decision (score > δ) equals the reference's."""
    return float(np.mean((scores > delta) == (reference > delta)))


def step_study(model: torch.nn.Module, pairs: dict[str, Any], image_size: int, batch_size: int,
               methods: tuple[str, ...] = METHODS, grid: tuple[int, ...] = STEP_GRID) -> dict[str, Any]:
    """Agreement with the 50-step decisions and time of every (method, steps) setting."""
    from raydbb.ddb.ig import path_ig_scores

    x, x1, w = model_inputs(pairs, image_size, next(model.parameters()).device.type)
    t = pairs["targets"]
    reference, t_ref = timed(path_ig_scores, model, x, x1, w, t, steps=REFERENCE_STEPS,
                             method="gausslegendre", batch_size=batch_size)
    deltas = {"median": float(np.median(reference)), "zero": 0.0}
    rows = []
    for method in methods:
        log(f"IG step study: {method}, steps {grid}, {len(t)} samples")
        for steps in grid:
            scores, secs = timed(path_ig_scores, model, x, x1, w, t, steps=steps, method=method,
                                 batch_size=batch_size)
            rows.append({"method": method, "steps": steps, "seconds": secs,
                         **{f"agree_{k}": agreement(scores, reference, d) for k, d in deltas.items()},
                         "max_abs_diff": float(np.max(np.abs(scores - reference)))})
    return {"n": len(t), "deltas": deltas, "reference_s": t_ref, "rows": rows}


def smallest_setting(rows: list[dict[str, Any]], target: float = TARGET_AGREEMENT) -> dict[str, Any] | None:
    """The cheapest (fewest steps, then fastest) setting agreeing on ≥ ``target`` at every δ."""
    ok = [r for r in rows if r["agree_median"] >= target and r["agree_zero"] >= target]
    return min(ok, key=lambda r: (r["steps"], r["seconds"])) if ok else None


def resnet50(image_size: int = 224, device: str = "cpu") -> torch.nn.Module:
    """ResNet-50 classifier module (random weights, seed 0), eval mode, no parameter gradients."""
    from raydbb.config import ClassifierConfig
    from raydbb.models.classifier import build_classifier

    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig(arch="resnet50", pretrained=False, image_size=image_size), 2)
    return model.to(device).eval().requires_grad_(False)


def demo_classifier(fx, device: str = "cpu") -> tuple[torch.nn.Module, int]:
    from raydbb.models.checkpoint import load_classifier

    model, meta = load_classifier(fx.classifier, device=device)
    return model.requires_grad_(False), int(meta["image_size"])


def measure(fx, *, resnet_images: int = 4, pairs: int = 200, resnet_batch: int = 32, resnet_size: int = 224,
            small_batch: int | None = None, grid: tuple[int, ...] = STEP_GRID,
            methods: tuple[str, ...] = METHODS, device: str = "cpu") -> dict[str, Any]:
    """Both parts for both models; ``pairs`` sources give 2×pairs samples for the step study."""
    from raydbb.config import PruneConfig

    default = PruneConfig()
    small_batch = small_batch or default.resources.model_batch_size
    small, small_size = demo_classifier(fx, device)
    result: dict[str, Any] = {"default": {"steps": default.ig_steps, "method": default.ig_method},
                              "device": device, "resnet_size": resnet_size, "small_size": small_size,
                              "batch": {"resnet50": resnet_batch, "small_cnn": small_batch}}
    result["at50"] = {
        "resnet50": compare_at_50(resnet50(resnet_size, device),
                                  counterfactual_pairs(max(1, resnet_images // 2)),
                                  resnet_size, resnet_batch),
        "small_cnn": compare_at_50(small, counterfactual_pairs(max(1, pairs // 4), fx.image_size), small_size,
                                   small_batch),
    }
    study_pairs = counterfactual_pairs(pairs, fx.image_size, seed=1)
    study = step_study(small, study_pairs, small_size, small_batch, methods, grid)
    result["study"] = study
    result["chosen"] = smallest_setting(study["rows"])
    default_row = next((r for r in study["rows"] if r["method"] == default.ig_method
                        and r["steps"] == default.ig_steps), None)
    result["default_row"] = default_row
    at50 = result["at50"]["small_cnn"]
    # captum's cost per sample at 50 steps, from part 1 (same model, same kind of pairs).
    captum_per_sample = at50["captum_s"] / at50["n"]
    for key in ("chosen", "default_row"):
        row = result[key]
        if row is not None:
            row["speedup_vs_captum50"] = captum_per_sample * study["n"] / row["seconds"]
            row["speedup_vs_raydbb50"] = study["reference_s"] / row["seconds"]
    return result


def report(result: dict[str, Any], info: dict[str, Any], load: list[float], command: str = COMMAND) -> str:
    rows = []
    for name, r in result["at50"].items():
        size = result["resnet_size"] if name == "resnet50" else result["small_size"]
        rows.append({"model": f"{name} at {size} px", "samples": r["n"], "captum s": f"{r['captum_s']:.2f}",
                     "raydbb s": f"{r['raydbb_s']:.2f}", "raydbb vs captum": times(r["speedup"]),
                     "max abs diff": f"{r['max_abs_diff']:.2e}",
                     "max abs score": f"{r['max_abs_score']:.3g}"})
    study = result["study"]
    grid_rows = [{"method": r["method"], "steps": r["steps"], "seconds": f"{r['seconds']:.2f}",
                  "agree @ δ=median": f"{r['agree_median'] * 100:.1f} %",
                  "agree @ δ=0": f"{r['agree_zero'] * 100:.1f} %", "max abs diff": f"{r['max_abs_diff']:.2e}"}
                 for r in study["rows"]]
    d = result["default"]
    text = (section_header("3. IG pruning cost", command, info, load)
            + f"\n**50 steps, raydbb batched vs captum per image** (same images, model, threads; "
            f"raydbb path-point batch: ResNet-50 {result['batch']['resnet50']}, small_cnn "
            f"{result['batch']['small_cnn']}; captum: its default, all 50 points of an image in one "
            "batch):\n\n"
            + markdown_table(rows)
            + f"\n**Steps needed** (demo small_cnn at 64 px, {study['n']} samples: half ideal, half failed "
            f"repaints; reference = 50-step Gauss–Legendre, {study['reference_s']:.2f} s; decisions "
            f"`score > δ` at δ = median 50-step score = {study['deltas']['median']:.4g}, and at δ = 0):\n\n"
            + markdown_table(grid_rows))
    chosen, default_row = result["chosen"], result["default_row"]
    if chosen is not None:
        text += (f"\n- smallest setting with ≥ 99 % agreement at both δ: **{chosen['method']}, "
                 f"{chosen['steps']} steps** — {chosen['agree_median'] * 100:.1f} % / "
                 f"{chosen['agree_zero'] * 100:.1f} %; "
                 f"**vs captum at 50 steps: {times(chosen['speedup_vs_captum50'])}**, vs raydbb at 50 steps: "
                 f"{times(chosen['speedup_vs_raydbb50'])}\n")
    else:
        text += "\n- no setting in the grid reached ≥ 99 % agreement at both δ\n"
    if default_row is not None:
        text += (f"- the config default (`prune.ig_method={d['method']}`, `prune.ig_steps={d['steps']}`): "
                 f"{default_row['agree_median'] * 100:.1f} % / {default_row['agree_zero'] * 100:.1f} % "
                 f"agreement, vs captum at 50 steps: {times(default_row['speedup_vs_captum50'])}, vs raydbb "
                 f"at 50 steps: {times(default_row['speedup_vs_raydbb50'])}\n")
    return text


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cli = BenchCommand(__doc__, "ig_cost")
    cli.add("--resnet-images", type=int, default=2, help="ResNet-50 samples (50 passes each)")
    cli.add("--pairs", type=int, default=200, help="sources of the step study (2 samples each)")
    args = cli.parse(argv)
    return cli.run(args, lambda fx: measure(fx, resnet_images=args.resnet_images, pairs=args.pairs), report)


if __name__ == "__main__":
    main()
