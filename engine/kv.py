"""The KV cache: the buffers a runner allocates once (`KVBuffers`), and which rows of them
each request holds (`SlotPool`, owned by the scheduler).

Per layer a key and a value buffer of shape `(slots, heads, max_len, head_size)` on the
runner's device, or `(slots x max_len / block_size, heads, block_size, head_size)` blocks for
a paged-attention runner (slot `s` owns the `s`-th run of `max_len / block_size` blocks). A
request holds one slot from admission to its end; a step writes only its new positions.
"""

from __future__ import annotations

import heapq

import numpy as np


class KVBuffers:
    """`2 x layers` buffers, allocated and touched once."""

    def __init__(
        self,
        n_layer,
        n_head,
        head_size,
        slots,
        max_len,
        dtype,
        device="cpu",
        device_id=0,
        block_size=0,
        blocks=0,
    ):
        """`blocks` (with `block_size`): how many blocks (default: `slots x max_len` worth)."""
        self.dtype = np.dtype(dtype)
        if block_size:
            self.blocks = blocks or slots * max_len // block_size
            self.shape = (self.blocks, n_head, block_size, head_size)
        else:
            self.blocks = 0
            self.shape = (slots, n_head, max_len, head_size)
        self.device, self.device_id = device, device_id
        self.block_size = block_size
        self.slot_bytes = n_head * max_len * head_size * self.dtype.itemsize
        self.nbytes = 2 * n_layer * int(np.prod(self.shape)) * self.dtype.itemsize
        if device == "cpu":
            self._buffers = [np.zeros(self.shape, self.dtype) for _ in range(2 * n_layer)]
            for b in self._buffers:
                b.fill(0)  # commit the pages now: resident memory stays flat afterwards
            self.ptrs = [b.ctypes.data for b in self._buffers]
        else:
            import onnxruntime as ort

            self._buffers = [
                ort.OrtValue.ortvalue_from_shape_and_type(self.shape, self.dtype.type, device, device_id)
                for _ in range(2 * n_layer)
            ]
            self.ptrs = [v.data_ptr() for v in self._buffers]

    @property
    def buffers(self) -> list:
        """The host arrays (CPU) or device OrtValues, key then value per layer."""
        return self._buffers

    @property
    def layout(self) -> str:
        return "blocks" if self.block_size else "slots"


class SlotPool:
    """Which KV slots are free; the lowest is handed out first, which keeps the decoding rows
    packed at the start (a decode call covers rows `0..n-1`)."""

    def __init__(self, slots: int):
        self.total = slots
        self._free = list(range(slots))
        heapq.heapify(self._free)

    @property
    def free(self) -> int:
        return len(self._free)

    def acquire(self) -> int | None:
        return heapq.heappop(self._free) if self._free else None

    def release(self, slot: int) -> None:
        if not 0 <= slot < self.total or slot in self._free:
            raise ValueError(f"slot {slot} is not held (pool of {self.total})")
        heapq.heappush(self._free, slot)


class BlockPool:
    """Which cache blocks are free (a runner whose attention reads block tables): a request
    takes blocks as it grows and returns them when it ends or is preempted."""

    def __init__(self, blocks: int, block_size: int):
        self.total, self.block_size = blocks, block_size
        self._free = list(range(blocks - 1, -1, -1))  # pop() hands out the lowest first

    @property
    def free(self) -> int:
        return len(self._free)

    def needed(self, held: int, tokens: int) -> int:
        """More blocks a request holding `held` needs to cover `tokens` positions."""
        return max(0, -(-tokens // self.block_size) - held)

    def take(self, n: int) -> list[int] | None:
        """`n` blocks, or None (and nothing taken) when fewer are free."""
        if n > len(self._free):
            return None
        return [self._free.pop() for _ in range(n)]

    def give_back(self, blocks: list[int]) -> None:
        held = set(blocks)
        if len(held) != len(blocks) or held & set(self._free) or not all(0 <= b < self.total for b in held):
            raise ValueError(f"blocks {sorted(blocks)} are not all held (pool of {self.total})")
        self._free.extend(blocks)
