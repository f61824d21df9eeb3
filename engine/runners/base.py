"""The runner protocol: what the scheduler may ask of a runtime, and what each runtime
declares about itself.

A runner holds the model and its KV cache (allocated once, at load). It declares its
capabilities (`RunnerCaps`), which the scheduler plans by, and executes one `Forward` at a
time. The ONNX Runtime and OpenVINO runners implement it, and `FakeRunner` for the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from engine.plan import MAIN, Forward, ForwardOutput


@dataclass(frozen=True)
class RunnerCaps:
    mixed: bool  # prefill and decode rows in one call (else one phase a call)
    max_rows: int  # KV slots: the most requests it holds at once
    max_len: int  # cache positions per slot
    kv_dtype: np.dtype
    kv_bytes: int  # the memory its cache holds
    device: str  # "cpu" or "cuda"
    graphs: tuple[str, ...] = (MAIN,)  # with COMPANION: a pair's second graph shares the slots
    # A block runner (`block_size` > 0) reads each row's cache through the block table the
    # call gives it (`Forward.blocks`): `blocks` of `block_size` positions, taken by use; its
    # `max_rows` then bounds only the sequences at once, not the memory.
    block_size: int = 0
    blocks: int = 0
    # False with `block_size`: a slot runner whose memory is committed by use (`KVBuffers`
    # with commit False): rows are slots, as without blocks, but a request holds `block_size`
    # positions' pages as it grows, out of `blocks`, and `release_slot(slot)` hands an ended
    # request's pages back; the scheduler counts them as a block runner's blocks.
    block_tables: bool = True
    # A slot runner that copies a slot's leading positions into another (`copy_slot`): a
    # prompt that starts as a running request's reads its prefix instead of computing it.
    copies: bool = False
    # A prefill call of several rows may start past position 0 (ONNX Runtime's CPU
    # GroupQueryAttention takes one row then: "batch_size must be 1 when sequence_length > 1
    # and past context is given").
    group_past: bool = True
    # With `mixed` and slots: a MIXED call is a decode call's rows (slots 0..n-1, padding
    # rows included) then a prefill call's (consecutive slots, one start, one length), as
    # `Forward.decode_rows` splits them (ONNX Runtime's mixed graph); else any rows.
    mixed_slots: bool = False
    # With `mixed_slots`: the prefill call's rows in a MIXED call may be of different lengths
    # where they start at position 0, each padded on the right to the longest (ONNX Runtime's
    # mixed graph: its attention reads each row's own length); the padding is computed.
    padded_prompts: bool = False

    @property
    def cache_layout(self) -> str:
        """ "slots": a row of the cache per slot; "blocks": blocks taken by use; "slots by
        use": a row per slot, its memory taken by use."""
        if not self.block_size:
            return "slots"
        return "blocks" if self.block_tables else "slots by use"


@runtime_checkable
class Runner(Protocol):
    """`info`: the model's `model_info.json` (n_layer, n_head, head_size, n_positions,
    vocab_size, eos_token_id)."""

    info: dict
    caps: RunnerCaps

    def execute(self, forward: Forward) -> ForwardOutput:
        """Write each row's ids into its slot's cache and return every row's last-position
        arg-max and logits."""
        ...

    def describe(self) -> str:
        """The runtime, its version and settings, for the server's log."""
        ...

    # where `caps.copies`: def copy_slot(self, copy: SlotCopy) -> None
    # where `caps.cache_layout` is "slots by use": def release_slot(self, slot: int) -> None
