"""Pieces shared by the trainers: seeding, data batches, image grids."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def batches(data: torch.Tensor, batch_size: int, gen: torch.Generator):
    """Endless shuffled mini-batches."""
    n = len(data)
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield data[perm[i : i + batch_size]]


def grid_png(images: torch.Tensor, nrow: int = 8) -> bytes:
    """(N, C, H, W) in [-1, 1] -> PNG bytes of a grid (`aigc.imagegrid`)."""
    from aigc.imagegrid import png_grid

    x = ((images.detach().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return png_grid(x.permute(0, 2, 3, 1).numpy(), nrow)


def image_data(opts):
    """The training images and their description for the checkpoint."""
    from training.data import load_digits_images, load_image_folder

    if opts.data is None:
        channels = opts.channels or 1
        x = load_digits_images(opts.image_size, channels)
        return x, {"image_size": opts.image_size, "channels": channels, "source": "digits"}
    channels = opts.channels or 3
    x = load_image_folder(opts.data, opts.image_size, channels)
    return x, {"image_size": opts.image_size, "channels": channels, "source": str(opts.data)}
