"""Deliverable 3 measurements: DDB retraining with perfect repaints (the oracle) vs a group-balanced
reference, both starting from the pretrained-backbone ERM checkpoint, on the same training data.

Oracle DDB, in memory (same steps as raydbb.oracle + raydbb retrain, prune off = keep every
perfect repaint): per-sample ERM loss on train (eval transform), the lowest-loss α of each class
(select.fraction), each redrawn with the other bird on the same background and pose
(render_sample), then retraining from the ERM weights on originals ∪ repaints with the paper's
loss (raydbb.retrain.RepaintWeightedLoss, Eq. 6-8), val-WGA selection.
Reference: retraining from the same ERM weights on the originals with group-balanced sampling
(--mode gb) — or with group-balanced loss weights (--mode gbw).

  python research/oracle_retrain.py --erm-dir DIR --weights BB --mode ddb --alpha 0.2 --lam 2
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import benchmark, fit, group_acc, to_tensor  # noqa: E402
from erm_finetune import make_model  # noqa: E402

from raydbb.data.synthetic import render_sample  # noqa: E402
from raydbb.retrain import RepaintWeightedLoss  # noqa: E402


@torch.no_grad()
def per_sample_loss(model, images, labels, bs=256):
    model.eval()
    out = []
    for i in range(0, len(images), bs):
        out.append(F.cross_entropy(model(to_tensor(images[i:i + bs])), torch.from_numpy(labels[i:i + bs]),
                                   reduction="none").numpy())
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--erm-dir", required=True)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--mode", choices=["ddb", "gb", "gbw"], default="ddb")
    ap.add_argument("--alpha", type=float, default=0.2)
    ap.add_argument("--lam", type=float, default=2.0)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--repeat", type=int, default=1, help="ddb: each repaint appears this many times")
    ap.add_argument("--tag", default="")
    ap.add_argument("--optimizer", choices=["adam", "sgd"], default="sgd")
    a = ap.parse_args()
    res = []
    for seed in a.seeds:
        data = benchmark(seed)
        tr = data["train"]
        model = make_model(a.weights)
        model.load_state_dict(torch.load(Path(a.erm_dir) / f"erm_seed{seed}.pt", weights_only=True))
        erm_ga = group_acc(model, data["test"])
        info = {}
        if a.mode == "ddb":
            loss = per_sample_loss(model, tr.images, tr.labels)
            picks = []
            for y in (0, 1):
                idx = np.flatnonzero(tr.labels == y)
                k = int(np.ceil(a.alpha * len(idx)))
                picks.append(idx[np.lexsort((idx, loss[idx]))][:k])
            picks = np.concatenate(picks)
            rep = np.stack([render_sample(seed, "train", int(i), 1 - int(tr.labels[i]), int(tr.spurious[i])).image
                            for i in picks])
            rep_y = 1 - tr.labels[picks]
            rep = np.repeat(rep, a.repeat, 0); rep_y = np.repeat(rep_y, a.repeat)
            x = np.concatenate([tr.images, rep]); y = np.concatenate([tr.labels, rep_y])
            is_rep = np.r_[np.zeros(len(tr.images), bool), np.ones(len(rep), bool)]
            lf = RepaintWeightedLoss(is_rep, [a.lam, a.lam])
            groups_sel = tr.groups[picks]
            info = {"selected_from_groups": np.bincount(groups_sel, minlength=4).tolist(), "n_repaints": len(rep)}
            best, hist = fit(model, x, y, data["val"], a.epochs, a.lr, seed=seed, log=lambda r: None,
                             loss_fn=lambda lg, yy, idx: lf(lg, yy, torch.from_numpy(idx)), test=data["test"],
                             optimizer=a.optimizer)
        else:
            counts = np.bincount(tr.groups, minlength=4)
            w = 1.0 / counts[tr.groups]
            kw = {"sampler_p": w / w.sum()} if a.mode == "gb" else {"weights": w / w.mean()}
            best, hist = fit(model, tr.images, tr.labels, data["val"], a.epochs, a.lr, seed=seed, log=lambda r: None,
                             test=data["test"], optimizer=a.optimizer, **kw)
        model.load_state_dict(best)
        ga = group_acc(model, data["test"])
        row = {"tag": a.tag, "mode": a.mode, "seed": seed, "erm_test_group_acc": (100 * erm_ga).round(1).tolist(),
               "test_group_acc": (100 * ga).round(1).tolist(), "test_wga": round(100 * ga.min(), 1),
               "sel_epoch": max(h["epoch"] for h in hist if h["sel"]),
               "test_wga_by_epoch": [round(100 * min(h["test"]), 1) for h in hist],
               "val_wga_by_epoch": [round(100 * min(h["val"]), 1) for h in hist], **info}
        res.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"tag": a.tag, "mode": a.mode, "mean_test_wga": round(float(np.mean([r["test_wga"] for r in res])), 1),
                      "wga": [r["test_wga"] for r in res]}), flush=True)


if __name__ == "__main__":
    main()
