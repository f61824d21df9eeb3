"""The cached conversions: the checkpoint's hash, the folder a peer's conversion of it lives
in, and `prepare`, which reuses a finished conversion with the same settings or converts into
a temporary folder that replaces the old one when done."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from importlib import metadata
from pathlib import Path

from aigc.errors import ConfigError
from benchmarks.peers.peer import Peer

logger = logging.getLogger("benchmarks.peers")

SETTINGS_FILE = "peer.json"
# bumped when a conversion changes, so that older cached folders are converted again
FORMAT = 1


def checkpoint_files(checkpoint: Path) -> list[Path]:
    """The files a conversion reads: config.json, the weights and the tokenizer."""
    ckpt = Path(checkpoint)
    weights = sorted(ckpt.glob("*.safetensors")) or sorted(ckpt.glob("pytorch_model*.bin"))
    if not (ckpt / "config.json").is_file() or not weights:
        raise ConfigError(f"--gpt2 {ckpt}: no config.json and weights (*.safetensors / pytorch_model.bin)")
    tokenizer = [ckpt / "tokenizer.json"] if (ckpt / "tokenizer.json").is_file() else []
    return [ckpt / "config.json", *weights, *tokenizer]


def checkpoint_hash(checkpoint: Path) -> str:
    """sha256 over the checkpoint's config, weights and tokenizer (names and bytes), 16 hex digits."""
    h = hashlib.sha256()
    for f in checkpoint_files(checkpoint):
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:16]


def peer_folder(cache: Path, digest: str, name: str) -> Path:
    return Path(cache) / "peers" / digest / name


def _wanted_settings(peer: Peer) -> dict:
    return {"format": FORMAT, "peer": peer.name, **peer.settings}


def cached(peer: Peer, folder: Path) -> dict | None:
    """The recorded settings of a finished conversion in `folder` that matches `peer`, or None."""
    try:
        recorded = json.loads((Path(folder) / SETTINGS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return recorded if recorded.get("settings") == _wanted_settings(peer) else None


def prepare(peer: Peer, checkpoint: Path, folder: Path, threads: int) -> dict:
    """The peer's conversion of `checkpoint` in `folder`: reused when it is there with the same
    settings, else converted into a temporary folder that replaces `folder` when done.
    Returns what `peer.json` records, with `cached` and the conversion's seconds."""
    from aigc.fsutil import atomic_dir

    recorded = cached(peer, folder)
    if recorded is not None:
        return {**recorded, "cached": True}
    logger.info("converting %s for the peer %s into %s", checkpoint, peer.name, folder)
    t0 = time.perf_counter()
    with atomic_dir(folder, flag="--cache") as tmp:
        import torch

        torch.set_num_threads(threads)  # the converters load (and trace) the PyTorch model
        applied = peer.convert(Path(checkpoint), tmp, peer.settings, threads)
        recorded = {
            "settings": _wanted_settings(peer),
            "applied": applied,
            "checkpoint": str(Path(checkpoint).resolve()),
            "convert_s": round(time.perf_counter() - t0, 1),
            "versions": installed_versions((peer.package, *peer.versions)),
        }
        (tmp / SETTINGS_FILE).write_text(json.dumps(recorded, indent=2) + "\n")
    return {**recorded, "cached": False}


def installed_versions(dists) -> dict:
    """{distribution: its installed version, or None}."""
    out = {}
    for d in dists:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = None
    return out
