"""A deterministic runner for the scheduler's tests: no model, no export.

It keeps the token written at every position of every slot, as a real cache keeps its keys
and values, and a row's logits are a row of a seeded table chosen by a hash of everything
its slot holds up to the row's last position. So a request's tokens depend on its whole
prefix exactly as a model's would: a chunk written at the wrong position, a stale slot or a
row read from another slot changes them. Every call is recorded; each advances a
`FakeClock` by its cost from a table (`FakeCost`), so the scheduler's cost fit, timeouts
and latency figures run on a clock the test controls.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from engine.plan import COMPANION, MAIN, Forward, ForwardOutput, Phase, SlotCopy
from engine.runners.base import RunnerCaps
from engine.types import Status


def word_tokenizer(vocab: int = 64):
    """A real `tokenizers` tokenizer for the fake's ids: token `i` is the word `t<i>`, and
    text is the words joined by spaces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with a space
    return tok


class FakeClock:
    """Seconds, moved only by `advance` (and by the fake runner's calls)."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class FakeCost:
    """Milliseconds a call costs: a fixed part (a pass over the weights) plus a part per
    token; a decode call's tokens are its rows; a mixed call pays the decode pass and each
    row's tokens (a prompt's at the prefill rate)."""

    prefill_fixed: float = 10.0
    prefill_per_token: float = 1.0
    decode_fixed: float = 8.0
    decode_per_row: float = 0.5

    def ms(self, forward: Forward, padded: bool = False) -> float:
        """`padded`: a mixed call's prompt rows of different lengths are computed padded to
        the longest (`RunnerCaps.padded_prompts`)."""
        if forward.phase is Phase.PREFILL:
            return self.prefill_fixed + self.prefill_per_token * forward.ids.size
        if forward.phase is Phase.DECODE:
            return self.decode_fixed + self.decode_per_row * forward.rows
        prompt = int(forward.lens[forward.lens > 1].sum())
        rows = forward.lens[forward.decode_rows :]
        if padded and forward.decode_rows and (rows != rows.max()).any():
            prompt = len(rows) * int(rows.max())
        return (
            self.decode_fixed
            + self.decode_per_row * int((forward.lens == 1).sum())
            + self.prefill_per_token * prompt
        )


@dataclass(frozen=True)
class FakeCall:
    phase: Phase
    slots: tuple[int, ...]
    starts: tuple[int, ...]
    ids: tuple[tuple[int, ...], ...]
    graph: str
    at: float  # the clock when the call began
    real_rows: int = field(default=0)  # rows with a request (decode padding excluded)
    decode_rows: int = 0  # a mixed call's: its first rows are the decode rows


# what a padded prompt row writes past its end (`RunnerCaps.padded_prompts`): a token no
# prompt holds, so that reading it changes the logits
PADDING = -7


class FakeRunner:
    TABLE_ROWS = 4096

    def __init__(
        self,
        slots: int = 4,
        max_len: int = 64,
        vocab: int = 64,
        clock: FakeClock | None = None,
        cost: FakeCost | None = None,
        seed: int = 0,
        eos: int | None = None,
        companion: bool = False,
        mixed: bool = False,
        block_size: int = 0,
        blocks: int = 0,
        copies: bool = True,
        group_past: bool = False,
        block_tables: bool = True,
        mixed_slots: bool = False,
        padded_prompts: bool = False,
    ):
        """`block_size` > 0: a block runner of `blocks` blocks (default: `slots` x `max_len`
        worth) addressed through each call's block tables, or with `block_tables` False a slot
        runner whose memory is counted in blocks of `block_size` positions (ONNX Runtime's
        slots committed by use: `release_slot` wipes a slot); else a slot runner; a slot
        runner copies a slot's prefix into another where `copies` (as ONNX Runtime's on the
        CPU)."""
        self.info = {
            "n_layer": 1,
            "n_head": 1,
            "head_size": 1,
            "n_positions": max_len,
            "vocab_size": vocab,
            "eos_token_id": eos,
        }
        self.clock = clock or FakeClock()
        self.cost = cost or FakeCost()
        self.table = np.random.default_rng(seed).standard_normal((self.TABLE_ROWS, vocab)).astype(np.float32)
        self.block_size = block_size
        self.tables = bool(block_size) and block_tables
        if block_size:
            blocks = blocks or slots * -(-max_len // block_size)
        if self.tables:
            self.cache = np.full((blocks, block_size), -1, np.int64)  # the token at each position
        else:
            self.cache = np.full((slots, max_len), -1, np.int64)
        self.releases: list[int] = []  # the slots given back, in order
        # one logits buffer for every call, as the real runners bind theirs: a call's logits
        # are valid until the next call
        self._logits = np.zeros((2 * slots, vocab), np.float32)  # a mixed call: decode rows, then prompt rows
        self.calls: list[FakeCall] = []
        self.copies: list[SlotCopy] = []  # the slot copies made, in order
        self.fail_next: str | None = None  # the next call raises this (a device fault)
        self.caps = RunnerCaps(
            mixed=mixed,
            max_rows=slots,
            max_len=max_len,
            kv_dtype=np.dtype(np.int64),
            kv_bytes=self.cache.nbytes,
            device="cpu",
            graphs=(MAIN, COMPANION) if companion else (MAIN,),
            block_size=block_size,
            blocks=blocks if block_size else 0,
            copies=copies and not self.tables,
            group_past=group_past or self.tables,
            block_tables=block_tables,
            mixed_slots=mixed and mixed_slots,
            padded_prompts=mixed and mixed_slots and padded_prompts,
        )

    def describe(self) -> str:
        return f"fake runner: {self.caps.max_rows} slots x {self.caps.max_len} positions"

    def copy_slot(self, copy: SlotCopy) -> None:
        if not self.caps.copies:
            raise AssertionError("a slot copy planned for a runner that makes none")
        if copy.src == copy.dst or not 0 < copy.positions <= self.caps.max_len:
            raise AssertionError(f"bad slot copy {copy}")
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise RuntimeError(error)
        self.copies.append(copy)
        self.cache[copy.dst, : copy.positions] = self.cache[copy.src, : copy.positions]

    def release_slot(self, slot: int) -> None:
        if self.caps.cache_layout != "slots by use":
            raise AssertionError("a slot released by a runner whose slots are not committed by use")
        self.releases.append(slot)
        self.cache[slot] = -1  # what the operating system gives back reads as nothing

    def logits_of(self, prefix) -> np.ndarray:
        """The logits after `prefix` (token ids): what a solo reference computes."""
        data = np.asarray(prefix, np.int64).tobytes()
        return self.table[zlib.crc32(data) % self.TABLE_ROWS]

    def execute(self, forward: Forward) -> ForwardOutput:
        self._check(forward)
        self.calls.append(
            FakeCall(
                forward.phase,
                tuple(forward.slots),
                tuple(int(s) for s in forward.starts),
                tuple(tuple(int(t) for t in forward.row(i)) for i in range(forward.rows)),
                forward.graph,
                self.clock(),
                sum(1 for r in forward.requests if r is not None),
                forward.decode_rows,
            )
        )
        self.clock.advance(self.cost.ms(forward, self.caps.padded_prompts) / 1e3)
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise RuntimeError(error)
        logits = self._logits[: forward.rows]
        every = {}  # row -> each position's logits (the rows `forward.all_logits` names)
        prompts = forward.lens[forward.decode_rows :]
        padded = self.caps.padded_prompts and forward.phase is Phase.MIXED and (prompts != prompts[0]).any()
        padded_to = int(prompts.max()) if padded else 0
        for i, (slot, start) in enumerate(zip(forward.slots, forward.starts, strict=True)):
            ids = forward.row(i)
            if self.tables:  # position p lives in block table[p // size] at p % size
                table = forward.blocks[i]
                where = np.arange(start + len(ids))
                blocks, offsets = table[where // self.block_size], where % self.block_size
                self.cache[blocks[start:], offsets[start:]] = ids
                held = self.cache[blocks, offsets]
            else:
                self.cache[slot, start : start + len(ids)] = ids
                held = self.cache[slot, : start + len(ids)]
            logits[i] = self.logits_of(held)
            if padded_to and i >= forward.decode_rows:  # the padding lands past the row's end
                self.cache[slot, start + len(ids) : padded_to] = PADDING
            if i in forward.all_logits:
                every[i] = np.stack([self.logits_of(held[: start + j + 1]) for j in range(len(ids))])
        return ForwardOutput(logits.argmax(axis=1), lambda: logits, position_logits=every.__getitem__)

    def _check_mixed_slots(self, forward: Forward) -> None:
        """A slot runner's mixed call: its decode call's rows and its prefill call's, each as
        such a call must be (a prefilling slot may have a padding row in the decode part)."""
        if forward.phase is not Phase.MIXED or not 0 < forward.decode_rows < forward.rows:
            raise AssertionError(
                f"decode_rows {forward.decode_rows} in a {forward.phase.value} call of {forward.rows} rows"
            )
        n = forward.decode_rows
        parts = (
            (Phase.DECODE, slice(0, n), slice(0, n)),
            (Phase.PREFILL, slice(n, forward.rows), slice(int(forward.lens[:n].sum()), None)),
        )
        for phase, rows, ids in parts:
            self._check(
                Forward(
                    phase,
                    forward.slots[rows],
                    forward.ids[ids],
                    forward.lens[rows],
                    forward.starts[rows],
                    forward.requests[rows],
                    forward.graph,
                ),
                padded=self.caps.padded_prompts,
            )

    def _check(self, forward: Forward, padded: bool = False) -> None:
        """What the real runners need of a call (their kernels would misbehave silently)."""
        slots, starts = list(forward.slots), [int(s) for s in forward.starts]
        if forward.graph not in self.caps.graphs:
            raise AssertionError(f"call routed to graph {forward.graph!r}, runner has {self.caps.graphs}")
        if self.caps.mixed_slots and forward.phase is Phase.MIXED:  # a decode call's rows, a prefill call's
            self._check_mixed_slots(forward)
        elif len(slots) != len(set(slots)) or not all(0 <= s < self.caps.max_rows for s in slots):
            raise AssertionError(f"bad slots {slots}")
        if int(forward.lens.sum()) != len(forward.ids) or (forward.lens < 1).any():
            raise AssertionError(f"rows of {forward.lens.tolist()} tokens for {len(forward.ids)} ids")
        if any(s < 0 or s + n > self.caps.max_len for s, n in zip(starts, forward.lens, strict=True)):
            raise AssertionError(
                f"positions {starts} + {forward.lens.tolist()} outside the slot of {self.caps.max_len}"
            )
        # `padded`: a mixed call's prompt rows at position 0 may differ in length (and write to
        # the longest)
        padded_rows = padded and forward.phase is Phase.PREFILL and not any(starts)
        if self.block_size and not self.tables:  # slots by use: a row writes what its request holds
            written = np.full_like(forward.lens, forward.lens.max()) if padded_rows else forward.lens
            for r, s, n in zip(forward.requests, starts, written, strict=True):
                if r is not None and len(r.blocks) * self.block_size < s + n:
                    raise AssertionError(
                        f"a row writes positions {s}..{s + n - 1} holding {len(r.blocks)} blocks of {self.block_size}"
                    )
        if self.tables:
            if forward.blocks is None or len(forward.blocks) != forward.rows:
                raise AssertionError("a block runner's call without a block table per row")
            for table, s, n in zip(forward.blocks, starts, forward.lens, strict=True):
                if len(table) * self.block_size < s + n or len(set(table.tolist())) != len(table):
                    raise AssertionError(f"table {table.tolist()} does not cover positions {s}..{s + n - 1}")
            # rows may share blocks they only read (a cached prefix), never one a row writes
            size = self.block_size
            written = [
                b
                for table, s, n in zip(forward.blocks, starts, forward.lens, strict=True)
                for b in table[s // size : -(-(s + n) // size)].tolist()
            ]
            read = [b for table in forward.blocks for b in table.tolist()]
            shared = {b for b in read if read.count(b) > 1}
            if len(written) != len(set(written)) or shared & set(written):
                raise AssertionError(
                    f"rows write blocks another row holds: {[t.tolist() for t in forward.blocks]}"
                )
            if not all(0 <= b < self.caps.blocks for b in read):
                raise AssertionError(f"blocks outside the pool of {self.caps.blocks}: {read}")
        if forward.phase is Phase.MIXED:
            if not self.caps.mixed:
                raise AssertionError("a mixed call to a runner that takes one phase a call")
            decoding = [
                i for i, r in enumerate(forward.requests) if r is not None and r.status is Status.DECODING
            ]
            if decoding and max(decoding) >= forward.decode_rows:
                raise AssertionError(
                    f"decoding rows {decoding} past the call's {forward.decode_rows} decode rows"
                )
            return
        t = int(forward.lens[0])
        if (forward.lens != t).any() and not padded_rows:
            raise AssertionError(f"a {forward.phase.value} call with rows of {forward.lens.tolist()} tokens")
        if forward.phase is Phase.DECODE and self.tables:
            if t != 1:
                raise AssertionError(f"a decode call with {t} tokens a row")
        elif forward.phase is Phase.DECODE:
            if t != 1 or slots != list(range(len(slots))):
                raise AssertionError(f"a decode call covers slots 0..n-1 with one token each, got {slots}")
        elif self.tables:
            return  # prefill rows read their own tables: any slots, any starts
        elif len(set(starts)) != 1 or slots != list(range(slots[0], slots[0] + len(slots))):
            raise AssertionError(f"a prefill call takes consecutive slots at one start, got {slots} {starts}")
        elif len(slots) > 1 and t > 1 and starts[0] > 0 and not self.caps.group_past:
            raise AssertionError(f"a prefill call of {len(slots)} rows past position 0 ({starts[0]})")
