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
    cache_layout: str  # "slots": a row per slot; "blocks": fixed-size blocks per slot
    kv_dtype: np.dtype
    kv_bytes: int  # the memory its cache holds
    device: str  # "cpu" or "cuda"
    graphs: tuple[str, ...] = (MAIN,)  # with COMPANION: a pair's second graph shares the slots


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
