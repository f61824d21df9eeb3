"""What a peer runtime is: `Peer` (what it needs installed, how it converts a checkpoint and
loads the conversion) and `Runner` (a loaded peer that generates)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Peer:
    """One peer runtime: what it needs installed, how it converts and how it generates."""

    name: str
    family: str
    label: str  # the table's path column
    package: str  # the distribution whose version is reported
    modules: tuple[str, ...]  # importable modules it needs (a missing one: skipped)
    install: str  # how to get the missing modules
    weights: str
    settings: dict  # the conversion's settings (recorded; a change converts again)
    # (checkpoint, out, settings, threads): writes the conversion into `out`; returns what
    # the converter reports it applied (recorded beside the settings)
    convert: Callable[[Path, Path, dict, int], dict] = field(repr=False)
    load: Callable[[Path, Path, int], Runner] = field(repr=False)  # (folder, checkpoint, threads)
    files: tuple[str, ...] = ()  # the weight files whose size is reported
    versions: tuple[str, ...] = ()  # other distributions the conversion uses

    def missing(self) -> str | None:
        """Why the peer cannot run here, or None."""
        for module in self.modules:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                return f"{module} is not installed ({self.install})"
        return None


class Runner:
    """A loaded peer: `generate` produces exactly `n` tokens greedily and calls `timer.put`
    once with the prompt, then once per new token as it is produced."""

    properties: dict

    def generate(self, ids: list[int], n: int, timer) -> list[int]:
        raise NotImplementedError
