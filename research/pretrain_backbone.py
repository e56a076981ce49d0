"""Pretrain the miniature world's "ImageNet" backbone (small_cnn) on the unbiased corpus.

Multi-task, like ImageNet features that encode objects and scenes: bird-class head + background-
family head (6 families) on one backbone. Saves the backbone's state dict (torchvision-style
headless keys, e.g. ``0.0.weight``) as safetensors + a JSON with the recipe and diagnostics.

  python research/pretrain_backbone.py --n 20000 --epochs 6 --out /tmp/bb
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import augment, benchmark, group_acc, small_cnn, to_tensor  # noqa: E402

from raydbb.data.synthetic import PRETRAIN_BACKGROUNDS, pretrain_arrays  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--bg-weight", type=float, default=1.0)
    ap.add_argument("--colours", default="uniform")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--species", action="store_true",
                    help="object head = 10 'species' (bird class x plumage scheme) instead of the 2 classes")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    x, y, b, sc = pretrain_arrays(a.seed, a.n, 64, a.colours)
    hx, hy, hb, hsc = pretrain_arrays(a.seed, 2000, 64, a.colours, start=a.n)  # held-out corpus samples
    if a.species:
        y, hy = y * 5 + sc, hy * 5 + hsc
    t_draw = time.time() - t0
    torch.manual_seed(a.seed)
    model = small_cnn(a.width, 10 if a.species else 2)
    bg_head = nn.Linear(model.head.in_features, len(PRETRAIN_BACKGROUNDS))
    params = list(model.parameters()) + list(bg_head.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=1e-4)
    bs = 64
    steps = a.epochs * (a.n // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, a.lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(a.seed)
    t1 = time.time()
    for ep in range(a.epochs):
        model.train(); bg_head.train()
        order = torch.randperm(a.n, generator=gen).numpy()
        tot = np.zeros(2)
        for i in range(0, a.n - bs + 1, bs):
            idx = order[i:i + bs]
            xb = augment(to_tensor(x[idx]), gen)
            f = model.features(xb)
            l1 = F.cross_entropy(model.head(f), torch.from_numpy(y[idx]))
            l2 = F.cross_entropy(bg_head(f), torch.from_numpy(b[idx]))
            loss = l1 + a.bg_weight * l2
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
            tot += (l1.item(), l2.item())
        model.eval(); bg_head.eval()
        with torch.no_grad():
            f = torch.cat([model.features(to_tensor(hx[i:i + 500])) for i in range(0, len(hx), 500)])
            acc_y = (model.head(f).argmax(1).numpy() == hy).mean()
            acc_b = (bg_head(f).argmax(1).numpy() == hb).mean()
        from safetensors.torch import save_file
        save_file({k: v.detach().contiguous().clone() for k, v in model.backbone.state_dict().items()},
                  str(out / f"backbone_ep{ep + 1}.safetensors"), metadata={"format": "raydbb-backbone/1"})
        print(json.dumps({"epoch": ep + 1, "loss_bird": tot[0] / (a.n // bs), "loss_bg": tot[1] / (a.n // bs),
                          "heldout_bird_acc": round(float(acc_y), 4), "heldout_bg_acc": round(float(acc_b), 4),
                          "s": round(time.time() - t1, 1)}), flush=True)
    t_train = time.time() - t1
    from safetensors.torch import save_file
    state = {k: v.detach().contiguous().clone() for k, v in model.backbone.state_dict().items()}
    save_file(state, str(out / "backbone.safetensors"), metadata={"format": "raydbb-backbone/1"})
    # Diagnostic: the pretraining bird head, zero-shot, on the benchmark test groups (seed 0).
    test = benchmark(0, n=(0, 0, 1200))["test"]
    zs = group_acc(model, test) if not a.species else np.zeros(4)
    info = {"args": vars(a), "draw_s": round(t_draw, 1), "train_s": round(t_train, 1),
            "heldout_bird_acc": float(acc_y), "heldout_bg_acc": float(acc_b),
            "zero_shot_benchmark_test_group_acc": zs.round(4).tolist(),
            "bytes": (out / "backbone.safetensors").stat().st_size}
    (out / "pretrain.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info))


if __name__ == "__main__":
    main()
