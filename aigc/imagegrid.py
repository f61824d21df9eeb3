"""One image grid: uint8 (N, H, W, C) images tiled row by row into one PNG (the trainers'
samples, `aigc generate image`, the demo)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def png_grid(images: np.ndarray, ncol: int = 8) -> bytes:
    """PNG bytes of uint8 (N, H, W, C) images, `ncol` to a row (fewer when N is smaller);
    one channel is written as greyscale."""
    from PIL import Image

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images: expected uint8 (N, H, W, 1 or 3), got {images.dtype} {list(images.shape)}")
    n, h, w, c = images.shape
    ncol = max(1, min(ncol, n))
    rows = (n + ncol - 1) // ncol
    grid = np.zeros((rows * h, ncol * w, c), np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = images[i]
    buf = io.BytesIO()
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(buf, format="PNG")
    return buf.getvalue()


def save_png_grid(images: np.ndarray, path: Path, ncol: int = 8) -> Path:
    """`png_grid` written to `path` (its folder made); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_grid(images, ncol))
    return path
