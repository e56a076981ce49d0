"""``raydbb invert``: learn one causal placeholder token per class (textual inversion, DDB step 3)."""

from __future__ import annotations

import argparse
import json

from raydbb.commands import config_command
from raydbb.config import config_from_args

HELP = """\
Learn one placeholder token per class (e.g. <waterbird-causal>) on the class's token pool with the
inpainting model `inpaint.model`, by textual inversion (paper Eq. 1): only the new embedding row
trains; the UNet, the VAE and the rest of the text encoder stay frozen.

  token pool   <out>/token_pool/<class>.csv from the select step (written now from the ERM
               checkpoint when missing: highest-loss training images, or minority-group
               validation images with select.token_pool_source=val_minority)
  masks        invert.mask_mode=object (default): each pool image's object mask from the same
               mask stage generation uses (mask.source); full: the whole frame
  prompts      invert.templates, each with {token} and {class_name}
  output       <out>/tokens/<class>/learned_embeds.safetensors (diffusers load_textual_inversion
               layout) + token.json (token, initializer, images, loss curve) + checkpoint-<step>/

Classes run as parallel Ray tasks (invert.num_cpus / invert.num_gpus each; one GPU per class when
device=cuda). A finished run is skipped on rerun (step marker OUT/.steps/invert.json, shared with
`python -m raydbb.jobs.pipeline`); an interrupted one resumes from the last checkpoint and skips
finished classes. Point
generation at the tokens with inpaint.tokens_dir=<out>/tokens.

Example:
  raydbb invert --config jobs/configs/synthetic.yaml out=runs/demo invert.steps=500 \\
      "invert.initializer={landbird: bird, waterbird: bird}"
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = config_command(
        subparsers, "invert", "learn one causal token per class (textual inversion) for the inpainter",
        HELP, run)
    parser.add_argument("--engine", choices=["ray", "loop"], default="ray",
                        help="ray: one Ray task per class (default); loop: classes one after another "
                             "in this process")
    parser.add_argument("--json", action="store_true", help="print the per-class summary as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)  # first: a config error is reported without loading torch
    if args.dry_run:
        from raydbb.plan import run_dry

        return run_dry(cfg, "invert")
    from pathlib import Path

    from raydbb.ddb.inversion.run import run_inversion
    from raydbb.workflow import INVERT, run_command

    def invert(cfg, progress):
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        cfg.to_yaml(Path(cfg.out) / "invert_config.yaml")
        return {"classes": run_inversion(cfg, engine=args.engine, progress=progress)}

    results = run_command(cfg, INVERT.name, invert, progress=not args.no_progress,
                          stdout_for_result=args.json)["summary"]["classes"]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'class':<20} {'token':<28} {'status':<8} final loss")
    for r in results:
        loss = f"{r['final_loss']:.4f}" if "final_loss" in r else "-"
        print(f"{r['class_name']:<20} {r['token']:<28} {r['status']:<8} {loss}")
    tokens = Path(cfg.out) / "tokens"
    print(f"tokens in {tokens}; generate with them: inpaint.tokens_dir={tokens}")
    return 0
