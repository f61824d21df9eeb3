"""What one engine step does, as plain data: the scheduler's plan (`StepPlan`: one or more
runner calls, `Forward`), and what a runner call returns (`ForwardOutput`).

A `Forward` is rows of token ids, each written into the KV cache of its slot from its start
position. A prefill row carries a chunk of a prompt; a decode row one token. A runner that
takes both in one call (`RunnerCaps.mixed`) gets one `MIXED` call a step: every decoding
request's row and the step's prompt chunk, over one pass of the weights. A runner that
cannot mix them gets calls of one phase each; a prefill call's rows are consecutive slots
with one start and one length, and a decode call covers slots `0..n-1` (a slot with nothing
to decode gets a padding row: `requests[i]` None, written where its next real token will be
written, so it disturbs nothing). A slot runner that mixes them (`RunnerCaps.mixed_slots`)
gets the two calls' rows in one: the decode call's `decode_rows` rows first, then the
prefill call's; where it pads prompts (`RunnerCaps.padded_prompts`), that prefill call's
rows may be of different lengths at position 0.
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
    MIXED = "mixed"  # decode rows and prompt chunks in one call


@dataclass(frozen=True, eq=False)
class Forward:
    """One runner call. Row `i`: its `lens[i]` token ids (`row(i)`; all rows' ids one after
    another in `ids`) written into slot `slots[i]` at positions `starts[i]..`; its request
    (None: a padding row); the logits of each row's last position come back."""

    phase: Phase
    slots: tuple[int, ...]
    ids: np.ndarray  # (sum of lens,) int64
    lens: np.ndarray  # (rows,) int64
    starts: np.ndarray  # (rows,) int64
    requests: tuple[Request | None, ...]
    graph: str = MAIN
    # a block runner: each row's block table (the blocks holding its positions, in order)
    blocks: tuple[np.ndarray, ...] | None = None
    # rows whose every position's logits come back too (prompt log-probabilities)
    all_logits: tuple[int, ...] = ()
    # a MIXED call: its first `decode_rows` rows are the decode rows, the rest prompt chunks;
    # a slot runner's (`RunnerCaps.mixed_slots`) are a decode call's (slots 0..n-1, padding
    # rows included) and a prefill call's
    decode_rows: int = 0

    @classmethod
    def rectangle(cls, phase: Phase, slots, ids: np.ndarray, starts, requests, graph: str = MAIN) -> Forward:
        """A call whose rows all hold `ids.shape[1]` tokens (`ids`: (rows, tokens))."""
        rows, t = ids.shape
        return cls(
            phase,
            tuple(slots),
            np.ascontiguousarray(ids, np.int64).reshape(-1),
            np.full(rows, t, np.int64),
            np.asarray(starts, np.int64),
            tuple(requests),
            graph,
        )

    @property
    def rows(self) -> int:
        return len(self.slots)

    @property
    def tokens(self) -> int:
        """Tokens of real rows (what the call is worth)."""
        return int(sum(n for n, r in zip(self.lens, self.requests, strict=True) if r is not None))

    def row(self, i: int) -> np.ndarray:
        begin = int(self.lens[:i].sum())
        return self.ids[begin : begin + int(self.lens[i])]

    def matrix(self) -> np.ndarray:
        """The ids as (rows, tokens), for a call whose rows are all one length."""
        if len(set(self.lens.tolist())) > 1:
            raise ValueError(f"rows of {sorted(set(self.lens.tolist()))} tokens are not a matrix")
        return self.ids.reshape(self.rows, -1)

    def __repr__(self) -> str:
        return (
            f"Forward({self.phase.value}, slots={list(self.slots)}, starts={self.starts.tolist()}, "
            f"lens={self.lens.tolist()}, graph={self.graph}"
            + (f", decode_rows={self.decode_rows})" if self.decode_rows else ")")
        )


@dataclass(frozen=True)
class SlotCopy:
    """Copy the cache's first `positions` of slot `src` into slot `dst` (a slot runner's
    prefix reuse: a prompt that starts as another slot's does reads those positions, not
    computes them)."""

    src: int
    dst: int
    positions: int


@dataclass(frozen=True)
class StepPlan:
    """The runner calls of one step, run in order, after its slot copies; empty when there is
    nothing to do. `releases`: slots whose pages go back to the operating system first (a
    slot runner committed by use: requests that ended or were preempted)."""

    forwards: tuple[Forward, ...] = ()
    copies: tuple[SlotCopy, ...] = ()
    releases: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.forwards)


@dataclass
class ForwardOutput:
    """A runner call's result: each row's arg-max token (what greedy requests take), and its
    logits `(rows, vocab)` on demand (sampling, penalties, banned tokens, log-probabilities);
    `ms` as the engine's clock measured the call; `error` when it failed (its requests end
    with it); `position_logits` for the rows the call asked every position's logits of."""

    greedy: np.ndarray
    logits: Callable[[], np.ndarray]
    ms: float = 0.0
    error: str | None = None
    # row i of `Forward.all_logits` -> its (lens[i], vocab) logits, every position
    position_logits: Callable[[int], np.ndarray] | None = None

    @classmethod
    def failed(cls, error: str) -> ForwardOutput:
        def no_logits() -> np.ndarray:
            raise RuntimeError(error)

        return cls(np.zeros(0, np.int64), no_logits, error=error)
