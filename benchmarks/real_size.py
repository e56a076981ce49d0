"""Real size: the published architectures, random weights, the real commands, on CPU.

Builds, once per machine (cached in ``RAYDBB_REAL_SIZE_DIR``, default ``~/.cache/raydbb/real-size``),
folders shaped like the hub repositories a Waterbirds run points at — SD-2 inpainting (9-channel
UNet 320/640/1280/1280 at 64x64 latents, the SD-2 VAE, a 23-layer 1024-wide OpenCLIP-H text tower
with CLIP's real 49 408-token BPE vocabulary), GroundingDINO-tiny (Swin-T + BERT-base, 900 queries),
SAM ViT-B, and a ResNet-50 classifier checkpoint at 224 px — from their configurations, seed 0,
no download. Then runs, as a user would, on a few Waterbirds-shaped images (WILDS layout, assorted
non-square sizes) with ``jobs/configs/waterbirds.yaml``:

1. ``raydbb invert`` for a few steps at 512 px (the token training path at real size);
2. ``raydbb generate`` in the ``pools`` layout (the GPU layout) with ``device: cpu`` and no GPUs:
   text masks, 512 px inpainting with the learned tokens loaded by ``load_textual_inversion``,
   IG at 224 px;

checks the manifest (one row per sample, repaints at the source's resolution, masks of the
source's size) and records per stage the model load time, the peak resident memory of its actor
and the seconds per image, plus the parameter count of each model (its float16 weight size).

    python -m benchmarks.real_size [--images 4] [--steps 2] [--invert-steps 2]

Takes 15-30 minutes on 2 cores (most of it SD-2 at 512 px); not part of ``make test``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.cli import BenchCommand
from benchmarks.fixtures import CLASS_NAMES, cached_build
from benchmarks.results import log, markdown_table, section_header

COMMAND = "python -m benchmarks.real_size"
REPO = Path(__file__).resolve().parent.parent
JOB_CONFIG = REPO / "jobs" / "configs" / "waterbirds.yaml"

#: stabilityai's SD-2 inpainting architecture (UNet, VAE, OpenCLIP-H text tower) in SmallSDSizes terms
SD2_INPAINTING: dict[str, Any] = {
    "sample_size": 64, "block_channels": (320, 640, 1280, 1280), "layers_per_block": 2,
    "attention_head_dim": (5, 10, 20, 20), "norm_num_groups": 32,
    "vae_channels": (128, 256, 512, 512), "vae_layers_per_block": 2, "latent_channels": 4,
    "text_hidden": 1024, "text_layers": 23, "text_heads": 16, "text_intermediate": 4096,
}
#: Waterbirds images are a few hundred pixels a side, in both orientations
IMAGE_SIZES = [(500, 375), (375, 500), (448, 336), (512, 384), (400, 300), (333, 500)]
BERT_VOCAB_SIZE = 30522  # bert-base-uncased, GroundingDINO's text backbone


def cache_dir() -> Path:
    return Path(os.environ.get("RAYDBB_REAL_SIZE_DIR", Path.home() / ".cache" / "raydbb" / "real-size"))


# ------------------------------------------------------------------------------------ models


def build_grounding_dino_tiny(out: Path) -> None:
    """GroundingDINO-tiny's configuration (transformers' defaults are that model) and processor,
    with a WordPiece vocabulary of BERT-base's size written offline."""
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    from raydbb.models.small_langsam import write_wordpiece_vocab
    from raydbb.models.small_sd import seeded

    vocab = write_wordpiece_vocab(out / "vocab.txt")
    words = vocab.read_text().split()
    words += [f"[unused{i}]" for i in range(BERT_VOCAB_SIZE - len(words))]
    vocab.write_text("\n".join(words) + "\n")
    with seeded(0):
        model = GroundingDinoForObjectDetection(GroundingDinoConfig())
    model.save_pretrained(out, safe_serialization=True)
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(),
                           tokenizer=BertTokenizer(vocab=str(vocab), do_lower_case=True)).save_pretrained(out)


def build_sam_vit_base(out: Path) -> None:
    """SAM ViT-B (transformers' default SamConfig) with its 1024 px processor."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    from raydbb.models.small_sd import seeded

    with seeded(0):
        model = SamModel(SamConfig())
    model.save_pretrained(out, safe_serialization=True)
    SamProcessor(image_processor=SamImageProcessor()).save_pretrained(out)


def build_resnet50(out: Path) -> None:
    import torch

    from raydbb.config import ClassifierConfig
    from raydbb.models.checkpoint import save_classifier
    from raydbb.models.classifier import build_classifier

    torch.manual_seed(0)
    arch = ClassifierConfig(arch="resnet50", pretrained=False, image_size=224)
    save_classifier(build_classifier(arch, 2).eval(), out, {"class_names": CLASS_NAMES})


def build_models(root: Path) -> dict[str, Path]:
    """The four model folders under ``root`` (each built once, then reused)."""
    from raydbb.models.small_sd import build_small_inpaint_pipeline

    folders = {"sd2": root / "stable-diffusion-2-inpainting", "detector": root / "grounding-dino-tiny",
               "segmenter": root / "sam-vit-base", "classifier": root / "resnet50-erm"}
    builders = {"sd2": lambda: build_small_inpaint_pipeline(folders["sd2"], seed=0, **SD2_INPAINTING),
                "detector": lambda: build_grounding_dino_tiny(folders["detector"]),
                "segmenter": lambda: build_sam_vit_base(folders["segmenter"]),
                "classifier": lambda: build_resnet50(folders["classifier"])}
    for name, folder in folders.items():
        start = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        cached_build(folder, {"model": name, "version": 1}, builders[name])
        log(f"{name}: {folder} ({time.perf_counter() - start:.0f} s)")
    return folders


def parameter_counts(folders: dict[str, Path]) -> dict[str, int]:
    """Parameters per model folder, read from the safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    counts = {}
    for name, folder in folders.items():
        total = 0
        for path in folder.rglob("*.safetensors"):
            with safe_open(str(path), "pt") as f:
                total += sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())  # noqa: SIM118
        counts[name] = total
    return counts


# ------------------------------------------------------------------------------------ data


def write_waterbirds_shaped(root: Path, n_train: int) -> Path:
    """``n_train`` training images (+2 val, +2 test) in the WILDS Waterbirds layout, drawn by the
    synthetic benchmark's renderer and resized to Waterbirds-like non-square sizes."""
    from PIL import Image

    from raydbb.data.synthetic import write_synthetic

    drawn = write_synthetic(root / "drawn", seed=0, n_train=n_train, n_val=2, n_test=2, size=256,
                            progress=False)
    meta = pd.read_csv(drawn / "metadata.csv")
    rows = []
    split_code = {"train": 0, "val": 1, "test": 2}
    for i, row in enumerate(meta.itertuples()):
        w, h = IMAGE_SIZES[i % len(IMAGE_SIZES)]
        y = int(row.label == "waterbird")
        rel = f"{'001.Black_footed_Albatross' if y else '045.Northern_Fulmar'}/bird_{i:04d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.open(drawn / row.path).convert("RGB").resize((w, h)).save(root / rel, quality=95)
        rows.append({"img_id": i, "img_filename": rel, "y": y, "split": split_code[row.split],
                     "place": int(row.spurious == "water"), "place_filename": "/synthetic"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


# ------------------------------------------------------------------------------------ runs


def peak_rss_by_title(pid: int, stop: threading.Event, found: dict[str, float]) -> None:
    """Until ``stop``: the peak resident memory (VmHWM, MiB) of process ``pid`` and of every Ray
    worker process (by its title, e.g. ``ray::MapWorker(MapBatches(inpaint))``), polled each second."""
    while not stop.is_set():
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                if int(proc.name) != pid and not title.startswith("ray::"):
                    continue
                status = (proc / "status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    name = "driver" if int(proc.name) == pid else title
                    found[name] = max(found.get(name, 0.0), int(line.split()[1]) / 1024)
        stop.wait(1.0)


def run_command(args: list[str]) -> tuple[str, float, dict[str, float]]:
    """Run a raydbb command; its stdout, wall seconds and peak memory per process title."""
    log(" ".join(args[2:6]) + " ...")
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    stop, found = threading.Event(), {}
    poller = threading.Thread(target=peak_rss_by_title, args=(proc.pid, stop, found), daemon=True)
    poller.start()
    out, err = proc.communicate()
    stop.set()
    poller.join()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[2:4])} failed ({proc.returncode}):\n{err[-4000:]}")
    log(f"  done in {wall:.0f} s")
    return out, wall, found


def overrides(root: Path, models: dict[str, Path], steps: int, invert_steps: int) -> list[str]:
    run = root / "run"
    one = "{actors: 1, num_cpus: 1, num_gpus: 0, batch_size: 2, model_batch_size: 1}"
    return [
        f"out={run}", "device=cpu", "ray.num_cpus=6", f"data.root={root / 'data'}",
        "classifier.pretrained=false", "classifier.weights=null",
        f"generate.classifier={models['classifier']}",
        "select.fraction=0.5", "select.token_pool_size=4", f"select.resources={one}",
        "generate.io={num_cpus: 0.5, batch_size: 2}",
        f"mask.detector={models['detector']}", f"mask.segmenter={models['segmenter']}",
        # random detector weights find arbitrary boxes: keep the best one, whatever its score
        "mask.box_threshold=0.0", "mask.text_threshold=0.0", "mask.min_area=0.0", "mask.max_area=1.0",
        f"mask.resources={one}",
        f"inpaint.model={models['sd2']}", f"inpaint.tokens_dir={run / 'tokens'}", "inpaint.dtype=float32",
        f"inpaint.steps={steps}", f"inpaint.resources={one}",
        "prune.resources={actors: 1, num_cpus: 1, num_gpus: 0, batch_size: 2, model_batch_size: 16}",
        f"invert.steps={invert_steps}", "invert.mixed_precision=no", "invert.num_gpus=0",
        "invert.resolution=512", "invert.batch_size=1", "invert.grad_accum=1", "invert.num_cpus=1",
        "invert.initializer={landbird: bird, waterbird: bird}",
    ]


def json_output(text: str) -> Any:
    """The JSON document a ``--json`` command printed last (log lines may come before it)."""
    lines = text.splitlines()
    start = max(i for i, line in enumerate(lines) if line in ("{", "[") or line.startswith(("{\"", "[{")))
    return json.loads("\n".join(lines[start:]))


def check_manifest(root: Path) -> dict[str, Any]:
    """One row per sample; each repaint at its source's size; each mask at its source's size."""
    from PIL import Image

    from raydbb.engine.manifest import read_manifest

    run = root / "run"
    rows = read_manifest(run, resolve_paths=False)
    sources = pd.read_csv(root / "data" / "metadata.csv")
    sizes = {Path(f).stem: Image.open(root / "data" / f).size for f in sources["img_filename"]}
    same_size = masks_ok = 0
    for row in rows.itertuples():
        want = next(s for stem, s in sizes.items() if stem in row.source_id)
        if row.image_path and Image.open(run / row.image_path).size == want:
            same_size += 1
        if row.mask_path and Image.open(run / row.mask_path).size == want:
            masks_ok += 1
    coverage = [float(np.mean(np.asarray(Image.open(run / p)) > 0)) for p in rows["mask_path"] if p]
    generated = int((rows["image_path"] != "").sum())
    with_mask = int((rows["mask_path"] != "").sum())
    if not rows["sample_id"].is_unique or same_size != generated or masks_ok != with_mask:
        raise SystemExit(f"manifest check failed: {len(rows)} rows, {same_size}/{generated} repaints and "
                         f"{masks_ok} masks at their source's size")
    return {"rows": len(rows), "generated": generated, "kept": int(rows["kept"].sum()),
            "repaints at source size": f"{same_size}/{generated}", "masks at source size": masks_ok,
            "mask coverage": float(np.mean(coverage)) if coverage else 0.0}


def measure(images: int, steps: int, invert_steps: int) -> dict[str, Any]:
    root = cache_dir()
    models = build_models(root)
    params = parameter_counts(models)
    work = root / "bench"
    shutil.rmtree(work, ignore_errors=True)
    write_waterbirds_shaped(work / "data", images)
    base = [sys.executable, "-m", "raydbb.cli"]
    cfg = ["--config", str(JOB_CONFIG), *overrides(work, models, steps, invert_steps)]
    inv_out, inv_wall, inv_mem = run_command([*base, "invert", *cfg, "--no-progress", "--json"])
    gen_out, gen_wall, gen_mem = run_command([*base, "generate", *cfg, "--no-progress", "--json"])
    (work / "invert.out").write_text(inv_out)
    (work / "generate.out").write_text(gen_out)
    summary = json_output(gen_out)
    invert = {"wall_s": inv_wall, "memory": inv_mem, "result": json_output(inv_out)}
    return {"params": params, "invert": invert,
            "generate": {"wall_s": gen_wall, "memory": gen_mem, "summary": summary},
            "manifest": check_manifest(work), "images": images, "steps": steps, "invert_steps": invert_steps}


# ------------------------------------------------------------------------------------ report


STAGE_MODEL = {"score": "classifier", "mask": "detector", "inpaint": "sd2", "prune": "classifier"}


def report(r: dict[str, Any], info: dict[str, Any], load: list[float]) -> str:
    p = r["params"]
    model_rows = [{"model": name, "folder shaped like": hub, "parameters (M)": f"{p[key] / 1e6:.0f}",
                   "float16 weights (GiB)": f"{p[key] * 2 / 2**30:.2f}",
                   "float32 (GiB)": f"{p[key] * 4 / 2**30:.2f}"}
                  for key, name, hub in (
                      ("sd2", "SD-2 inpainting (UNet + VAE + text)",
                       "sd2-community/stable-diffusion-2-inpainting"),
                      ("detector", "GroundingDINO-tiny", "IDEA-Research/grounding-dino-tiny"),
                      ("segmenter", "SAM ViT-B", "facebook/sam-vit-base"),
                      ("classifier", "ResNet-50 classifier, 224 px", "raydbb checkpoint (torchvision arch)"))]
    stages = r["generate"]["summary"]["stages"]
    stage_rows = [{"stage": name, "model load s": f"{st.get('load_s', float('nan')):.1f}",
                   "peak RSS of the actor (MiB)": f"{st.get('peak_rss_mib', float('nan')):.0f}",
                   "s per row": f"{st['s_per_row']:.2f}",
                   "rows": "sources" if name in ("load", "mask") else "samples"}
                  for name, st in stages.items() if name in ("mask", "inpaint", "prune")]
    inv = r["invert"]
    inv_peak = max((v for k, v in inv["memory"].items() if k != "driver"), default=float("nan"))
    m = r["manifest"]
    return "\n".join([
        section_header("8. Real-size models on CPU: SD-2 inpainting, GroundingDINO-tiny, SAM ViT-B, "
                       "ResNet-50", COMMAND, info, load),
        f"Random weights in folders built from the published configurations (no download), run through "
        f"`raydbb invert` and `raydbb generate` with `jobs/configs/waterbirds.yaml` on {r['images']} "
        f"Waterbirds-shaped training images (WILDS layout, 300-512 px, both orientations): `device: cpu`, "
        f"no GPUs, the pools layout (one actor per model stage), float32, {r['steps']} inpainting steps "
        f"at 512 px with the learned tokens, IG with 16 steps at 224 px, model batch 1.\n",
        markdown_table(model_rows),
        f"`raydbb generate` (pools layout) finished in {r['generate']['wall_s']:.0f} s: {m['rows']} manifest "
        f"rows, {m['generated']} repaints, {m['kept']} kept; repaints at their source's size "
        f"{m['repaints at source size']}, masks at their source's size {m['masks at source size']} "
        f"(random detector and segmenter weights: the masks cover {100 * m['mask coverage']:.0f} % of the "
        "frame on average, so the figures are for whole-image repaints). Per stage (model load = the "
        "actor's `setup()`; peak RSS = the actor process's high-water mark; s per row while busy):\n",
        markdown_table(stage_rows),
        f"`raydbb invert` at 512 px ({r['invert_steps']} steps per class, both classes) finished in "
        f"{inv['wall_s']:.0f} s (pool masks with GroundingDINO + SAM, then the token steps through the "
        f"full UNet and text tower); peak RSS of its largest Ray worker {inv_peak:.0f} MiB.\n",
        "What these numbers mean for GPUs (float16, the job configs' `inpaint.dtype`): the weights are "
        "half the float32 sizes above; an actor's host memory is about its peak RSS here minus the "
        "float32 weights it moved to the GPU. cluster/README.md turns them into per-GPU sizing.\n",
    ])


def main(argv: list[str] | None = None) -> None:
    cli = BenchCommand(__doc__, "real_size")
    cli.add("--images", type=int, default=4, help="Waterbirds-shaped training images (half are selected)")
    cli.add("--steps", type=int, default=2, help="inpainting steps at 512 px")
    cli.add("--invert-steps", type=int, default=2, help="textual-inversion steps at 512 px")
    args = cli.parse(argv)
    cli.run(args, lambda _: measure(args.images, args.steps, args.invert_steps), report, fixtures=False)


if __name__ == "__main__":
    main()
