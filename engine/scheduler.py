"""The scheduler: which requests run, and what each step does.

It owns the queues (waiting, running, cancelled, all changed under one lock: Triton's
threads submit, cancel and read them while the generation thread steps), the KV slots
(`SlotPool`) and the runner's measured speed (`CostFit`, `Ema`). `schedule()` returns the
step as data (`StepPlan`); `update(forward, output)` advances the requests of each of its
runner calls by what the runner returned, ends the finished ones and frees their slots.

A step: end cancelled and late requests; admit waiting ones into free slots; prefill one
chunk of the oldest prompt (with the prompts that arrived with it in the next slots), a
chunk small enough while others decode that a long prompt does not stall them; one decode
row for every decoding request. A request whose prompt completes in a step takes its first
token from the prefill and decodes from the next step.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from engine import logprobs
from engine.config import EngineConfig
from engine.cost import CostFit, Ema
from engine.kv import BlockPool, SlotPool, block_hashes
from engine.metrics import EngineStats
from engine.output import OutputProcessor
from engine.plan import COMPANION, MAIN, Forward, ForwardOutput, Phase, SlotCopy, StepPlan
from engine.runners.base import RunnerCaps
from engine.types import FinishReason, QueueFullError, Request, Sink, Status

logger = logging.getLogger(__name__)

# A slot runner reuses a prefix from another slot from this many tokens on (a shorter one
# saves less than it costs to copy, and would split prompts that arrive together).
MIN_SHARED_PREFIX = 16
# A slot runner's decode call covers slots 0..n-1: a free slot below a decoding one is a
# padding row computed every step. When one has stayed free this many steps with nothing
# waiting (an arrival would take it), the highest decoding row moves down into it (its
# cache copied), if it has more tokens than that left to generate. A free slot that keeps
# an ended request's tokens for reuse (prefix caching) gives them up for it only after
# COMPACT_KEPT_AFTER_STEPS: a padding row costs every step, a kept prefix pays only when a
# later prompt shares it.
COMPACT_AFTER_STEPS = 4
COMPACT_KEPT_AFTER_STEPS = 64


def shared_prefix(seq, ids, limit: int) -> int:
    """How many leading tokens `seq` and `ids` share, at most `limit`."""
    n = min(len(seq), limit)
    if n <= 0 or seq[0] != ids[0]:
        return 0
    diff = np.flatnonzero(np.asarray(seq[:n]) != np.asarray(ids[:n]))
    return int(diff[0]) if diff.size else n


def cached_tokens(req: Request) -> list[int]:
    """The tokens whose keys and values `req`'s slot holds: its prompt (or what it recomputes)
    and its output but the last token, as far as it has filled."""
    return (req.prompt_ids + req.tokens)[: req.filled]


def _with_all_logits(forward: Forward) -> Forward:
    """`forward` asking every position's logits of the prompt rows whose requests want
    prompt log-probabilities."""
    rows = tuple(
        i
        for i, r in enumerate(forward.requests)
        if r is not None and r.status is Status.PREFILLING and r.wants_prompt_logprobs
    )
    return replace(forward, all_logits=rows) if rows else forward


# a call's prompt rows padded to the longest hold at most this x their real tokens
PADDING_LIMIT = 2.0


def share_of(prefilling: int, decoding: int) -> float:
    """How many decode steps' worth a chunk may cost: one, or more when more prompts wait
    per decoding stream (each request gets a like share of the machine)."""
    return max(1.0, prefilling / decoding)


class Scheduler:
    def __init__(
        self,
        config: EngineConfig,
        caps: RunnerCaps,
        output: OutputProcessor,
        stats: EngineStats,
        sink: Sink,
        clock: Callable[[], float],
    ):
        self.config, self.output, self.stats, self.sink, self.clock = config, output, stats, sink, clock
        self.pool = SlotPool(caps.max_rows)
        self.mixed = caps.mixed  # the runner takes a step's decode rows and prompt chunk in one call
        # ... as a decode call's rows, then a prefill call's
        self.mixed_slots = caps.mixed and caps.mixed_slots
        # ... whose prompt rows at position 0 may differ in length (`padded_group`)
        self.pads_prompts = self.mixed_slots and caps.padded_prompts
        self.group_past = caps.group_past  # a prefill call of several rows may start past position 0
        # the cache's memory in blocks taken by use (None: a slot holds its whole row): a block
        # runner's blocks, read through each row's table (`tables`), or the pages of a slot
        # runner committed by use (rows are slots; an ended request's pages go back)
        self.kv_blocks = BlockPool(caps.blocks, caps.block_size) if caps.block_size else None
        self.tables = bool(caps.block_size) and caps.block_tables
        self.prefix_caching = self.tables and config.prefix_caching
        # a slot runner: a prompt starts from the longest prefix it shares with what a free
        # slot's last request left there, or a running request's slot (copied, `caps.copies`)
        self.slot_reuse = not self.tables and config.prefix_caching
        self.copies = caps.copies
        self.compact = config.compact_rows and self.copies and not self.tables  # `_compact`
        self.max_len = caps.max_len
        self.retained: dict[int, list[int]] = {}  # free slot -> the tokens its cache still holds
        # slots by use: free slot -> the blocks its kept tokens hold (oldest ended first; the
        # first given back when the pool runs short), and the slots whose pages go back to
        # the operating system at the next step (`StepPlan.releases`)
        self.kept_blocks: dict[int, list[int]] = {}
        self._releases: list[int] = []
        self._releases_next: list[int] = []  # ... at the step after this one (a row moved out)
        self.steps = 0  # schedule() calls so far
        self.freed_at: dict[int, int] = {}  # slot -> the step it was freed at
        self.padded: set[int] = set()  # free slots a decode call's padding row has written
        self.running: list[Request] = []  # holding a slot, in admission order
        self._waiting: collections.deque[Request] = collections.deque()
        self._cancelled: list[Request] = []  # the objects, not ids: an id can be reused
        self.lock = threading.Lock()
        self.prefill_cost = CostFit()  # a prefill call alone
        self.step_cost = CostFit()  # any call but a prefill alone, by the tokens it computes
        self.decode_ms = Ema()
        self.decoded_alone = 0  # rows of the last decode call that had no prompt in it
        self.bursting = False  # a burst of short prompts is going in (`burst`)
        pair = COMPANION in caps.graphs
        self.prefill_graph = COMPANION if pair and config.companion_prefill else MAIN
        self.companion_from_rows = config.companion_from_rows if pair else 0

    # -- requests in (any thread) ----------------------------------------------------------
    def add(self, req: Request) -> None:
        """Queue `req`; QueueFullError when every slot is busy and `max_queue` requests already
        wait: the running ones are not disturbed."""
        with self.lock:
            if len(self._waiting) >= self.pool.free + self.config.max_queue:
                raise QueueFullError(
                    f"server busy: all {self.pool.total} KV slots in use and {len(self._waiting)} requests "
                    f"waiting (max_queue {self.config.max_queue}); retry later"
                )
            self._waiting.append(req)

    def cancel(self, req: Request) -> None:
        with self.lock:
            self._cancelled.append(req)

    def requests(self) -> list[Request]:
        """Every unfinished request: running ones, then waiting ones."""
        with self.lock:
            return [*self.running, *self._waiting]

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def free_slots(self) -> int:
        return self.pool.free

    def has_work(self) -> bool:
        return bool(self.running or self._waiting)

    # -- plan ------------------------------------------------------------------------------
    def schedule(self) -> StepPlan:
        self.steps += 1
        self._end_cancelled_and_late()
        copies = self._admit()
        with self.lock:
            running = list(self.running)
        decoding = [r for r in running if r.status is Status.DECODING]
        preempted = self.stats.preemptions
        if self.kv_blocks is not None:
            decoding = self._grow_decoding(decoding)
            with self.lock:
                running = list(self.running)
        if self.compact and decoding:
            copies += self._compact(decoding)
        # a step that had to preempt starts no prompt: it would take the blocks back at once
        prefilling = [
            r for r in running if r.status is Status.PREFILLING and self.stats.preemptions == preempted
        ]
        if prefilling and self.slot_reuse and self.copies:
            copies += self._catch_up(running, prefilling, reserve=len(decoding))
            prefilling = self._not_following(prefilling)
        forwards = []
        written = {}  # request -> prompt tokens this step's prefill writes
        group, chunk = [], 0
        if not (prefilling and decoding):
            self.bursting = False
        if prefilling:
            budget = self.chunk_tokens(len(prefilling), len(decoding)) if decoding else None
            if decoding and self.mixed:
                # the prompt with the fewest tokens left first (a short request does not wait
                # behind a document going in a little each step; one begun goes on before
                # a like one arrived after it)
                prefilling.sort(key=lambda r: r.prompt_left)
            bulk = bool(budget) and self.burst(prefilling, len(decoding))
            if not budget or bulk:
                budget = self.config.idle_prefill_chunk
            padded = self.padded_group(prefilling, budget) if self.pads_prompts and decoding else None
            if bulk and self.tables:  # rows of any length: the burst's prompts whatever theirs
                group = self.whole_prompts(prefilling, budget)
                chunk = max(r.prompt_left for r in group)
            elif padded:  # whole prompts in rows padded to the longest
                group = padded
                chunk = max(r.prompt_left for r in group)
            else:
                group = self.prefill_group(prefilling, budget)
                chunk = min(budget // len(group), group[0].prompt_left)
            if self.kv_blocks is not None:
                group = self._grow_prefilling(group, chunk, reserve=len(decoding), padded=bool(padded))
            written = {id(r): min(chunk, r.prompt_left) for r in group}
        if self.kv_blocks is not None and not self.tables:
            self._settle_padding(max((r.slot for r in decoding), default=-1) + 1)
        with self.lock:
            releases, self._releases, self._releases_next = tuple(self._releases), self._releases_next, []
        copies = tuple(copies)
        if group and decoding and self.mixed and not self.mixed_slots:
            forward = replace(
                self._rows_forward(Phase.MIXED, decoding + group, chunk), decode_rows=len(decoding)
            )
            return StepPlan((forward,), copies, releases)
        if group and self.tables:
            forwards.append(self._rows_forward(Phase.PREFILL, group, chunk))
        elif group:  # consecutive slots: one start and one length, or padded rows at position 0
            pieces = [r.prefill_ids[r.filled : r.filled + written[id(r)]] for r in group]
            forward = Forward(
                Phase.PREFILL,
                tuple(r.slot for r in group),
                np.asarray([t for piece in pieces for t in piece], np.int64),
                np.asarray([len(p) for p in pieces], np.int64),
                np.asarray([r.filled for r in group], np.int64),
                tuple(group),
                self.prefill_graph,
            )
            forwards.append(_with_all_logits(forward))
        if decoding and self.mixed_slots and forwards and not forwards[0].all_logits:
            # one call: the decode call's rows, then the prefill call's (a prompt that wants
            # every position's logits goes in a prefill call of its own)
            decode = self._decode_forward(running, decoding, written)
            prefill = forwards[0]
            mixed = Forward(
                Phase.MIXED,
                decode.slots + prefill.slots,
                np.concatenate([decode.ids, prefill.ids]),
                np.concatenate([decode.lens, prefill.lens]),
                np.concatenate([decode.starts, prefill.starts]),
                decode.requests + prefill.requests,
                self.prefill_graph,
                decode_rows=decode.rows,
            )
            return StepPlan((mixed,), copies, releases)
        if decoding and self.tables:
            forwards.append(self._rows_forward(Phase.DECODE, decoding, 0))
        elif decoding:
            forwards.append(self._decode_forward(running, decoding, written))
        return StepPlan(tuple(forwards), copies, releases)

    def _rows_forward(self, phase: Phase, rows: list[Request], chunk: int) -> Forward:
        """A call of any rows, no padding: each decoding request's next token, each prefilling
        one's chunk; a block runner's rows carry their block tables."""
        pieces = [
            [r.next_token] if r.status is Status.DECODING else r.prefill_ids[r.filled : r.filled + chunk]
            for r in rows
        ]
        tables = None
        if self.tables:
            size = self.kv_blocks.block_size
            tables = tuple(
                np.asarray(r.blocks[: -(-(r.filled + len(p)) // size)], np.int32)
                for r, p in zip(rows, pieces, strict=True)
            )
        return _with_all_logits(
            Forward(
                phase,
                tuple(r.slot for r in rows),
                np.asarray([t for piece in pieces for t in piece], np.int64),
                np.asarray([len(p) for p in pieces], np.int64),
                np.asarray([r.filled for r in rows], np.int64),
                tuple(rows),
                blocks=tables,
            )
        )

    def _decode_forward(self, running: list[Request], decoding: list[Request], written: dict) -> Forward:
        n = max(r.slot for r in decoding) + 1  # rows are slots 0..n-1
        tokens = np.zeros(n, np.int64)
        starts = np.zeros(n, np.int64)
        requests: list[Request | None] = [None] * n
        for r in running:  # a prefilling slot's padding row writes where its next token will
            if r.slot < n:
                starts[r.slot] = r.filled + written.get(id(r), 0)
        for slot, kept in self.retained.items():  # a free slot's: past what it keeps for reuse
            if slot < n:
                if len(kept) >= self.max_len:
                    del kept[self.max_len - 1 :]
                starts[slot] = len(kept)
        for r in decoding:
            tokens[r.slot] = r.next_token
            requests[r.slot] = r
        graph = COMPANION if self.companion_from_rows and n >= self.companion_from_rows else MAIN
        return Forward.rectangle(Phase.DECODE, range(n), tokens[:, None], starts, requests, graph)

    def chunk_tokens(self, prefilling: int, decoding: int) -> int:
        """Prompt tokens for this step's chunk while others decode: at most `prefill_chunk`,
        and a chunk measured to cost `prefill_budget` decode steps (`mixed_prefill_budget`
        where it rides in the decode call: its tokens at what a prompt token costs, as the
        prefill calls' fit says, else the other calls'), scaled by how many
        prompts wait per decoding stream (each request gets a like share of the machine:
        a few running streams are not stalled by one long prompt, and one running stream
        does not starve seven prompts that arrived together)."""
        limit = self.config.prefill_chunk
        budget = self.config.mixed_prefill_budget if self.mixed else self.config.prefill_budget
        if not budget or self.decode_ms.value is None:
            return limit
        budget_ms = budget * share_of(prefilling, decoding) * self.decode_ms.value
        if self.mixed:  # the chunk rides on the decode call: only its tokens count
            fit = self.prefill_cost.marginal_tokens(budget_ms) or self.step_cost.marginal_tokens(budget_ms)
        else:
            fit = self.prefill_cost.tokens_within(budget_ms)
        return limit if fit is None else max(1, min(limit, fit))

    def burst(self, prefilling: list[Request], decoding: int) -> bool:
        """Whether the prompts waiting are a burst of short ones that go in whole, as if
        nothing decoded (`waiting_served_ratio`): prompts within one chunk (`prefill_chunk`)
        of their end, the first in line among them, at least two and `waiting_served_ratio`
        or more per decoding stream. Once begun, a burst goes on while two or more such
        prompts wait (those arriving meanwhile among them): a burst's prompts reach the
        engine over several steps, and as its first ones start decoding the rest fall below
        the ratio. A long prompt is never taken this way: it would stall the running streams
        for its whole prefill."""
        ratio, short = self.config.waiting_served_ratio, self.config.prefill_chunk
        waiting = sum(1 for r in prefilling if r.prompt_left <= short)
        self.bursting = (
            bool(ratio)
            and prefilling[0].prompt_left <= short
            and waiting >= 2
            and (self.bursting or waiting >= ratio * decoding)
        )
        return self.bursting

    def whole_prompts(self, prefilling: list[Request], budget: int) -> list[Request]:
        """A burst's prompts for a runner whose rows may be of any length (a block runner's):
        those within one chunk of their end, fewest tokens left first, each whole, while
        their tokens fit `budget` (the first always)."""
        group, total = [], 0
        for req in sorted(prefilling, key=lambda r: r.prompt_left):
            if req.prompt_left > self.config.prefill_chunk or (group and total + req.prompt_left > budget):
                break
            group.append(req)
            total += req.prompt_left
        return group

    def padded_group(self, prefilling: list[Request], budget: int) -> list[Request] | None:
        """Prompts that go in whole in one call beside the decode rows, their rows padded on
        the right to the longest (`RunnerCaps.padded_prompts`): the first in line and the
        prompts in the slots next to it (the neighbour nearest its length first), each at
        position 0, within one chunk (`prefill_chunk`) of its end and not asking for prompt
        log-probabilities, while the padded rows fit `budget` and hold at most
        `PADDING_LIMIT` x their real tokens; in slot order. None where fewer than two go.
        Without it prompts of different lengths go in one a step (the rows of a slot
        runner's prefill call share one length): a burst of 60 such prompts behind four
        streams then takes 60 steps to start."""
        limit = min(budget, self.config.prefill_chunk)

        def whole(r: Request) -> bool:
            return r.filled == 0 and r.prompt_left <= limit and not r.wants_prompt_logprobs

        head = prefilling[0]
        if not whole(head):
            return None
        by_slot = {r.slot: r for r in prefilling if whole(r)}
        group = {head.slot: head}
        longest = tokens = head.prompt_left
        while True:
            ends = (max(group) + 1, min(group) - 1)
            options = sorted(
                (r for r in map(by_slot.get, ends) if r is not None),
                key=lambda r: abs(r.prompt_left - longest),
            )
            for r in options:
                padded = (len(group) + 1) * max(longest, r.prompt_left)
                if padded <= budget and padded <= PADDING_LIMIT * (tokens + r.prompt_left):
                    group[r.slot] = r
                    longest, tokens = max(longest, r.prompt_left), tokens + r.prompt_left
                    break
            else:
                break
        return [group[s] for s in sorted(group)] if len(group) > 1 else None

    def prefill_group(self, prefilling: list[Request], budget: int) -> list[Request]:
        """The oldest prefilling request, with those that can share its call: next slots, the
        same prompt progress and length (requests that arrived together), within `budget`
        prompt tokens; alone where its chunk starts past position 0 of a runner that takes
        one row then."""
        head = prefilling[0]
        by_slot = {r.slot: r for r in prefilling}
        group = [head]
        chunk = min(budget, head.prompt_left)
        if head.filled and chunk > 1 and not self.group_past:
            return group
        while (len(group) + 1) * chunk <= budget:
            nxt = by_slot.get(group[-1].slot + 1)
            if nxt is None or nxt.filled != head.filled or len(nxt.prefill_ids) != len(head.prefill_ids):
                break
            group.append(nxt)
        return group

    # -- blocks (a block runner) -------------------------------------------------------------
    def _grow_decoding(self, decoding: list[Request]) -> list[Request]:
        """A block for each decoding request's next position where it has none, oldest first;
        when the pool runs out, the newest running request is preempted (its blocks freed,
        recomputed later) until the older ones fit. The requests still decoding."""
        kept = []
        for req in decoding:
            while req.status is Status.DECODING:
                got = self._take(self.kv_blocks.needed(len(req.blocks), req.filled + 1))
                if got is not None:
                    req.blocks += got
                    kept.append(req)
                    break
                with self.lock:
                    victim = self.running[-1]
                self._preempt(victim)
        return kept

    def _take(self, n: int, reserve: int = 0) -> list[int] | None:
        """`n` blocks leaving `reserve` free, giving back what free slots keep (the oldest
        first) where the pool is short; None when that is not enough."""
        while self.kv_blocks.free - n < reserve and self.kept_blocks:
            self._forget_kept(next(iter(self.kept_blocks)))
        return self.kv_blocks.take(n) if self.kv_blocks.free - n >= reserve else None

    def take_releases(self) -> tuple[int, ...]:
        """The slots whose pages can go back now, between two steps (the requests that ended
        in the step just run); those of a row moved this step wait for the next plan."""
        with self.lock:
            out, self._releases = tuple(self._releases), []
        return out

    def _forget_kept(self, slot: int) -> None:
        """Free slot `slot` keeps nothing for reuse any more; its pages go back."""
        with self.lock:
            self.retained.pop(slot, None)
            blocks = self.kept_blocks.pop(slot, None)
            if blocks is not None:
                self.kv_blocks.give_back(blocks)
                self._releases.append(slot)

    def _grow_prefilling(
        self, group: list[Request], chunk: int, reserve: int, padded: bool = False
    ) -> list[Request]:
        """Blocks for the chunk of each request of `group` (in order; those taken are a
        leading part of it), leaving `reserve` free (a block for each decoding stream's
        growth); `padded`: each row's padding to `chunk` positions too (it is written). A
        prompt waits for blocks rather than preempting a running stream, but a newer prompt
        gives up its blocks to the oldest one when nothing else would free any."""
        kept = []
        for req in group:
            while True:
                end = req.filled + (chunk if padded else min(chunk, req.prompt_left))
                need = self.kv_blocks.needed(len(req.blocks), end)
                got = self._take(need, reserve)
                if got is not None:
                    req.blocks += got
                    kept.append(req)
                    break
                with self.lock:
                    newer = [r for r in self.running[self.running.index(req) + 1 :] if r.blocks]
                    decoding = any(r.status is Status.DECODING for r in self.running)
                if kept or decoding or not newer:
                    return kept
                self._preempt(newer[-1])
        return kept

    def _preempt(self, req: Request) -> None:
        """Free `req`'s slot and blocks and queue it first: it starts again from a prefill of
        everything it had (recompute preemption); its output so far stays."""
        with self.lock:
            self.running.remove(req)
            self._free_slot(req.slot)
            self.kv_blocks.give_back(req.blocks)
            if not self.tables:
                self._releases.append(req.slot)
            req.blocks, req.slot, req.filled, req.status = [], -1, 0, Status.WAITING
            req.block_hashes, req.registered = [], 0
            req.recompute = req.prompt_ids + req.tokens[:-1] if req.tokens else None
            self._waiting.appendleft(req)
        self.stats.preemptions += 1

    def kv_usage(self) -> float:
        """The share of the cache in use: blocks for a block runner, else slots."""
        if self.kv_blocks is not None:  # what free slots keep for reuse is evictable, as cached blocks are
            with self.lock:  # the metrics thread asks while the generation thread steps
                kept = sum(len(b) for b in self.kept_blocks.values())
            return 1.0 - (self.kv_blocks.free + kept) / self.kv_blocks.total
        return 1.0 - self.pool.free / self.pool.total

    def _admit(self) -> list[SlotCopy]:
        """Waiting requests into free slots; the slot copies their prefixes need."""
        copies = []
        with self.lock:
            while self._waiting and self.pool.free:
                req = self._waiting.popleft()
                req.status, req.filled = Status.PREFILLING, 0
                if self.slot_reuse:
                    copy = self._reuse_slot(req)
                    if copy is not None:
                        copies.append(copy)
                else:
                    req.slot = self.pool.acquire()
                if self.prefix_caching:
                    self._reuse_prefix(req)
                self.running.append(req)
        return copies

    def _free_slot(self, slot: int) -> None:
        """Slot `slot` back to the pool, noting the step (under the lock)."""
        self.pool.release(slot)
        self.freed_at[slot] = self.steps

    def _free_below(self, rows: int) -> bool:
        """Some slot below `rows` is free (under the lock)."""
        return sum(r.slot < rows for r in self.running) < rows

    def _settle_padding(self, rows: int) -> None:
        """Slots by use: a free slot below this step's decode `rows` is a padding row, which
        commits the page it writes; once the call no longer covers it (and no request took
        it), that page goes back too."""
        with self.lock:
            if not self.padded and not self._free_below(rows):
                return  # no free slot in the call, none written before (the usual case)
            free = set(self.pool.free_slots())
            for slot in sorted(self.padded):
                if slot not in free or slot in self.retained:  # a request holds it now
                    self.padded.discard(slot)
                elif slot >= rows:
                    self.padded.discard(slot)
                    self._releases.append(slot)
            self.padded.update(s for s in range(rows) if s in free and s not in self.retained)

    def _compact(self, decoding: list[Request]) -> list[SlotCopy]:
        """Move the highest decoding rows down into the free slots below them that have stayed
        free `COMPACT_AFTER_STEPS` steps while nothing waits: the copies that do it. A moved
        request keeps its blocks; its old slot's pages go back after the copy has read them."""
        top = max(r.slot for r in decoding)
        with self.lock:
            # no free slot below the highest row (the usual case): nothing to move
            if self._waiting or not self._free_below(top + 1):
                return []
            free = {
                s: self.steps - self.freed_at.get(s, -COMPACT_KEPT_AFTER_STEPS)
                for s in self.pool.free_slots()
            }
            # those that keep nothing first, then those whose kept tokens nobody has read long
            settled = sorted(
                s for s, idle in free.items() if idle >= COMPACT_AFTER_STEPS and s not in self.retained
            )
            settled += sorted(
                s for s, idle in free.items() if idle >= COMPACT_KEPT_AFTER_STEPS and s in self.retained
            )
        moves = []
        for req in sorted(decoding, key=lambda r: r.slot, reverse=True):
            below = [s for s in settled if s < req.slot]
            if not below:
                break
            if req.params.max_tokens - req.generated <= COMPACT_AFTER_STEPS:
                break  # it ends soon; moving a lower row would not shorten the call
            dst = below[0]
            settled.remove(dst)
            self._forget_kept(dst)  # what it kept for reuse: its pages go back before the copy
            with self.lock:
                self.pool.acquire(dst)
                self._free_slot(req.slot)
                if self.kv_blocks is not None:
                    self._releases_next.append(req.slot)
                moves.append(SlotCopy(req.slot, dst, req.filled))
                req.slot = dst
            self.stats.rows_moved += 1
        return moves

    def _reuse_slot(self, req: Request) -> SlotCopy | None:
        """Take a slot for `req` (under the lock): the free one whose kept tokens share the
        longest prefix with its prompt, where that is at least MIN_SHARED_PREFIX tokens and no
        running slot shares more (then copied from there, where the runner copies); else the
        lowest free slot. At least one prompt token is left to compute (its logits give the
        first token); prompt log-probabilities need every position computed."""
        ids = req.prefill_ids
        limit = len(ids) - 1
        best = (0, None, False)  # (tokens, slot, a running request's)
        if not req.wants_prompt_logprobs and limit >= MIN_SHARED_PREFIX:
            for slot in self.pool.free_slots():
                n = shared_prefix(self.retained.get(slot, ()), ids, limit)
                if n > best[0]:
                    best = (n, slot, False)
            for r in self.running if self.copies else ():
                if r.filled <= best[0] or r.prompt_ids[0] != ids[0]:
                    continue  # cannot share more: its token list is not built
                n = shared_prefix(cached_tokens(r), ids, limit)
                if n > best[0]:
                    best = (n, r.slot, True)
            self.stats.prefix_queries += len(ids)
        n, slot, running = best
        copy = None
        if n < MIN_SHARED_PREFIX:
            req.slot = self.pool.acquire()
        elif running:
            req.slot = self.pool.acquire()
            copy = SlotCopy(slot, req.slot, n)
        else:
            req.slot = self.pool.acquire(slot)
        req.filled = n if n >= MIN_SHARED_PREFIX else 0
        self.stats.prefix_hits += req.filled
        self.retained.pop(req.slot, None)
        # slots by use: the pages the slot's kept tokens hold are now this request's
        req.blocks = self.kept_blocks.pop(req.slot, [])
        return copy

    def _catch_up(self, running: list[Request], prefilling: list[Request], reserve: int) -> list[SlotCopy]:
        """Prompts going in whose next tokens another running request's slot already holds
        (prompts that arrived together and share a prefix: a system prompt, one document
        asked about several times): that prefix is copied from its slot, where it is at
        least MIN_SHARED_PREFIX tokens more than the prompt has and the other has computed
        all they share, rather than computed. At least one prompt token is left to compute
        (its logits give the first token)."""
        copies = []
        for req in prefilling:
            ids = req.prefill_ids
            limit = len(ids) - 1
            if req.wants_prompt_logprobs or limit - req.filled < MIN_SHARED_PREFIX:
                continue
            best, src = req.filled + MIN_SHARED_PREFIX - 1, None
            for r in running:
                if r is req or r.filled <= best or r.prompt_ids[0] != ids[0]:
                    continue
                n = shared_prefix(cached_tokens(r), ids, limit)
                if r.status is Status.PREFILLING and shared_prefix(r.prefill_ids, ids, limit) > n:
                    continue  # it is still computing what they share: copied once it has
                if n > best:
                    best, src = n, r
            if src is None:
                continue
            if self.kv_blocks is not None:  # slots by use: the pages the copied positions take
                got = self._take(self.kv_blocks.needed(len(req.blocks), best), reserve)
                if got is None:
                    continue
                req.blocks += got
            copies.append(SlotCopy(src.slot, req.slot, best))
            self.stats.prefix_hits += best - req.filled
            req.filled = best
        return copies

    def _not_following(self, prefilling: list[Request]) -> list[Request]:
        """`prefilling` without the prompts whose next MIN_SHARED_PREFIX tokens or more an
        earlier prompt going in will compute: they wait for it and copy them
        (`_catch_up`) instead of computing them too. The earliest of such prompts always
        goes on."""
        going = []
        for req in prefilling:  # in admission order
            ids, need = req.prefill_ids, req.filled + MIN_SHARED_PREFIX
            if len(ids) - 1 < need or not any(
                r.filled < need and r.prefill_ids[0] == ids[0] and shared_prefix(r.prefill_ids, ids, need) >= need
                for r in going
            ):
                going.append(req)
        return going

    def _reuse_prefix(self, req: Request) -> None:
        """Start `req` after the longest run of its full prefill blocks already cached (at
        least one token is left to compute: its logits give the first token)."""
        ids, size = req.prefill_ids, self.kv_blocks.block_size
        req.block_hashes = block_hashes(ids, size)[: (len(ids) - 1) // size]
        if req.wants_prompt_logprobs:  # every prompt position's logits are needed: its blocks
            return  # are computed (and registered for later prompts), none read
        req.blocks = self.kv_blocks.match(req.block_hashes)
        req.filled, req.registered = len(req.blocks) * size, len(req.blocks)
        self.stats.prefix_queries += len(ids)
        self.stats.prefix_hits += req.filled

    def _register_prefix(self, req: Request) -> None:
        """Put the full blocks of `req`'s prefill written so far in the prefix cache."""
        full = min(req.filled // self.kv_blocks.block_size, len(req.block_hashes))
        for i in range(req.registered, full):
            self.kv_blocks.register(req.blocks[i], req.block_hashes[i])
        req.registered = max(req.registered, full)

    def _end_cancelled_and_late(self) -> None:
        now = self.clock()
        with self.lock:
            cancelled, self._cancelled = self._cancelled, []
            unfinished = [*self.running, *self._waiting]
        for req in unfinished:
            if any(req is c for c in cancelled):
                self.finish(req, FinishReason.CANCELLED)
            elif now > req.deadline:
                self.finish(
                    req,
                    FinishReason.TIMEOUT,
                    f"request timeout: generation ran past max_request_seconds ({self.config.max_request_seconds:g} s)",
                )

    # -- update ----------------------------------------------------------------------------
    def _decode_part(self, forward: Forward, ms: float) -> float | None:
        """What a mixed call's decode rows cost: the call less its prompt tokens at what a
        prompt token costs in the prefill calls' fit (measured apart from the chunks this
        scheduler picks, so the estimate does not feed on itself); None before that fit.
        Used only for a batch size that the last decode call alone did not measure: where
        it replaced those measurements, the mixed workload's chunk grew from 6 to 7 tokens
        in-process and two CI runs put its gaps' p99 ratio at 1.60 and 1.77 (1.32-1.41
        before).
        While prompts ride in every call no call decodes alone: without this the step
        stays priced at the batch before them (64 users arriving together: at the one-row
        step, and the second half went in 2 tokens a step, their first tokens 13 s late)."""
        fit = self.prefill_cost.line()
        if fit is None or fit[1] <= 0:
            return None
        part = ms - fit[1] * self._prompt_computed(forward)
        return part if part > 0 else None

    def _prompt_computed(self, forward: Forward) -> int:
        """Tokens a call computes past its decode rows: its rows' (padding rows' too), and
        where prompt rows of different lengths were padded to the longest, the padding."""
        lens = forward.lens[forward.decode_rows :]
        if self.pads_prompts and forward.phase is Phase.MIXED and len(lens) and (lens != lens[0]).any():
            return len(lens) * int(lens.max())
        return int(lens.sum())

    def update(self, forward: Forward, out: ForwardOutput) -> None:
        """Advance each request of one call of the plan by what the runner returned: a failed
        call ends its requests, a failing token step (sampling, detokenizing, the sink) only
        its own. Called right after its call: a runner's logits are valid until its next."""
        live = [
            (i, r)
            for i, r in enumerate(forward.requests)
            if r is not None and r.status is not Status.FINISHED
        ]
        if out.error is not None:
            for _, req in live:
                self.finish(req, FinishReason.ERROR, out.error)
            return
        computed = int(forward.lens[: forward.decode_rows].sum()) + self._prompt_computed(forward)
        if forward.phase is Phase.PREFILL:
            self.prefill_cost.add(computed, out.ms)
        else:
            self.step_cost.add(computed, out.ms)
            if forward.phase is Phase.DECODE:
                self.decode_ms.add(out.ms)
                self.decoded_alone = forward.rows
            elif forward.decode_rows != self.decoded_alone:  # a batch no call measured alone
                decode_ms = self._decode_part(forward, out.ms)
                if decode_ms is not None:
                    self.decode_ms.add(decode_ms)
        for i, req in live:
            if i in forward.all_logits and out.position_logits is not None:
                self._prompt_logprobs(req, out.position_logits(i), int(forward.starts[i]))
            req.filled += int(forward.lens[i])
            if req.status is Status.PREFILLING:
                if self.prefix_caching:
                    self._register_prefix(req)
                if req.filled < len(req.prefill_ids):
                    continue
                req.status = Status.DECODING
                if req.recompute is not None:  # back where it was: its next token is known
                    req.recompute = None
                    continue
            self._token(req, int(out.greedy[i]), lambda i=i: out.logits()[i])

    def _prompt_logprobs(self, req: Request, logits: np.ndarray, start: int) -> None:
        try:
            req.prompt_logprobs += logprobs.prompt_entries(
                logits, req.prompt_ids, start, len(req.prompt_ids), req.params.prompt_logprobs
            )
        except Exception as exc:  # noqa: BLE001 - that request only
            self.finish(req, FinishReason.ERROR, f"internal error computing prompt logprobs: {exc}")

    def _token(self, req: Request, greedy: int, logits) -> None:
        try:
            text, reason = self.output.advance(req, greedy, logits)
            if text:
                self.sink.on_text(req, text)
        except Exception as exc:  # noqa: BLE001 - reported to the request, logged by the adapter
            self.finish(req, FinishReason.ERROR, f"internal error during generation: {exc}")
            return
        if reason is not None:
            self.finish(req, reason)

    # -- endings ---------------------------------------------------------------------------
    def finish(self, req: Request, reason: FinishReason, error: str | None = None) -> None:
        with self.lock:
            if req.status is Status.FINISHED:
                return
            if req.status is Status.WAITING:
                if req in self._waiting:
                    self._waiting.remove(req)
            else:
                self.running.remove(req)
                self._free_slot(req.slot)
                if self.slot_reuse:
                    self.retained[req.slot] = cached_tokens(req)
                if self.kv_blocks is not None and not self.tables:
                    if self.slot_reuse:  # its pages stay with the tokens kept for reuse
                        self.kept_blocks[req.slot], req.blocks = req.blocks, []
                    else:
                        self._releases.append(req.slot)
                if req.blocks:
                    self.kv_blocks.give_back(req.blocks)
                    req.blocks = []
            req.status, req.finish_reason, req.error = Status.FINISHED, reason, error
        self.stats.ended[reason.value] += 1
        if req.first_token_at is not None:
            self.stats.e2e.append(self.clock() - req.arrived)
        try:
            self.sink.on_finish(req)
        except Exception:  # the request has ended; the engine serves on
            logger.exception("delivering the end of a request failed")

    def copy_failed(self, copy: SlotCopy, error: str) -> None:
        """A slot copy failed: the request it was for ends with `error`, and what its slot
        holds is not kept for reuse."""
        with self.lock:
            req = next((r for r in self.running if r.slot == copy.dst), None)
        if req is not None:
            self.finish(req, FinishReason.ERROR, error)
        self._forget_kept(copy.dst)

    def abort_all(self, message: str) -> None:
        """Ends every running and waiting request with `message` (shutdown)."""
        for req in self.requests():
            self.finish(req, FinishReason.ERROR, message)
