"""Training data that needs no download: bundled digits and docs text, or the user's folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aigc.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
TEXT_SUFFIXES = {".txt", ".md"}


def digits_8x8() -> np.ndarray:
    """scikit-learn's bundled digits as (1797, 8, 8) levels 0..16, read from its CSV file:
    importing scikit-learn to get them costs ~3 s on the 2-core machines, reading the file
    ~0.1 s. Through `load_digits` when the file is not where this scikit-learn keeps it."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        csv = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():
            with gzip.open(csv, "rt") as f:
                table = np.loadtxt(f, delimiter=",")
            if table.ndim == 2 and table.shape[1] == 65:  # 64 pixels and the label
                return table[:, :64].reshape(-1, 8, 8)
    from sklearn.datasets import load_digits

    return load_digits().images


def load_digits_images(image_size: int = 32, channels: int = 1) -> np.ndarray:
    """scikit-learn's bundled 8x8 digits, upsampled: float32 (N, C, H, W) in [-1, 1]."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(digits_8x8().astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 2 - 1).repeat(1, channels, 1, 1)
    return x.numpy()


def load_image_folder(path: Path, image_size: int = 32, channels: int = 3) -> np.ndarray:
    """Every image below `path`, centre-cropped and resized: float32 (N, C, H, W) in [-1, 1]."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_dir():
        raise DataError(f"--data {path}: not a folder")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"--data {path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    out = np.empty((len(files), channels, image_size, image_size), dtype=np.float32)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                side = min(im.size)
                left, top = (im.width - side) // 2, (im.height - side) // 2
                im = im.crop((left, top, left + side, top + side)).resize(
                    (image_size, image_size), Image.BILINEAR
                )
                arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"--data: cannot decode image {f}: {exc}") from exc
        out[i] = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
    return out


def load_text_corpus(path: Path | None = None, heldout_fraction: float = 0.1) -> tuple[str, str]:
    """(train, held-out) text: Python's bundled `pydoc_data.topics` by default, or the
    `*.txt` / `*.md` files below `path`. The held-out split is the last documents."""
    if path is None:
        from pydoc_data.topics import topics

        docs = [topics[k] for k in sorted(topics)]
    else:
        path = Path(path)
        if not path.is_dir():
            raise DataError(f"--data {path}: not a folder")
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file())
        docs = [f.read_text(encoding="utf-8", errors="replace") for f in files]
        docs = [d for d in docs if d.strip()]
        if not docs:
            raise DataError(f"--data {path}: no non-empty .txt or .md files found")
    if len(docs) == 1:  # one document: split by characters at a line break
        text = docs[0]
        cut = text.rfind("\n", 0, int(len(text) * (1 - heldout_fraction)))
        cut = cut if cut > 0 else int(len(text) * (1 - heldout_fraction))
        return text[:cut], text[cut:]
    n_held = max(1, int(round(len(docs) * heldout_fraction)))
    return "\n".join(docs[:-n_held]), "\n".join(docs[-n_held:])
