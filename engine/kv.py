"""The KV cache: the buffers a runner allocates once (`KVBuffers`), and which rows of them
each request holds (`SlotPool`, owned by the scheduler).

Per layer a key and a value buffer of shape `(slots, heads, max_len, head_size)` on the
runner's device, or `(slots x max_len / block_size, heads, block_size, head_size)` blocks for
a paged-attention runner (slot `s` owns the `s`-th run of `max_len / block_size` blocks). A
request holds one slot from admission to its end; a step writes only its new positions.

Slots on the host may be committed by use (`commit=False`): the buffers are reserved, not
touched, so the operating system backs a page only once a position in it is written, and
`release_slot` hands a slot's pages back when its request ends. A slot's positions of one
head are contiguous, so a page holds `page_positions` positions of one head: memory follows
each request's length in steps of that many positions, as a block runner's blocks do, for a
kernel (ONNX Runtime's CPU `GroupQueryAttention`) that addresses rows, not blocks.
"""

from __future__ import annotations

import collections
import ctypes
import heapq
import mmap

import numpy as np

PAGE = mmap.PAGESIZE


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    return libc


def page_positions(head_size: int, itemsize: int) -> int:
    """Positions of one head a page holds (at least one)."""
    return max(1, PAGE // (head_size * itemsize))


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
        block_shapes=None,
        commit=True,
    ):
        """`blocks` (with `block_size`): how many blocks (default: `slots x max_len` worth);
        `block_shapes`: the (key, value) shape of one block where a runtime lays them out
        itself (OpenVINO's u8 cache keeps each block's scales and zero points inside it),
        default `(n_head, block_size, head_size)` for both. `commit` False (host slots): the
        pages are backed as positions are written, not up front."""
        self.dtype = np.dtype(dtype)
        if block_size:
            self.blocks = blocks or slots * max_len // block_size
            key, value = block_shapes or ((n_head, block_size, head_size),) * 2
            self.shapes = ((self.blocks, *key), (self.blocks, *value))
        else:
            self.blocks = 0
            self.shapes = ((slots, n_head, max_len, head_size),) * 2
        self.device, self.device_id = device, device_id
        self.block_size = block_size
        self.slot_bytes = n_head * max_len * head_size * self.dtype.itemsize
        self.block_bytes = 0
        if block_size:  # one block of every layer, key and value: what a request takes as it grows
            self.block_bytes = n_layer * sum(int(np.prod(s[1:])) for s in self.shapes) * self.dtype.itemsize
        self.nbytes = n_layer * sum(int(np.prod(s)) for s in self.shapes) * self.dtype.itemsize
        self.committed = commit or device != "cpu"
        if device == "cpu":
            if self.committed:
                self._buffers = [np.zeros(self.shapes[i % 2], self.dtype) for i in range(2 * n_layer)]
                for b in self._buffers:
                    b.fill(0)  # commit the pages now: resident memory stays flat afterwards
            else:  # anonymous maps: page-aligned, reserved, backed when first written
                private = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                self._maps = [
                    mmap.mmap(
                        -1, max(1, int(np.prod(self.shapes[i % 2])) * self.dtype.itemsize), flags=private
                    )
                    for i in range(2 * n_layer)
                ]
                self._buffers = [
                    np.frombuffer(m, self.dtype, int(np.prod(self.shapes[i % 2]))).reshape(self.shapes[i % 2])
                    for i, m in enumerate(self._maps)
                ]
            self.ptrs = [b.ctypes.data for b in self._buffers]
        else:
            import onnxruntime as ort

            self._buffers = [
                ort.OrtValue.ortvalue_from_shape_and_type(
                    self.shapes[i % 2], self.dtype.type, device, device_id
                )
                for i in range(2 * n_layer)
            ]
            self.ptrs = [v.data_ptr() for v in self._buffers]

    @property
    def buffers(self) -> list:
        """The host arrays (CPU) or device OrtValues, key then value per layer."""
        return self._buffers

    def copy_slot(self, src: int, dst: int, positions: int) -> None:
        """Slot `dst`'s first `positions` become slot `src`'s (host buffers of slots)."""
        if self.device != "cpu" or self.block_size:
            raise NotImplementedError("slot copies are made in host slot buffers")
        for b in self._buffers:
            b[dst, :, :positions] = b[src, :, :positions]

    def release_slot(self, slot: int) -> None:
        """Hand slot `slot`'s pages back to the operating system (host slots committed by use):
        it reads as zeros and holds no memory until written again."""
        if self.committed or self.block_size:
            raise NotImplementedError("only host slots committed by use give pages back")
        if self.slot_bytes % PAGE:
            raise NotImplementedError(f"a slot of {self.slot_bytes} bytes is not whole pages")
        for m in self._maps:
            m.madvise(mmap.MADV_DONTNEED, slot * self.slot_bytes, self.slot_bytes)

    def resident_bytes(self) -> int:
        """The bytes of the host buffers backed by memory now (`mincore`)."""
        if self.device != "cpu":
            return self.nbytes
        libc, total = _libc(), 0
        for b in self._buffers:
            first = b.ctypes.data // PAGE * PAGE
            length = b.ctypes.data + b.nbytes - first
            pages = -(-length // PAGE)
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(first, length, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore of the KV cache failed")
            total += int(np.count_nonzero(np.frombuffer(vec, np.uint8) & 1)) * PAGE
        return total


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

    def acquire(self, slot: int | None = None) -> int | None:
        """The lowest free slot, or `slot` where it is free."""
        if slot is None:
            return heapq.heappop(self._free) if self._free else None
        if slot not in self._free:
            return None
        self._free.remove(slot)
        heapq.heapify(self._free)
        return slot

    def free_slots(self) -> list[int]:
        return sorted(self._free)

    def release(self, slot: int) -> None:
        if not 0 <= slot < self.total or slot in self._free:
            raise ValueError(f"slot {slot} is not held (pool of {self.total})")
        heapq.heappush(self._free, slot)


class BlockPool:
    """The cache blocks of a runner whose attention reads block tables: a request takes
    blocks as it grows and gives them back when it ends or is preempted.

    With prefix caching, a full block of a request's prefill is registered under a hash of
    its tokens and of every token before them; a later request whose prefill starts with
    the same tokens takes those blocks instead of computing them (they are only read, so
    requests share them, counted by `refs`). A block nobody holds keeps its contents until
    its space is needed: free blocks are handed out first, then cached ones, least recently
    used first."""

    def __init__(self, blocks: int, block_size: int):
        self.total, self.block_size = blocks, block_size
        self._free = list(range(blocks - 1, -1, -1))  # pop() hands out the lowest first
        self._idle: collections.OrderedDict[int, None] = (
            collections.OrderedDict()
        )  # cached, unheld, LRU first
        self.refs = [0] * blocks
        self._hash_of: dict[int, int] = {}
        self._by_hash: dict[int, int] = {}

    @property
    def free(self) -> int:
        """Blocks a request can take (free, or cached and held by nobody)."""
        return len(self._free) + len(self._idle)

    @property
    def cached(self) -> int:
        return len(self._by_hash)

    def needed(self, held: int, tokens: int) -> int:
        """More blocks a request holding `held` needs to cover `tokens` positions."""
        return max(0, -(-tokens // self.block_size) - held)

    def take(self, n: int) -> list[int] | None:
        """`n` blocks, or None (and nothing taken) when fewer can be had."""
        if n > self.free:
            return None
        out = []
        for _ in range(n):
            if self._free:
                block = self._free.pop()
            else:  # evict the least recently used cached block
                block, _ = self._idle.popitem(last=False)
                del self._by_hash[self._hash_of.pop(block)]
            self.refs[block] = 1
            out.append(block)
        return out

    def give_back(self, blocks: list[int]) -> None:
        if len(set(blocks)) != len(blocks) or not all(
            0 <= b < self.total and self.refs[b] > 0 for b in blocks
        ):
            raise ValueError(f"blocks {sorted(blocks)} are not all held (pool of {self.total})")
        for block in blocks:
            self.refs[block] -= 1
            if self.refs[block] == 0:
                if block in self._hash_of:
                    self._idle[block] = None  # the most recently used end
                else:
                    self._free.append(block)

    def match(self, hashes: list[int]) -> list[int]:
        """The cached blocks of the longest run of `hashes` (a prefill's full blocks, in
        order), now held by the caller too."""
        found = []
        for h in hashes:
            block = self._by_hash.get(h)
            if block is None:
                break
            found.append(block)
        for block in found:
            if self.refs[block] == 0:
                del self._idle[block]
            self.refs[block] += 1
        return found

    def register(self, block: int, h: int) -> None:
        """`block` now holds the full block whose tokens hash to `h` (kept while another
        block already holds the same)."""
        if h not in self._by_hash and block not in self._hash_of:
            self._hash_of[block], self._by_hash[h] = h, block


def block_hashes(ids: list[int], block_size: int) -> list[int]:
    """A hash per full block of `ids`, each of its tokens and of all before them."""
    out, h = [], 0
    for i in range(len(ids) // block_size):
        h = hash((h, tuple(ids[i * block_size : (i + 1) * block_size])))
        out.append(h)
    return out
