"""`aigc train` and `aigc create-gpt2`: argument parsing mapped onto the typed functions."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from training.api import MODELS, SIZES, TrainOptions

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", choices=MODELS, help="which model to train")
    parser.add_argument(
        "--out", type=Path, required=True, help="checkpoint folder to write (replaced atomically)"
    )
    parser.add_argument("--steps", type=int, help="optimizer steps (default: the model's tiny default)")
    parser.add_argument("--batch-size", type=int, help="batch size (default 64 images / 16 text windows)")
    parser.add_argument("--lr", type=float, help="learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed; the same seed repeats a run (default 0)")
    parser.add_argument(
        "--data", type=Path, help="folder of images or of .txt/.md files (default: bundled data)"
    )
    parser.add_argument("--size", choices=SIZES, default="tiny", help="model size preset (default tiny)")
    parser.add_argument("--image-size", type=int, default=32, help="image side, 32 or 64 (default 32)")
    parser.add_argument("--channels", type=int, help="1 or 3 (default 1 for digits, 3 for --data)")
    parser.add_argument("--latent-dim", type=int, help="latent size (default 100 DCGAN, 16 VAE)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from training.api import train

    opts = TrainOptions(
        model=args.model,
        out=args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        data=args.data,
        size=args.size,
        image_size=args.image_size,
        channels=args.channels,
        latent_dim=args.latent_dim,
        progress=not args.no_progress,
    )
    out = train(opts)
    logger.info("checkpoint: %s", out)
    return 0


def add_random_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder to write (save_pretrained format)")
    parser.add_argument("--size", choices=SIZES, default="124m", help="architecture preset (default 124m)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")


def run_random(args: argparse.Namespace) -> int:
    from training.gpt2 import create_random_gpt2

    logger.info("random-weight GPT-2: %s", create_random_gpt2(args.out, args.size, args.seed))
    return 0
