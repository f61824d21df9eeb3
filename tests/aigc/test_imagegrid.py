"""The one image grid writer (trainer samples, `aigc generate image`, the demo)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from aigc.imagegrid import png_grid, save_png_grid


def test_images_are_tiled_row_by_row():
    rng = np.random.default_rng()
    images = rng.integers(0, 256, size=(5, 4, 3, 3), dtype=np.uint8)
    grid = np.asarray(Image.open(io.BytesIO(png_grid(images, ncol=2))))
    assert grid.shape == (3 * 4, 2 * 3, 3)
    for i in range(5):
        r, c = divmod(i, 2)
        assert np.array_equal(grid[r * 4 : (r + 1) * 4, c * 3 : (c + 1) * 3], images[i])
    assert not grid[8:, 3:].any()  # the sixth cell stays black


def test_one_channel_is_greyscale_and_the_file_is_written(tmp_path):
    images = np.full((2, 5, 5, 1), 200, np.uint8)
    path = save_png_grid(images, tmp_path / "sub" / "g.png")
    img = Image.open(path)
    assert img.mode == "L" and img.size == (10, 5)
    assert np.asarray(img).min() == 200


def test_anything_but_uint8_nhwc_is_refused():
    with pytest.raises(ValueError, match="expected uint8"):
        png_grid(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[4, 4, 3\]"):
        png_grid(np.zeros((4, 4, 3), np.uint8))
