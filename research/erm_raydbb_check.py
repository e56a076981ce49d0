"""Run the real raydbb ERM path (training.erm.train_erm under Ray Train) fine-tuning the shipped
synthetic backbone, to check that research/erm_finetune.py's loop reproduces it.

config.py still refuses classifier.pretrained=true for small_cnn, so the classifier section is
built with model_construct here (the proposed config change lifts that; see the report).

  python research/erm_raydbb_check.py --seed 0 --out /tmp/run_erm0
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from raydbb.config import ClassifierConfig, load_config
from raydbb.data.synthetic import write_synthetic
from raydbb.training.erm import train_erm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("overrides", nargs="*", default=["train.optimizer=sgd", "train.lr=0.001", "train.epochs=10"])
    a = ap.parse_args()
    out = Path(a.out)
    data = write_synthetic(out / "data", seed=a.seed, progress=False)
    cfg = load_config(Path(__file__).resolve().parent.parent / "raydbb" / "configs" / "demo.yaml",
                      [f"out={out}", f"data.root={data}", f"seed={a.seed}", f"train.seed={a.seed}",
                       "train.num_workers=0", "ray.num_cpus=2", *a.overrides])
    cfg = cfg.model_copy(update={"classifier": ClassifierConfig.model_construct(
        arch="small_cnn", pretrained=True, weights=None, width=16, image_size=64)})  # model_copy: no validation
    result = train_erm(cfg)
    test = result.metrics["test"]
    print(json.dumps({"seed": a.seed, "best_epoch": result.best_epoch,
                      "test_group_accuracy": test.get("group_accuracy"),
                      "test_worst_group_accuracy": test["worst_group_accuracy"]}, default=str))


if __name__ == "__main__":
    main()
