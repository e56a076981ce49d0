"""ERM on the synthetic benchmark, fine-tuning a pretrained small_cnn backbone (or from scratch).

Mirrors raydbb train-erm (AdamW, TrainTransform augmentation, batch 64, val-WGA selection) in a
plain loop for speed; research/erm_raydbb_check.py runs the real train_erm path for one setting.

  python research/erm_finetune.py --weights BB.safetensors --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import benchmark, fit, group_acc  # noqa: E402

from raydbb.config import ClassifierConfig  # noqa: E402
from raydbb.models.classifier import build_classifier  # noqa: E402


def make_model(weights: str | None, width: int = 16):
    if weights:
        # model_construct: config.py still refuses pretrained small_cnn (see report).
        cfg = ClassifierConfig.model_construct(arch="small_cnn", pretrained=True, weights=weights, width=width,
                                               image_size=64)
    else:
        cfg = ClassifierConfig(arch="small_cnn", pretrained=False, width=width, image_size=64)
    return build_classifier(cfg, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=None)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--corr", type=float, default=0.95)
    ap.add_argument("--tag", default="")
    ap.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    ap.add_argument("--save-dir", default=None, help="write erm_seed<k>.pt (state dict) here")
    a = ap.parse_args()
    rows = []
    for seed in a.seeds:
        data = benchmark(seed, a.corr)
        torch.manual_seed(seed)
        model = make_model(a.weights, a.width)
        best, hist = fit(model, data["train"].images, data["train"].labels, data["val"], a.epochs, a.lr, seed=seed,
                         log=lambda r: None, test=data["test"], optimizer=a.optimizer)
        model.load_state_dict(best)
        if a.save_dir:
            Path(a.save_dir).mkdir(parents=True, exist_ok=True)
            torch.save(best, Path(a.save_dir) / f"erm_seed{seed}.pt")
        ga = group_acc(model, data["test"])
        sel = max(h["epoch"] for h in hist if h["sel"])
        t = data["test"]
        # share of test errors in the minority groups (val/test are balanced, so 50 % = mixed evenly)
        row = {"tag": a.tag, "seed": seed, "sel_epoch": sel, "test_group_acc": (100 * ga).round(1).tolist(),
               "test_wga": round(100 * ga.min(), 1), "test_avg": round(100 * ga.mean(), 1),
               "minority_err_share": round(float((1 - ga[1]) + (1 - ga[2])) / max(1e-9, float((1 - ga).sum())), 2),
               "val_by_epoch": [h["val"] for h in hist], "test_by_epoch": [h["test"] for h in hist]}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("val_by_epoch",)}), flush=True)
    w = [r["test_wga"] for r in rows]
    print(json.dumps({"tag": a.tag, "mean_test_wga": round(float(np.mean(w)), 1), "wga": w}), flush=True)


if __name__ == "__main__":
    main()
