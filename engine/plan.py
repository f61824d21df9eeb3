"""What one engine step does, as plain data: the scheduler's plan (`StepPlan`: one or more
runner calls, `Forward`), and what a runner call returns (`ForwardOutput`).

A `Forward` is rows of token ids, each written into the KV cache of its slot from its start
position. A prefill row carries a chunk of a prompt; a decode row one token. A runner that
cannot mix them (`RunnerCaps.mixed` False) gets calls of one phase each; a prefill call's
rows are consecutive slots with one start and one length, and a decode call covers slots
`0..n-1` (a slot with nothing to decode gets a padding row: `requests[i]` None, written
where its next real token will be written, so it disturbs nothing).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.types import Request

MAIN = "main"
COMPANION = "companion"  # a pair's second graph (`companion.onnx`), sharing the KV slots


class Phase(enum.Enum):
    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(frozen=True, eq=False)
class Forward:
    """One runner call. Row `i`: `ids[i]` written into slot `slots[i]` at positions
    `starts[i]..`; its request (None: a padding row); the logits of each row's last position
    come back."""

    phase: Phase
    slots: tuple[int, ...]
    ids: np.ndarray  # (rows, tokens) int64
    starts: np.ndarray  # (rows,) int64
    requests: tuple[Request | None, ...]
    graph: str = MAIN

    @property
    def rows(self) -> int:
        return len(self.slots)

    @property
    def tokens(self) -> int:
        """Tokens of real rows (what the call is worth)."""
        return sum(1 for r in self.requests if r is not None) * int(self.ids.shape[1])

    def __repr__(self) -> str:
        return (
            f"Forward({self.phase.value}, slots={list(self.slots)}, starts={self.starts.tolist()}, "
            f"tokens={self.ids.shape[1]}, graph={self.graph})"
        )


@dataclass(frozen=True)
class StepPlan:
    """The runner calls of one step, run in order; empty when there is nothing to do."""

    forwards: tuple[Forward, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.forwards)


@dataclass
class ForwardOutput:
    """A runner call's result: each row's arg-max token (what greedy requests take), and its
    logits `(rows, vocab)` on demand (sampling, penalties, banned tokens); `ms` as the engine's
    clock measured the call; `error` when it failed (its requests end with it)."""

    greedy: np.ndarray
    logits: Callable[[], np.ndarray]
    ms: float = 0.0
    error: str | None = None

    @classmethod
    def failed(cls, error: str) -> ForwardOutput:
        def no_logits() -> np.ndarray:
            raise RuntimeError(error)

        return cls(np.zeros(0, np.int64), no_logits, error=error)
