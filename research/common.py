"""Shared helpers for the issue-15 experiments: in-memory benchmark/corpus, a plain torch training
loop that mirrors raydbb.training.erm (AdamW, TrainTransform augmentation, val-WGA selection),
and per-group evaluation. Run from the repository root with raydbb importable."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import RandomResizedCrop

from raydbb.config import ClassifierConfig
from raydbb.data.synthetic import _assignments, render_sample
from raydbb.models.classifier import Classifier, build_classifier
from raydbb.models.transforms import CROP_RATIO, CROP_SCALE, _resize

torch.set_num_threads(1)  # faster than 2 while the other engineer's jobs share the 2 cores


@dataclass
class Split:
    images: np.ndarray  # uint8 N,H,W,3
    labels: np.ndarray
    spurious: np.ndarray
    index: np.ndarray

    @property
    def groups(self):
        return self.labels * 2 + self.spurious


def benchmark(seed: int = 0, corr: float = 0.95, n=(3000, 600, 1200), size: int = 64) -> dict[str, Split]:
    out = {}
    for split, count in zip(("train", "val", "test"), n):
        if count == 0:
            continue
        pairs = _assignments(seed, split, count, corr, 0.75)
        ims = np.stack([render_sample(seed, split, i, y, s, size).image for i, (y, s) in enumerate(pairs)])
        y = np.array([p[0] for p in pairs]); s = np.array([p[1] for p in pairs])
        out[split] = Split(ims, y, s, np.arange(count))
    return out


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """TrainTransform on a batch: random resized crop (70-100 % area) + flip, per sample."""
    out = torch.empty_like(x)
    S = x.shape[-1]
    for i in range(len(x)):
        top, left, h, w = _crop_params(S, gen)
        c = _resize(x[i:i + 1, :, top:top + h, left:left + w], S)[0]
        if torch.rand((), generator=gen) < 0.5:
            c = c.flip(-1)
        out[i] = c
    return out.clamp_(0, 1)


def _crop_params(S, gen):
    import math
    area = S * S
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(*CROP_SCALE, generator=gen))
        ar = math.exp(float(torch.empty(1).uniform_(*log_ratio, generator=gen)))
        w = int(round(math.sqrt(target * ar))); h = int(round(math.sqrt(target / ar)))
        if 0 < w <= S and 0 < h <= S:
            top = int(torch.randint(0, S - h + 1, (1,), generator=gen)); left = int(torch.randint(0, S - w + 1, (1,), generator=gen))
            return top, left, h, w
    return 0, 0, S, S


def small_cnn(width: int = 16, num_classes: int = 2, size: int = 64) -> Classifier:
    return build_classifier(ClassifierConfig(arch="small_cnn", pretrained=False, width=width, image_size=size),
                            num_classes)


@torch.no_grad()
def predict(model, images: np.ndarray, bs: int = 256) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(images), bs):
        out.append(model(to_tensor(images[i:i + bs])).argmax(1).numpy())
    return np.concatenate(out)


def group_acc(model, split: Split) -> np.ndarray:
    pred = predict(model, split.images)
    return np.array([(pred[split.groups == g] == split.labels[split.groups == g]).mean() for g in range(4)])


def fit(model, train_x: np.ndarray, train_y: np.ndarray, val: Split, epochs: int, lr: float, wd: float = 1e-4,
        bs: int = 64, seed: int = 0, weights: np.ndarray | None = None, sampler_p: np.ndarray | None = None,
        loss_fn=None, aug: bool = True, log=print, test: Split | None = None, params=None,
        optimizer: str = "adam"):
    """AdamW + augmentation, select by val WGA (ties avg), like raydbb fit_classifier.
    weights: per-row CE weights; sampler_p: per-row sampling probabilities (with replacement).
    loss_fn(logits, y, idx) overrides the loss. Returns (best_state, history)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    ps = params if params is not None else model.parameters()
    opt = (torch.optim.AdamW(ps, lr=lr, weight_decay=wd) if optimizer == "adam"
           else torch.optim.SGD(ps, lr=lr, momentum=0.9, weight_decay=wd))
    n = len(train_x)
    best, best_key, hist = None, None, []
    for ep in range(1, epochs + 1):
        t = time.time()
        model.train()
        if sampler_p is not None:
            order = torch.multinomial(torch.from_numpy(sampler_p).double(), n, replacement=True, generator=gen).numpy()
        else:
            order = torch.randperm(n, generator=gen).numpy()
        tot = 0.0
        for i in range(0, n - bs + 1 if n > bs else n, bs):
            idx = order[i:i + bs]
            x = to_tensor(train_x[idx])
            if aug:
                x = augment(x, gen)
            y = torch.from_numpy(train_y[idx])
            logits = model(x)
            if loss_fn is not None:
                loss = loss_fn(logits, y, idx)
            elif weights is not None:
                w = torch.from_numpy(weights[idx]).float()
                loss = (F.cross_entropy(logits, y, reduction="none") * w).sum() / w.sum()
            else:
                loss = F.cross_entropy(logits, y)
            opt.zero_grad(); loss.backward(); opt.step()
            tot += loss.item()
        ga = group_acc(model, val)
        key = (ga.min(), ga.mean())
        sel = best_key is None or key > best_key
        if sel:
            best_key = key
            best = {k: v.clone() for k, v in model.state_dict().items()}
        row = {"epoch": ep, "loss": tot / max(1, n // bs), "val": ga.round(3).tolist(), "sel": sel,
               "s": round(time.time() - t, 1)}
        if test is not None:
            row["test"] = group_acc(model, test).round(3).tolist()
        hist.append(row)
        log(row)
    return best, hist
