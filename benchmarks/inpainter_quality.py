"""Quality gate of the shipped synthetic inpainter, built so that texture cannot fool it.

DDB needs repaints of the causal region (the bird) that show the *target* class. The earlier gate
judged whole images with a classifier that also reads the background, and passed an inpainter that
filled landbird masks with water texture ("waterbird" = "blue"). This gate measures three things,
on the synthetic benchmark's *training-split majority* images (``write_synthetic(seed=0)``:
landbirds on land, waterbirds on water — what the demo repaints), through the engine's own inpaint
stage (``InpaintStage``: per-row seeds, resize, paste-back) at the demo's settings:

(a) **cross-class repaints judged as the target**, each direction separately, by a judge that sees
    *only the painted region*: its input is ``repaint * mask + grey * (1 - mask)``
    (:func:`masked_view`), and "no bird" is a verdict of its own. The judge is a ``small_cnn``
    trained on birds of the *pretraining corpus*
    (:func:`raydbb.data.synthetic.render_pretrain_sample`, another seed than the inpainter's,
    plumage odds equal for both classes: shape is its only cue) seen through the same kind of
    masks, with the background inside the mask drawn from six families independent of the class,
    and masks that are the union of the bird's and an other-class bird's silhouette or a box
    (so the mask's outline does not tell the class either). Texture, colour and outline carry no
    class information in its training data.
(b) **background leak**: the share of mask pixels in the colours of the target class's majority
    background (:func:`background_leak`: land = the generator's greens and soil browns for a
    landbird target, water = its blues for a waterbird target).
(c) **the judge's accuracy on the unedited birds** (the same masked views of the sources).

Targets (issue 15): (a) >= 90 % in each direction, (b) <= 10 %, (c) >= 98 %. For reference the
same numbers are given for the *oracle* counterfactual (the generator redrawing the same image
with the other bird: a perfect repaint) and for own-class repaints (control), plus a check that the
judge does not read the mask's outline (views of the mask filled with the source's background
only, no bird: a judge reading outlines would call them the source's class).

A grid of examples is saved as PNG (per row: source | mask | cross-class repaint | what the judge
sees | own-class repaint | oracle) and the table goes to RESULTS.md. Steps, guidance, strength,
dilation and noise matching default to the demo's (``raydbb/configs/demo.yaml``).

    python -m benchmarks.inpainter_quality [--model DIR] [--n 100] [--steps N] [--guidance G]
        [--strength S] [--dilate PX] [--no-match-noise]
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
import torch.nn.functional as F
from matplotlib.colors import rgb_to_hsv
from torch import nn

from benchmarks.fixtures import CLASS_NAMES, bench_dir
from benchmarks.machine import machine_info
from benchmarks.results import markdown_table, section_header, update_results
from benchmarks.sampling import Sampler, load_average
from raydbb.assets import QUALITY_GATE_RECORD
from raydbb.config import InpaintConfig, StageResources
from raydbb.configs import demo_config
from raydbb.data.images import read_image, read_mask, write_png_atomic
from raydbb.data.registry import load_records
from raydbb.data.synthetic import GENERATOR_VERSION, render_pretrain_sample, render_sample, write_synthetic
from raydbb.ddb.stages.inpaint import InpaintStage
from raydbb.ddb.stages.mask import dilate_mask
from raydbb.engine.stage import object_column
from raydbb.models.classifier import small_cnn
from raydbb.storage import write_json
from raydbb.tools.inpainter_training import centred_on

COMMAND = "python -m benchmarks.inpainter_quality"
NEUTRAL_GREY = 128
TARGETS = {"target_rate": 0.90, "leak": 0.10, "judge_on_sources": 0.98}

# ---------------------------------------------------------------------------------------------
# What the judge sees, and the background leak.


def masked_view(image: np.ndarray, mask: np.ndarray, grey: int = NEUTRAL_GREY) -> np.ndarray:
    """``image`` inside ``mask``, neutral grey outside (uint8 HxWx3): all a region judge sees."""
    m = np.asarray(mask, dtype=bool)[..., None]
    return np.where(m, np.asarray(image, dtype=np.uint8), np.uint8(grey))


# Background palettes as HSV boxes (hue in degrees, saturation and value in [0, 1]), read off the
# generator (raydbb/data/synthetic.py: _land greens hue 70-135 and soil browns 20-42 with their
# blends, _water blues 185-228), widened for shading and noise. On drawn backgrounds they cover
# 96 % of land and 99 % of water pixels, and no pixel of the other family; of the birds' own pixels
# 0 % are water-coloured and 14 % (landbirds: brown plumage, dark wings) / 6 % (waterbirds) are
# land-coloured (tests/test_inpainter_quality.py), which is why the oracle's leak is not 0.
PALETTES: dict[str, tuple[tuple[float, float, float, float, float, float], ...]] = {
    "land": ((55.0, 150.0, 0.30, 1.00, 0.10, 0.90),   # greens and green-brown blends
             (12.0, 55.0, 0.33, 0.85, 0.10, 0.55)),   # soil browns
    "water": ((175.0, 240.0, 0.30, 1.00, 0.00, 1.00),),
}
#: The background each class sits on in the training split's majority groups.
MAJORITY_BACKGROUND = {0: "land", 1: "water"}


def in_palette(image: np.ndarray, palette: str) -> np.ndarray:
    """Bool HxW: which pixels of uint8 ``image`` fall in one of ``PALETTES[palette]``'s HSV boxes."""
    hsv = rgb_to_hsv(np.asarray(image, dtype=np.float32) / 255.0)
    h, s, v = hsv[..., 0] * 360.0, hsv[..., 1], hsv[..., 2]
    out = np.zeros(h.shape, dtype=bool)
    for h0, h1, s0, s1, v0, v1 in PALETTES[palette]:
        out |= (h >= h0) & (h <= h1) & (s >= s0) & (s <= s1) & (v >= v0) & (v <= v1)
    return out


def background_leak(image: np.ndarray, mask: np.ndarray, target: int) -> float:
    """Share of ``mask``'s pixels of ``image`` in the colours of class ``target``'s majority background."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        raise ValueError("background_leak: empty mask")
    return float(in_palette(image, MAJORITY_BACKGROUND[int(target)])[m].mean())


# ---------------------------------------------------------------------------------------------
# The judge.


class RegionJudge:
    """A classifier of the masked region only: every input goes through :func:`masked_view`."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net.eval()

    @torch.no_grad()
    def logits(self, images: list[np.ndarray], masks: list[np.ndarray]) -> torch.Tensor:
        views = np.stack([masked_view(im, m) for im, m in zip(images, masks, strict=True)])
        return self.net(to_tensor(views))

    def predict(self, images: list[np.ndarray], masks: list[np.ndarray], batch: int = 256) -> np.ndarray:
        out = [self.logits(images[i:i + batch], masks[i:i + batch]).argmax(1).numpy()
               for i in range(0, len(images), batch)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def to_tensor(views: np.ndarray) -> torch.Tensor:
    """uint8 (N,H,W,3) -> float (N,3,H,W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(views)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


NO_BIRD = 2  #: the judge's third class: a region with no bird in it (background texture only)


def judge_net(width: int = 16, num_classes: int = 3) -> nn.Module:
    backbone, dim = small_cnn(width)
    return nn.Sequential(backbone, nn.Linear(dim, num_classes))


def judge_mask(own: np.ndarray, partner: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A training mask whose outline does not tell the class: the union of the bird's silhouette and
    an other-class silhouette centred on it (mirrored half the time), dilated 1-8 px (70 %), or
    the bird's bounding box grown by 1-8 px (30 %)."""
    grow = int(rng.integers(1, 9))
    if rng.random() < 0.7:
        other = partner[:, ::-1] if rng.random() < 0.5 else partner
        return dilate_mask(own | centred_on(other, own), grow).astype(bool)
    rows, cols = np.flatnonzero(own.any(1)), np.flatnonzero(own.any(0))
    out = np.zeros_like(own, dtype=bool)
    out[max(rows[0] - grow, 0):rows[-1] + grow + 1, max(cols[0] - grow, 0):cols[-1] + grow + 1] = True
    return out


def _soften(image: np.ndarray) -> np.ndarray:
    """Half-resolution round trip (the blur a VAE decode adds)."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    y = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="bilinear", align_corners=False)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def judge_views(seed: int, n: int, start: int = 0, size: int = 64,
                no_bird: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """``n`` judge training views from pretraining corpus ``seed`` (uniform plumage odds): each
    bird seen through :func:`judge_mask`, half of them softened by :func:`_soften`; a ``no_bird``
    share shows the same sample's background alone through the same mask, labelled
    :data:`NO_BIRD` (so a mask filled with water or grass texture is "no bird", not a waterbird or
    a landbird)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(15, start)))
    samples = [render_pretrain_sample(seed, start + i, size, "uniform") for i in range(n)]
    labels = np.array([s.label for s in samples], dtype=np.int64)
    by_class = {c: np.flatnonzero(labels == c) for c in (0, 1)}
    views = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, s in enumerate(samples):
        pool = by_class[1 - s.label]
        partner = samples[int(pool[rng.integers(len(pool))])].sample.mask if len(pool) else s.sample.mask
        empty = rng.random() < no_bird
        image = s.sample.background if empty else s.sample.image
        image = _soften(image) if rng.random() < 0.5 else image
        views[i] = masked_view(image, judge_mask(s.sample.mask, partner, rng))
        if empty:
            labels[i] = NO_BIRD
    return views, labels


def train_judge(views: np.ndarray, labels: np.ndarray, epochs: int = 6, batch: int = 128, lr: float = 3e-3,
                seed: int = 0) -> nn.Module:
    """Adam + cosine decay, random horizontal flips; returns the trained net (eval mode)."""
    torch.manual_seed(seed)
    net = judge_net()
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(views) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = to_tensor(views), torch.from_numpy(labels)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(views), generator=gen)
        for i in range(0, len(views), batch):
            idx = order[i:i + batch]
            x = x_all[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(net(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


JUDGE_SEED = 1  # pretraining corpus seed of the judge's birds (the shipped inpainter used seed 0)


def load_judge(root: Path, n: int = 10000, epochs: int = 6) -> tuple[RegionJudge, dict[str, Any]]:
    """The region judge, trained once and cached under ``root``; also its held-out accuracy."""
    path = root / f"region_judge3_s{JUDGE_SEED}_n{n}_e{epochs}.pt"
    if path.is_file():
        blob = torch.load(path, weights_only=True)
        net = judge_net()
        net.load_state_dict(blob["state"])
        return RegionJudge(net), blob["info"]
    t0 = time.perf_counter()
    views, labels = judge_views(JUDGE_SEED, n)
    net = train_judge(views, labels, epochs=epochs)
    held_views, held_labels = judge_views(JUDGE_SEED, 2000, start=n)
    with torch.no_grad():
        pred = torch.cat([net(to_tensor(held_views[i:i + 256])).argmax(1)
                          for i in range(0, len(held_views), 256)]).numpy()
    info = {"train_views": n, "epochs": epochs, "corpus_seed": JUDGE_SEED,
            "heldout_accuracy": float((pred == held_labels).mean()),
            "seconds": round(time.perf_counter() - t0, 1)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": net.state_dict(), "info": info}, path)
    return RegionJudge(net), info


# ---------------------------------------------------------------------------------------------
# Repainting and measuring.


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


def sharpness(images: np.ndarray) -> float:
    """Mean absolute 4-neighbour Laplacian of the grey level, (N, H, W, 3) uint8: the fine detail
    (grass blades, feather edges) that a blurry decoder loses."""
    grey = images.astype(np.float64).mean(-1)
    lap = (4 * grey[:, 1:-1, 1:-1] - grey[:, :-2, 1:-1] - grey[:, 2:, 1:-1]
           - grey[:, 1:-1, :-2] - grey[:, 1:-1, 2:])
    return float(np.abs(lap).mean())


@torch.no_grad()
def vae_round_trip(vae: nn.Module, images: list[np.ndarray]) -> dict[str, float]:
    """Encode (posterior mean) and decode the sources: PSNR and sharpness against the originals.

    Everything the inpainter paints passes through this decoder, so its blur is the repaints' blur."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    decoded = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    recon = ((decoded + 1) * 127.5).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)
    original = np.stack(images)
    mse = float(((recon.astype(np.float64) - original) ** 2).mean())
    return {"vae_psnr": 10 * float(np.log10(255.0 ** 2 / mse)) if mse else float("inf"),
            "vae_sharpness_ratio": sharpness(recon) / sharpness(original)}


def pick_rows(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Up to ``n`` rows in a seeded order."""
    return frame.sample(n=min(n, len(frame)), random_state=seed).reset_index(drop=True)


def _train_index(path: str) -> int:
    return int(Path(path).stem.split("_")[-1])  # images/train_00012.png -> 12


def evaluate_direction(source: int, rows: pd.DataFrame, stage: InpaintStage, judge: RegionJudge,
                       args: argparse.Namespace, grid: list[np.ndarray]) -> dict[str, Any]:
    """Repaint ``rows`` (all of class ``source`` on its majority background) as the other class."""
    target = 1 - source
    images = [read_image(p) for p in rows["path"]]
    masks = [dilate_mask(read_mask(p), args.dilate).astype(bool) for p in rows["mask"]]
    n = len(rows)
    seeds = args.seed * 1_000_003 + source * 100_000 + np.arange(n)
    cross, sec = repaint(stage, images, masks, np.full(n, target), seeds, args.batch)
    own, _ = repaint(stage, images, masks, np.full(n, source), seeds, args.batch)
    drawn = [render_sample(args.data_seed, "train", _train_index(p), target, s)
             for p, s in zip(rows["path"], rows["spurious"], strict=True)]
    oracle = [d.image for d in drawn]
    backgrounds = [d.background for d in drawn]  # the same background, no bird at all
    pred_cross, pred_own = judge.predict(cross, masks), judge.predict(own, masks)
    pred_src, pred_oracle = judge.predict(images, masks), judge.predict(oracle, masks)
    pred_empty = judge.predict(backgrounds, masks)
    leak = np.array([background_leak(im, m, target) for im, m in zip(cross, masks, strict=True)])
    leak_oracle = np.array([background_leak(im, m, target) for im, m in zip(oracle, masks, strict=True)])
    leak_source = np.array([background_leak(im, m, target) for im, m in zip(images, masks, strict=True)])
    kept_outside = [bool((im[~m] == src[~m]).all()) for im, src, m in zip(cross, images, masks, strict=True)]
    round_trip = vae_round_trip(stage.pipe.vae, images)
    for i in range(min(args.grid_rows, n)):
        tiles = [images[i], np.repeat(masks[i][..., None].astype(np.uint8) * 255, 3, -1), cross[i],
                 masked_view(cross[i], masks[i]), own[i], oracle[i]]
        grid.append(np.concatenate([np.pad(t, ((1, 1), (1, 1), (0, 0)), constant_values=255) for t in tiles],
                                   axis=1))
    return {
        "direction": f"{CLASS_NAMES[source]}->{CLASS_NAMES[target]}", "n": n,
        "target_rate": float(np.mean(pred_cross == target)),
        "leak": float(leak.mean()), "leak_p90": float(np.quantile(leak, 0.9)),
        "judge_on_sources": float(np.mean(pred_src == source)),
        "own_rate": float(np.mean(pred_own == source)),
        "oracle_target_rate": float(np.mean(pred_oracle == target)),
        "oracle_leak": float(leak_oracle.mean()),
        "source_leak": float(leak_source.mean()),  # the unedited image: the leak of doing nothing
        "no_bird_rate": float(np.mean(pred_cross == NO_BIRD)),  # repaints with no bird in the mask
        "empty_mask_called_source": float(np.mean(pred_empty == source)),
        "empty_mask_called_no_bird": float(np.mean(pred_empty == NO_BIRD)),
        "background_exact_rate": float(np.mean(kept_outside)),
        "mask_share": float(np.mean([m.mean() for m in masks])),
        "seconds_per_image": sec,
        **round_trip,
    }


def gate(results: list[dict[str, Any]]) -> dict[str, bool]:
    """Pass/fail of the three targets, every direction separately."""
    return {
        "a_target_rate": all(r["target_rate"] >= TARGETS["target_rate"] for r in results),
        "b_leak": all(r["leak"] <= TARGETS["leak"] for r in results),
        "c_judge_on_sources": all(r["judge_on_sources"] >= TARGETS["judge_on_sources"] for r in results),
    }


def report(summary: dict[str, Any], info: dict[str, Any], load: list[float], command: str) -> str:
    """The RESULTS.md section: one row per direction, then the gate."""
    rows = [{"direction": r["direction"], "n": r["n"],
             "(a) judged as target": f"{r['target_rate']:.1%}",
             "judged no bird": f"{r['no_bird_rate']:.1%}",
             "(b) background leak": f"{r['leak']:.1%}",
             "(c) judge on sources": f"{r['judge_on_sources']:.1%}",
             "own-class → own": f"{r['own_rate']:.1%}",
             "oracle: judged / leak": f"{r['oracle_target_rate']:.1%} / {r['oracle_leak']:.1%}",
             "unedited leak": f"{r['source_leak']:.1%}",
             "bird-less mask → source / no bird": f"{r['empty_mask_called_source']:.0%} / "
                                                  f"{r['empty_mask_called_no_bird']:.0%}",
             "outside mask unchanged": f"{r['background_exact_rate']:.0%}",
             "VAE round trip: PSNR / sharpness": f"{r['vae_psnr']:.1f} dB / {r['vae_sharpness_ratio']:.2f}",
             "s/image": f"{r['seconds_per_image']:.2f}"} for r in summary["results"]]
    verdict = summary["gate"]
    judge = summary["judge"]
    marks = {True: "pass", False: "FAIL"}
    return (section_header("7. Quality of the shipped synthetic inpainter", command, info, load)
            + f"\nModel `{summary['model_name']}` ({summary['model_corpus']}). Training-split majority "
            f"images of `raydbb data synth --seed {summary['data_seed']}`, bird mask dilated "
            f"{summary['dilate']} px, repainted with the other class's prompt (and its own, as a control), "
            f"{summary['steps']} DDIM steps, guidance {summary['guidance']:g}, strength "
            f"{summary['strength']:g}. Judge: small_cnn on "
            f"`repaint × mask + grey × (1 − mask)`, trained on {judge['train_views']} pretraining-corpus "
            f"birds (seed {judge['corpus_seed']}, class-independent colours, six background families, "
            f"class-free mask outlines); held-out accuracy {judge['heldout_accuracy']:.1%}.\n\n"
            + markdown_table(rows)
            + f"\nGate (targets: (a) ≥ {TARGETS['target_rate']:.0%} each direction, "
            f"(b) ≤ {TARGETS['leak']:.0%}, "
            f"(c) ≥ {TARGETS['judge_on_sources']:.0%}): (a) {marks[verdict['a_target_rate']]}, "
            f"(b) {marks[verdict['b_leak']]}, (c) {marks[verdict['c_judge_on_sources']]}.\n"
            "Leak = share of mask pixels in the target's majority-background colours (land greens/browns "
            "for a landbird, water blues for a waterbird); the oracle (the generator's own counterfactual) "
            "shows the floor from bird colours and the source background left inside the mask. "
            "The judge has a third class, *no bird* (background texture alone through the mask): a mask "
            "filled with water or grass is not a bird of either class. \"Bird-less mask\": the judge on the "
            "mask filled with the source's background only; \"→ source\" near 100 % would mean it reads "
            "the mask outline. \"VAE round trip\": the sources encoded and decoded by the model's VAE, "
            "PSNR and sharpness (mean |Laplacian|) relative to the originals; everything the inpainter "
            "paints passes through that decoder.\n")


def _model_meta(model: str) -> tuple[str, str]:
    record = Path(model) / "raydbb_inpainter.json"
    if not record.is_file():
        return Path(model).name, "training data unknown"
    data = json.loads(record.read_text()).get("data", {})
    if data.get("corpus") == "pretrain":
        return Path(model).name, (f"trained on {data['train_rows']} pretraining-corpus images, "
                                  "no benchmark image")
    return Path(model).name, (f"trained on the train split of {data.get('name', '?')} "
                              f"({data.get('train_rows')} rows)")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Repaint ``args.n`` majority images per direction and judge them."""
    root = bench_dir() / "inpainter_quality" / f"synthetic_v{GENERATOR_VERSION}"
    t0 = time.perf_counter()
    data = write_synthetic(root / f"data_seed{args.data_seed}", seed=args.data_seed, progress=False)
    from raydbb.config import DataConfig

    records = load_records(DataConfig(name="synthetic", root=str(data)))
    judge, judge_info = load_judge(root)
    cfg = InpaintConfig(model=args.model, steps=args.steps, guidance_scale=args.guidance,
                        strength=args.strength, scheduler=args.scheduler, match_noise=args.match_noise,
                        resources=StageResources(batch_size=args.batch, model_batch_size=args.batch))
    stage = InpaintStage(cfg, CLASS_NAMES)
    stage.setup()
    train = records.split("train")
    grid: list[np.ndarray] = []
    results = []
    for source in (0, 1):
        rows = pick_rows(train[(train["label"] == source) & (train["spurious"] == source)], args.n, args.seed)
        results.append(evaluate_direction(source, rows, stage, judge, args, grid))
    grid_path = Path(args.grid) if args.grid else root / "examples.png"
    big = np.concatenate(grid, axis=0)
    write_png_atomic(grid_path, big.repeat(args.grid_zoom, 0).repeat(args.grid_zoom, 1))
    name, corpus = _model_meta(args.model)
    return {"model": args.model, "model_name": name, "model_corpus": corpus, "root": str(root),
            "data_seed": args.data_seed, "steps": args.steps, "guidance": args.guidance,
            "strength": args.strength, "dilate": args.dilate, "match_noise": args.match_noise,
            "scheduler": type(stage.pipe.scheduler).__name__, "threads": args.threads, "judge": judge_info,
            "results": results, "gate": gate(results), "grid": str(grid_path),
            "wall_seconds": round(time.perf_counter() - t0, 1)}


def write_record(model: Path, summary: dict[str, Any], command: str) -> Path:
    """The gate's results, without this machine's paths, into ``model/``:data:`QUALITY_GATE_RECORD`."""
    keep = ("model_name", "model_corpus", "data_seed", "steps", "guidance", "strength", "dilate",
            "match_noise", "scheduler", "judge", "results", "gate")
    record = {**{k: summary[k] for k in keep}, "command": command,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    path = model / QUALITY_GATE_RECORD
    write_json(path, record)
    return path


def main(argv: list[str] | None = None) -> int:
    demo = demo_config(bench_dir() / "unused")  # the demo's sampler settings are the defaults
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="inpainting pipeline folder (default: the one in raydbb/assets)")
    parser.add_argument("--n", type=int, default=100, help="training-majority images per direction")
    parser.add_argument("--steps", type=int, default=demo.inpaint.steps,
                        help="DDIM steps (default %(default)s)")
    parser.add_argument("--guidance", type=float, default=demo.inpaint.guidance_scale,
                        help="classifier-free guidance scale (default %(default)s)")
    parser.add_argument("--strength", type=float, default=demo.inpaint.strength,
                        help="how far the masked region is noised before painting: 1 = from pure noise, "
                             "below 1 keeps the source's coarse layout (default %(default)s)")
    parser.add_argument("--scheduler", default=demo.inpaint.scheduler,
                        help="diffusers scheduler class (default: the demo's, %(default)s)")
    parser.add_argument("--dilate", type=int, default=demo.mask.dilate,
                        help="mask dilation radius in pixels (default %(default)s)")
    parser.add_argument("--match-noise", action=argparse.BooleanOptionalAction,
                        default=demo.inpaint.match_noise,
                        help="restore the source's pixel noise in the painted region (default: the demo's, "
                             "%(default)s)")
    parser.add_argument("--data-seed", type=int, default=0, help="synthetic benchmark seed (default 0)")
    parser.add_argument("--batch", type=int, default=8, help="images per pipeline call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--grid", metavar="PNG", help="example grid path (default: under the bench folder)")
    parser.add_argument("--grid-rows", type=int, default=8, help="example rows per direction")
    parser.add_argument("--grid-zoom", type=int, default=3, help="nearest-neighbour zoom of the grid")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    parser.add_argument("--record", action="store_true",
                        help=f"also write them into the model folder as {QUALITY_GATE_RECORD}, where "
                             "`raydbb report` finds them for runs that use this model")
    parser.add_argument("--results", type=Path, default=None,
                        help="RESULTS.md to update (default: ours; 'none' to skip)")
    args = parser.parse_args(argv)
    if not 0 < args.strength <= 1:
        parser.error(f"--strength {args.strength:g}: expected a value in (0, 1]")
    command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
    torch.set_num_threads(args.threads)
    if args.model is None:
        from raydbb.assets import synthetic_inpainter_path

        args.model = str(synthetic_inpainter_path())
    with Sampler(load_average, 5.0) as load:
        summary = measure(args)
    for r in summary["results"]:
        print(f"{r['direction']:<20} n={r['n']:<4} (a) judged as target {r['target_rate']:.1%}  "
              f"(b) leak {r['leak']:.1%}  (c) judge on sources {r['judge_on_sources']:.1%}  "
              f"own {r['own_rate']:.1%}  oracle {r['oracle_target_rate']:.1%}/{r['oracle_leak']:.1%}  "
              f"no bird {r['no_bird_rate']:.1%}  "
              f"bird-less->source/no-bird {r['empty_mask_called_source']:.0%}/"
              f"{r['empty_mask_called_no_bird']:.0%}  {r['seconds_per_image']:.2f} s/image")
    print(f"judge held-out accuracy {summary['judge']['heldout_accuracy']:.1%}; gate {summary['gate']}; "
          f"examples (source | mask | other class | judge's view | own class | oracle): {summary['grid']}")
    if str(args.results) != "none":
        update_results("inpainter_quality", report(summary, machine_info(), load.values, command),
                       **({"path": args.results} if args.results else {}))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    if args.record:
        write_record(Path(args.model), summary, command)
    return 0 if all(summary["gate"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
