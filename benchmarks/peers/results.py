"""Running the chosen peers for `aigc bench` (`bench`) and picking from their figures: the
ones that ran, the fastest, the fastest of each engine."""

from __future__ import annotations

import logging
from pathlib import Path

from benchmarks.peers.cache import checkpoint_hash, peer_folder
from benchmarks.peers.child import run_peer
from benchmarks.peers.peer import Peer
from benchmarks.peers.registry import FAMILIES, PEERS

logger = logging.getLogger("benchmarks.peers")


def bench(
    names: tuple[str, ...],
    checkpoint: Path,
    cache: Path,
    threads: int,
    workloads: list[dict],
    progress=None,
    registry: dict[str, Peer] | None = None,
) -> dict:
    """Every named peer on the same workloads; {name: figures or {"skipped": reason}}.
    A skipped peer gets a one-line warning."""
    digest = checkpoint_hash(checkpoint)
    out = {}
    for name in names:
        if progress is not None:
            progress(name)
        folder = peer_folder(cache, digest, name)
        out[name] = run_peer(name, checkpoint, folder, threads, workloads, registry)
        if "skipped" in out[name]:
            logger.warning("peer %s skipped: %s", name, out[name]["skipped"])
    return out


def measured(figures: dict | None) -> dict:
    """The peers that ran (skipped ones left out), by name."""
    return {n: f for n, f in (figures or {}).items() if isinstance(f, dict) and "tokens_per_s" in f}


def best(figures: dict | None) -> str | None:
    """The measured peer with the highest tokens/s; None when none ran."""
    ran = measured(figures)
    return max(ran, key=lambda n: ran[n]["tokens_per_s"], default=None)


def best_per_family(figures: dict) -> list[str]:
    """The fastest measured peer of each engine, fastest first."""
    picks = [best({n: f for n, f in figures.items() if PEERS[n].family == fam}) for fam in FAMILIES]
    ran = [p for p in picks if p is not None]
    return sorted(ran, key=lambda n: -figures[n]["tokens_per_s"])
