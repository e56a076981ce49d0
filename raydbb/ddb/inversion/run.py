"""``raydbb invert``: plan, validate and run the inversion of every class (one Ray task per class).

Everything that can be wrong (unknown classes, tokens already in the vocabulary, initializers that
are not one token, empty pools, earlier output made with other settings) is checked on the driver
before any training. Each class then trains in its own Ray task (or in this process with
``engine="loop"``), resuming from its last ``checkpoint-<step>/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from raydbb.config import InvertConfig, RaydbbConfig
from raydbb.ddb.inversion.model import check_model_configs, load_inpaint_model, load_tokenizer
from raydbb.ddb.inversion.pool import PoolImage, prepare_pools
from raydbb.ddb.inversion.trainer import CHECKPOINT_PREFIX, TokenTrainer
from raydbb.ddb.tokens import EMBEDS_FILE, TOKEN_FILE, placeholder_token, read_json, token_dir
from raydbb.engine.executor import check_engine
from raydbb.errors import ConfigError, DataError, RaydbbError
from raydbb.rundir import RunDir
from raydbb.storage import write_json


@dataclass
class ClassJob:
    """The inversion of one class: plain data, shipped to a Ray task."""

    class_name: str
    token: str
    initializer: str
    images: list[PoolImage]
    out_dir: str
    model: str
    device: str
    cfg: InvertConfig
    status: str = "pending"  # pending | resume | finished
    resume_step: int = 0

    def settings(self) -> dict[str, Any]:
        """Everything that changes the learned embedding; a rerun resumes only when these match."""
        c = self.cfg
        return {
            "token": self.token, "initializer": self.initializer, "model": self.model,
            "images": [asdict(i) for i in self.images], "templates": list(c.templates),
            "steps": c.steps, "lr": c.lr, "scale_lr": c.scale_lr, "batch_size": c.batch_size,
            "grad_accum": c.grad_accum, "weight_decay": c.weight_decay, "resolution": c.resolution,
            "mask_mode": c.mask_mode, "flip": c.flip, "mixed_precision": c.mixed_precision, "seed": c.seed,
        }


def resolve_initializer(class_name: str, initializer: dict[str, str] | None, tokenizer: Any) -> str:
    """The word whose embedding initialises the class token; it must be exactly one token.

    Configured ``invert.initializer[class]`` wins; otherwise the class name when it is one token,
    else its last word (``"blond hair"`` -> ``"hair"``). Anything else is a one-line error.
    """
    configured = (initializer or {}).get(class_name)
    candidates = [configured] if configured else [class_name, re.split(r"[\s_]+", class_name.strip())[-1]]
    for word in candidates:
        if len(tokenizer.encode(word, add_special_tokens=False)) == 1:
            return word
    pieces = tokenizer.tokenize(candidates[-1])
    where = f"invert.initializer.{class_name}={configured!r}" if configured else f"class {class_name!r}"
    raise ConfigError(
        f"{where}: no single-token initializer ({candidates[-1]!r} splits into {pieces}); "
        f"set invert.initializer.{class_name}=<one-token noun>, e.g. {pieces[-1].replace('</w>', '')!r}"
    )


def _checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a class (``checkpoint-<step>``), oldest first."""
    found = []
    for p in out_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        step = p.name[len(CHECKPOINT_PREFIX):]
        if p.is_dir() and step.isdigit() and (p / "state.json").is_file():
            found.append((int(step), p))
    return sorted(found)


def _resume_state(job: ClassJob) -> tuple[str, int]:
    """``(status, step)`` from what an earlier run left in the class folder.

    Earlier output made with other settings is never overwritten silently: that is an error.
    """
    out = Path(job.out_dir)
    done = read_json(out / TOKEN_FILE)
    settings = job.settings()
    if done is not None:
        if done.get("settings") != settings:
            raise ConfigError(f"{out} holds a token of class {job.class_name!r} trained with other "
                              f"settings ({_diff(done.get('settings') or {}, settings)}); "
                              "delete that folder or use another out")
        if done.get("finished") and (out / EMBEDS_FILE).is_file():
            return "finished", job.cfg.steps
    ckpts = _checkpoints(out)
    if ckpts:
        step, path = ckpts[-1]
        saved = json.loads((path / "state.json").read_text()).get("settings") or {}
        if saved != settings:
            raise ConfigError(f"{path} was written with other settings ({_diff(saved, settings)}); "
                              "delete it or use another out")
        return "resume", step
    return "pending", 0


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}" for k in keys[:3])


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def plan_tokens(cfg: RaydbbConfig, class_names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Check the ``invert`` config against the classes and the model's tokenizer (cheap, no pools).

    Returns ``{class name: (token, initializer)}`` for the classes to invert. One-line errors for
    unknown class names, mixed precision without a GPU, initializers that are not one token, and
    tokens already in the vocabulary or shared by two classes.
    """
    inv = cfg.invert
    known = list(class_names)
    for field_name, names in (("classes", inv.classes), ("initializer", inv.initializer),
                              ("tokens", inv.tokens)):
        for name in names or []:
            if name not in known:
                raise ConfigError(f"invert.{field_name}: unknown class {name!r}; expected one of {known}")
    if inv.mixed_precision != "no" and cfg.device != "cuda":
        raise ConfigError(f"invert.mixed_precision={inv.mixed_precision!r} needs device=cuda; "
                          "set invert.mixed_precision=no on CPU")
    if cfg.device == "cuda" and inv.num_gpus == 0:
        raise ConfigError("invert.num_gpus=0 with device=cuda: the class tasks would get no GPU; "
                          "leave invert.num_gpus unset (one GPU per class) or give a fraction > 0")
    check_model_configs(cfg.inpaint.model)
    tokenizer = load_tokenizer(cfg.inpaint.model)
    vocab = tokenizer.get_vocab()
    plan: dict[str, tuple[str, str]] = {}
    for name in inv.classes or known:
        token = (inv.tokens or {}).get(name) or placeholder_token(name)
        # A word the tokenizer already maps to one id would be hijacked by the new token.
        if token in vocab or len(tokenizer.encode(token, add_special_tokens=False)) == 1:
            raise ConfigError(f"token {token!r} of class {name!r} is already in the vocabulary of "
                              f"{cfg.inpaint.model}; choose another with invert.tokens.{name}=<token>")
        twin = next((other for other, (t, _) in plan.items() if t == token), None)
        if twin is not None:
            raise ConfigError(f"classes {twin!r} and {name!r} map to the same token {token!r}; "
                              f"set invert.tokens.{name}=<token>")
        plan[name] = (token, resolve_initializer(name, inv.initializer, tokenizer))
    return plan


def plan_jobs(
    cfg: RaydbbConfig, class_names: Sequence[str], pools: dict[str, Sequence[str | PoolImage]]
) -> list[ClassJob]:
    """Validate the inversion of every requested class and return one job per class.

    Everything that can be wrong is checked here, before any training: what :func:`plan_tokens`
    checks, pools naming unknown classes, empty pools or pools whose every image was rejected,
    images without a mask under ``mask_mode=object``, and earlier output made with other
    settings. ``pools`` maps class name -> image paths or :class:`PoolImage` (see
    :func:`prepare_pools` for the select step's CSVs).
    """
    inv = cfg.invert
    for name in pools:
        if name not in class_names:
            raise ConfigError(f"token pools: unknown class {name!r}; expected one of {list(class_names)}")
    tokens_root = RunDir(cfg.out).tokens
    jobs: list[ClassJob] = []
    for name, (token, initializer) in plan_tokens(cfg, class_names).items():
        images = [p if isinstance(p, PoolImage) else PoolImage(str(p)) for p in pools.get(name, [])]
        if not images:
            raise DataError(f"token pool of class {name!r} is empty; expected at least one image "
                            f"(select.token_pool_size, {RunDir(cfg.out).token_pool_csv(name)})")
        usable = [i for i in images if not i.skip]
        if not usable:
            hint = (f"; masks come from mask.source={cfg.mask.source}: choose another source or set "
                    "invert.mask_mode=full") if images[0].skip.startswith("no_mask") else ""
            raise DataError(f"token pool of class {name!r}: all {len(images)} images were rejected "
                            f"(first: {images[0].path}: {images[0].skip}){hint}")
        if inv.mask_mode == "object":
            unmasked = [i.path for i in usable if not i.mask]
            if unmasked:
                raise ConfigError(
                    f"invert.mask_mode=object but {len(unmasked)} of {len(usable)} token-pool images of "
                    f"class {name!r} have no mask (e.g. {unmasked[0]}); give them masks "
                    "or set invert.mask_mode=full")
        job = ClassJob(class_name=name, token=token, initializer=initializer, images=images,
                       out_dir=str(token_dir(tokens_root, name)), model=cfg.inpaint.model,
                       device=cfg.device, cfg=inv)
        job.status, job.resume_step = _resume_state(job)
        jobs.append(job)
    return jobs


def report_progress(line: str) -> None:
    """Progress on stderr: stdout is the command's result (``raydbb invert --json``), and Ray
    forwards a task's stderr to the driver's stderr."""
    print(line, file=sys.stderr, flush=True)


def invert_class(job: ClassJob, report: Callable[[str], None] = report_progress) -> dict[str, Any]:
    """Learn the token of one class, resuming from its last checkpoint; returns a summary.

    A class whose ``token.json`` says it finished (with the same settings) is skipped.
    """
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f".{CHECKPOINT_PREFIX}*"):  # half-written checkpoints of a killed run
        shutil.rmtree(stale)
    status, _ = _resume_state(job)
    if status == "finished":
        return {"class_name": job.class_name, "token": job.token, "status": "skipped", "dir": str(out)}
    cfg, settings = job.cfg, job.settings()
    start_time = time.time()
    torch.manual_seed(cfg.seed)
    model = load_inpaint_model(job.model, job.device, cfg.mixed_precision)
    trainer = TokenTrainer(model, job.token, job.initializer, job.class_name, cfg, job.device)
    encoded = trainer.encode_images(job.images, cfg.mask_mode)
    start, losses = 0, []
    ckpts = _checkpoints(out)
    if ckpts:
        start, losses = trainer.load_checkpoint(ckpts[-1][1])
        report(f"invert {job.class_name}: resuming at step {start}/{cfg.steps} from {ckpts[-1][1].name}")
    every = max(1, cfg.steps // 10)
    for step in range(start, cfg.steps):
        losses.append(trainer.train_step(step))
        done = step + 1
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            trainer.save_checkpoint(out, done, losses, settings)
        if done % every == 0 or done == cfg.steps:
            recent = losses[-every:]
            report(f"invert {job.class_name}: step {done}/{cfg.steps} loss {sum(recent) / len(recent):.4f}")
    from safetensors.torch import save_file

    tmp = out / f".{EMBEDS_FILE}.tmp"
    save_file({job.token: trainer.learned_embedding()}, str(tmp))
    os.replace(tmp, out / EMBEDS_FILE)
    meta = {
        "class_name": job.class_name, "token": job.token, "initializer": job.initializer,
        "model": job.model, "images": [asdict(i) for i in encoded.used], "skipped": encoded.skipped,
        "loss": losses, "steps": cfg.steps, "seconds": round(time.time() - start_time, 2),
        "finished": True, "settings": settings,
    }
    write_json(out / TOKEN_FILE, meta)
    return {"class_name": job.class_name, "token": job.token, "status": "trained", "dir": str(out),
            "final_loss": losses[-1] if losses else float("nan"), "skipped": len(encoded.skipped)}


def run_inversion(
    cfg: RaydbbConfig,
    class_names: Sequence[str] | None = None,
    pools: dict[str, Sequence[str | PoolImage]] | None = None,
    engine: str = "ray",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Invert every class of ``cfg`` (or ``cfg.invert.classes``); returns one summary per class.

    ``class_names`` defaults to the dataset's (``cfg.data``); ``pools`` (class name -> image
    paths or :class:`PoolImage`, used as given) defaults to :func:`prepare_pools`. Everything is
    validated before any training; finished classes are skipped. ``engine="ray"`` runs one Ray
    task per class (``invert.num_cpus`` / ``invert.num_gpus`` each), ``"loop"`` runs them one
    after another in this process.
    """
    check_engine(engine)
    records = None
    if class_names is None or pools is None:
        from raydbb.data.registry import load_records

        records = load_records(cfg.data)
    names = list(class_names) if class_names is not None else list(records.class_names)
    plan_tokens(cfg, names)  # config errors first, before any scoring or masking
    if pools is None:
        pools = prepare_pools(cfg, records, engine, progress)
    jobs = plan_jobs(cfg, names, pools)
    results = [{"class_name": j.class_name, "token": j.token, "status": "skipped", "dir": j.out_dir}
               for j in jobs if j.status == "finished"]
    todo = [j for j in jobs if j.status != "finished"]
    if engine == "loop":
        results += [invert_class(job) for job in todo]
    elif todo:
        results += _run_tasks(cfg, todo, progress)
    order = {n: i for i, n in enumerate(names)}
    return sorted(results, key=lambda r: order[r["class_name"]])


def _run_tasks(cfg: RaydbbConfig, todo: list[ClassJob], progress: bool) -> list[dict[str, Any]]:
    import ray
    from tqdm import tqdm

    from raydbb.engine.executor import start_engine

    start_engine("ray", cfg.ray, progress)
    inv = cfg.invert
    num_gpus = inv.num_gpus if inv.num_gpus is not None else (1.0 if cfg.device == "cuda" else 0.0)
    # One GPU per class on GPU machines; on CPU num_gpus stays unset (fractional CPUs instead).
    resources = {"num_cpus": inv.num_cpus, **({"num_gpus": num_gpus} if num_gpus else {})}
    task = ray.remote(invert_class).options(**resources)
    pending = {task.remote(job): job for job in todo}
    results = []
    with tqdm(total=len(todo), desc="invert", unit="class", disable=not progress) as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                results.append(ray.get(ready[0]))
            except ray.exceptions.RayTaskError as err:
                for ref in pending:
                    ray.cancel(ref)
                if isinstance(err.cause, RaydbbError):
                    raise type(err.cause)(f"class {job.class_name!r}: {err.cause}") from err
                raise
            bar.update(1)
    return results
