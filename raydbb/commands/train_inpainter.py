"""``raydbb train-inpainter``: train the small in-domain SD-2-shaped inpainting model."""

from __future__ import annotations

import argparse
import json

from raydbb.tools.inpainter_spec import InpainterSpec

HELP = """\
Train a small Stable-Diffusion-2-shaped inpainting model (AutoencoderKL, 9-channel UNet, CLIP text
encoder with the offline CLIP tokenizer, DDIM scheduler) on birds with object masks, and save it as
a StableDiffusionInpaintPipeline folder (safetensors) that inpaint.model can point at.

--corpus pretrain (default): the synthetic world's unbiased pretraining corpus (both bird classes
on land, water, sky, sand, plain and clutter backgrounds, class independent of background, seeds
disjoint from the benchmark) -- the stand-in for SD-2's pretraining, which never saw the benchmark.
This is how the inpainter shipped in raydbb/assets was made, in three rounds (--init trains a model
further: its VAE encoder and tokenizer are kept, so the latent space does not move):

  raydbb train-inpainter --n 8000 --steps 6000 --out runs/inpainter-r1 --threads 1
  raydbb train-inpainter --init runs/inpainter-r1 --n 16000 --steps 6000 --out runs/inpainter-r2 --threads 1
  raydbb train-inpainter --init runs/inpainter-r2 --n 16000 --decoder-steps 4000 --steps 0 \\
      --out raydbb/assets/synthetic_inpainter --threads 2 --overwrite

--corpus dataset --data DIR: the TRAIN split of a dataset with object masks instead (rows sampled
group-balanced with --balance). On a spuriously correlated split the model learns the shortcut
(asked for a waterbird it paints water into the mask).

Phase 1 trains the VAE (64 px -> 16x16x4 latents); with --decoder-steps the decoder is then
fine-tuned alone, encoder frozen, on whole images with L1 plus a perceptual distance measured by the
shipped synthetic backbone (the first decoder, trained with L1 only, drew birds and grass as smooth
washes). Phase 2 trains the UNet and text encoder with the standard SD inpainting objective, the
hole's latents weighted 5x (what DDB asks it to paint), on prompts "a photo of a <class name>"
(dropped to "" 10 % of the time for classifier-free guidance; the pooled prompt also enters the
timestep embedding) and masks centred on the object: its own mask (dilated up to 8 px), its union
with another-class bird's mask, its bounding box, or random shapes. Without --no-progress bars show
the loss; with it, a log line at each tenth of a phase.

Deterministic from --seed for a given torch version and --threads. One torch thread is the
default: on a CPU shared with other work, extra threads spin and can be many times slower; on an
idle machine --threads 2 is faster (the result then differs in the last bits).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = InpainterSpec()
    parser = subparsers.add_parser(
        "train-inpainter", help="train the small SD-shaped inpainting model on a dataset's train split",
        description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--corpus", choices=["pretrain", "dataset"], default=defaults.corpus,
                        help="training data: the unbiased pretraining corpus or --data's train split "
                             "(default %(default)s)")
    parser.add_argument("--n", type=int, default=defaults.corpus_n, metavar="N",
                        help="pretraining corpus samples (default %(default)s)")
    parser.add_argument("--corpus-seed", type=int, default=defaults.corpus_seed, metavar="S",
                        help="pretraining corpus seed (default %(default)s)")
    parser.add_argument("--colours", choices=["benchmark", "uniform"], default=defaults.corpus_colours,
                        help="pretraining corpus plumage odds (default %(default)s)")
    parser.add_argument("--data", metavar="DIR",
                        help="dataset folder (train split + masks) for --corpus dataset")
    parser.add_argument("--dataset", choices=["synthetic", "csv"], default="synthetic",
                        help="dataset layout of --data (default synthetic; both are the generic CSV layout)")
    parser.add_argument("--out", required=True, metavar="DIR", help="pipeline folder to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out (only once the new model is complete)")
    parser.add_argument("--init", metavar="DIR",
                        help="a model this command wrote, to train further: its VAE encoder and tokenizer "
                             "are kept, the decoder is fine-tuned for --decoder-steps and the UNet + text "
                             "encoder continue for --steps more steps (0: as they are)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default %(default)s)")
    parser.add_argument("--steps", type=int, default=defaults.unet_steps, metavar="N",
                        help="UNet + text encoder optimiser steps (default %(default)s)")
    parser.add_argument("--vae-steps", type=int, default=defaults.vae_steps, metavar="N",
                        help="VAE optimiser steps (default %(default)s)")
    parser.add_argument("--decoder-steps", type=int, default=defaults.decoder_steps, metavar="N",
                        help="decoder fine-tuning steps, encoder frozen (L1 + the synthetic backbone's "
                             "perceptual distance; default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, metavar="N",
                        help="images per UNet step (default %(default)s)")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="UNet/text encoder learning rate")
    parser.add_argument("--balance", choices=["group", "class", "none"], default=defaults.balance,
                        help="sampling balance from the train split's labels (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="torch threads (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from raydbb.config import DataConfig
    from raydbb.data.registry import load_records
    from raydbb.errors import ConfigError
    from raydbb.tools.inpainter_training import TRAINING_RECORD, train_inpainter

    if args.threads < 1:
        raise ConfigError(f"--threads={args.threads}: expected an integer >= 1")
    torch.set_num_threads(args.threads)
    if (args.corpus == "dataset") != (args.data is not None):
        raise ConfigError(f"--corpus {args.corpus} {'with' if args.data else 'without'} --data: "
                          "--data is needed by --corpus dataset and only by it")
    spec = InpainterSpec(seed=args.seed, unet_steps=args.steps, vae_steps=args.vae_steps,
                         decoder_steps=args.decoder_steps,
                         batch_size=args.batch_size, lr=args.lr, balance=args.balance, corpus=args.corpus,
                         corpus_n=args.n, corpus_seed=args.corpus_seed, corpus_colours=args.colours)
    records = load_records(DataConfig(name=args.dataset, root=args.data)) if args.data else None
    out = train_inpainter(records, args.out, spec, progress=not args.no_progress, overwrite=args.overwrite,
                          init=args.init)
    record = json.loads((out / TRAINING_RECORD).read_text())
    phases = (("decoder", "decoder_loss_start_end"), ("UNet", "unet_loss_start_end"))
    losses = "; ".join(f"{phase} loss {record[key][0]:.3f} -> {record[key][1]:.3f}"
                       for phase, key in phases if record[key])
    print(f"wrote {out} (VAE {record['seconds']['vae']:.0f} s, UNet {record['seconds']['unet']:.0f} s"
          + (f"; {losses})" if losses else ")"))
    return 0
