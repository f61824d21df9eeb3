"""Training data that needs no download: bundled digits and docs text, or the user's folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aigc.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
TEXT_SUFFIXES = {".txt", ".md"}


DIGITS = Path(__file__).with_name("digits.npz")
# The digits the image models train on: the UCI "Optical Recognition of Handwritten Digits"
# test set as scikit-learn ships it (E. Alpaydin, C. Kaynak, 1998; CC BY 4.0), 1797 8x8
# images of levels 0..16 and their labels, bundled (45 kB) so that training needs neither a
# download nor scikit-learn.
DIGITS_SOURCES = ("digits", "sklearn-digits")  # the checkpoint's data source (older: sklearn-digits)


def digits_8x8() -> np.ndarray:
    """The bundled digits as (1797, 8, 8) levels 0..16."""
    with np.load(DIGITS) as data:
        return data["pixels"].astype(np.float64)


def load_digits_images(image_size: int = 32, channels: int = 1) -> np.ndarray:
    """The bundled 8x8 digits, upsampled: float32 (N, C, H, W) in [-1, 1]."""
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
