"""The engine's OpenVINO runner: the runner protocol (`engine.runners.base`) over an OpenVINO
IR of the checkpoint whose attention is turned into OpenVINO's `PagedAttention` when it is
loaded.

`PagedAttention` reads and writes the KV cache through block tables: the cache is one
`(blocks, heads, block_size, head_size)` tensor per layer and per K/V, allocated once and
set on the infer request once; a call writes only the new positions of each sequence into
its blocks, in place. Slot `s` owns blocks `s*B .. s*B+B-1` (B = max_len / block_size), so the
engine's slots map onto contiguous blocks and rows of different lengths share one call.

Two nodes are added to the graph when it is loaded: the hidden states of the positions named
by a `logits_indices` input are gathered before the vocabulary projection (a prompt's other
positions never pay for it), and `next_token` is their arg-max (greedy requests never copy
the logits out).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import numpy as np

from engine.config import EngineConfig
from engine.kv import KVBuffers
from engine.plan import Forward, ForwardOutput
from engine.runners.base import RunnerCaps

BLOCK_SIZE = 32  # OpenVINO's CPU PagedAttention block size
IR_NAME = "openvino_model.xml"  # and its weights beside it (`engine.runtimes`)


def _vocab_projection(model):
    """The MatMul that makes the logits (walks up from the `logits` result)."""
    node = model.output("logits").get_node().input_value(0).get_node()
    while node.get_type_name() != "MatMul":
        node = node.input_value(0).get_node()
    return node


# the cache precisions the CPU plugin's PagedAttention stores (`KV_CACHE_PRECISION`); u8 keeps
# a scale and a zero point per group inside each block, so its blocks are not plain arrays
KV_TYPES = {"f32": np.float32, "f16": np.float16, "u8": np.uint8}


def paged_model(xml_path: str):
    """The IR with paged attention, `logits_indices` and `next_token`; the caches' types and
    shapes are left to the plugin, which sets them from `KV_CACHE_PRECISION` when it compiles."""
    import openvino as ov
    import openvino._offline_transformations as transforms
    from openvino import opset13 as ops

    model = ov.Core().read_model(xml_path)
    names = {i.get_any_name() for i in model.inputs}
    if "beam_idx" not in names or "input_ids" not in names:
        raise RuntimeError(
            f"{xml_path}: not a stateful causal-LM IR (input_ids, beam_idx); re-run `aigc export`"
        )
    transforms.paged_attention_transformation(model, False, False)
    proj = _vocab_projection(model)
    indices = ops.parameter([-1], ov.Type.i64, name="logits_indices")
    indices.output(0).get_tensor().set_names({"logits_indices"})
    hidden = proj.input_value(0)
    proj.input(0).replace_source_output(ops.gather(hidden, indices, 0).output(0))
    top = ops.topk(proj.output(0), 1, -1, "max", "none", ov.Type.i64)
    top.output(1).get_tensor().set_names({"next_token"})
    model.add_parameters([indices])
    model.add_results([ops.result(top.output(1))])
    model.validate_nodes_and_infer_types()
    return model


class OvRunner:
    """The paged-attention IR compiled for the CPU; the KV blocks set on the request once."""

    def __init__(
        self,
        model_dir: str,
        slots: int,
        max_len: int,
        threads: int = 0,
        kv_type: str = "f32",
        blocks: int = 0,
        cache_mib: float = 0.0,
        windows: int = 0,
    ):
        """`slots`: the sequences decoded together; `kv_type`: the cache's precision
        (`KV_TYPES`); `blocks`, or `cache_mib` of them: the cache's blocks, taken by use
        through each call's block tables (default `windows` x `max_len` worth, `windows` 0 =
        `slots`; slot `s` owns the `s`-th run of them when a call gives no tables, as the
        export's measurements call it)."""
        import openvino as ov

        if kv_type not in KV_TYPES:
            raise ValueError(f"kv_cache_precision must be one of {', '.join(KV_TYPES)}, got {kv_type!r}")
        with open(os.path.join(model_dir, "model_info.json")) as f:
            self.info = json.load(f)
        self.n_layer, self.n_head = int(self.info["n_layer"]), int(self.info["n_head"])
        self.head_size, self.n_positions = int(self.info["head_size"]), int(self.info["n_positions"])
        self.vocab = int(self.info["vocab_size"])
        self.slots, self.max_len = slots, max_len
        self.device = "cpu"
        config = {
            # f32 activations: OpenVINO's default on AMX CPUs is bf16, slower for this model
            # with int8/int4 weights and further from the fp32 reference.
            "INFERENCE_PRECISION_HINT": "f32",
            "KV_CACHE_PRECISION": kv_type,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            # Unpinned: in a server the plugin's threads share the cores with Triton's, the
            # responses' and the clients'; pinned, each token waited for the pinned threads'
            # cores (served one-stream ITL 10.8 -> 7.0 ms on a 2-core EPYC, the offline step
            # unchanged).
            "ENABLE_CPU_PINNING": False,
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = ov.Core().compile_model(paged_model(os.path.join(model_dir, IR_NAME)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        # each block's key and value shape as the plugin laid them out for this precision
        shapes = [
            tuple(d.get_length() for d in list(self.compiled.input(f"{kv}_cache.0").get_partial_shape())[1:])
            for kv in ("key", "value")
        ]
        dtype = np.dtype(KV_TYPES[kv_type])
        self.blocks_per_slot = -(-max_len // BLOCK_SIZE)
        if cache_mib and not blocks:
            per_block = self.n_layer * sum(int(np.prod(s)) for s in shapes) * dtype.itemsize
            blocks = max(1, int(cache_mib * 2**20) // per_block)
        blocks = blocks or (windows or slots) * self.blocks_per_slot
        if blocks < self.blocks_per_slot:
            raise ValueError(
                f"kv_cache_mib holds {blocks} blocks of {BLOCK_SIZE} positions; one request of the "
                f"{max_len}-position window needs {self.blocks_per_slot}"
            )
        self.kv = KVBuffers(
            self.n_layer,
            self.n_head,
            self.head_size,
            slots,
            self.blocks_per_slot * BLOCK_SIZE,
            dtype,
            block_size=BLOCK_SIZE,
            blocks=blocks,
            block_shapes=shapes,
        )
        self.kv_type = kv_type
        cache_names = [f"{kv}_cache.{i}" for i in range(self.n_layer) for kv in ("key", "value")]
        for name, buf in zip(cache_names, self.kv.buffers, strict=True):
            self.request.set_tensor(name, ov.Tensor(buf, shared_memory=True))
        self._ov = ov
        # the tables of calls that give none (the export's measurements): slot s, run s
        self._slot_blocks = (
            np.arange(self.blocks_per_slot * slots, dtype=np.int32).reshape(slots, self.blocks_per_slot)
            % self.kv.blocks
        )
        self.caps = RunnerCaps(
            mixed=True,  # PagedAttention takes sequences of any lengths in one call
            max_rows=slots,
            max_len=max_len,
            kv_dtype=self.kv.dtype,
            kv_bytes=self.kv.nbytes,
            device=self.device,
            block_size=BLOCK_SIZE,
            blocks=self.kv.blocks,
        )

    @classmethod
    def from_version(
        cls, model_dir: str, config: EngineConfig, max_len: int, threads: int = 0, **_
    ) -> OvRunner:
        """The runner of a repository version folder, as `engine.loader` builds it: the cache
        is `kv_cache_mib` of blocks (0: `slots` x `max_len` worth) in `kv_cache_precision`
        (`auto` where no build resolved it from the export report: f32)."""
        precision = "f32" if config.kv_cache_precision == "auto" else config.kv_cache_precision
        # sequences at once are bounded by `max_sequences` and the pool's blocks, not by
        # windows: the pool is `slots` windows' worth unless sized in MiB
        rows = config.sequences
        return cls(
            model_dir,
            rows,
            max_len,
            threads,
            kv_type=precision,
            cache_mib=config.kv_cache_mib,
            windows=config.slots,
        )

    def execute(self, forward: Forward) -> ForwardOutput:
        """Any rows, each through its block table (or, without tables, its slot's run)."""
        lens = forward.lens.astype(np.int32)
        begins = np.cumsum(lens) - lens  # each row's first token in the flat ids
        # token j of row i sits at ids[begins[i] + j] and writes position starts[i] + j
        positions = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(begins - forward.starts, lens)
        last = begins + lens - 1
        if not forward.all_logits:
            greedy, logits = self._run(
                forward.ids, positions, lens, np.asarray(forward.slots), last, forward.blocks
            )
            return ForwardOutput(greedy, logits)
        # prompt log-probabilities: every position of those rows, the last of the others
        wanted = [
            np.arange(begins[i], begins[i] + lens[i]) if i in forward.all_logits else last[i : i + 1]
            for i in range(forward.rows)
        ]
        at = np.concatenate(wanted)
        ends = np.cumsum([len(w) for w in wanted]) - 1  # each row's last position in `at`
        tokens, every = self._run(forward.ids, positions, lens, np.asarray(forward.slots), at, forward.blocks)
        firsts = ends - np.array([len(w) for w in wanted]) + 1
        return ForwardOutput(
            tokens[ends],
            lambda: every()[ends],
            position_logits=lambda i: every()[firsts[i] : ends[i] + 1],
        )

    def describe(self) -> str:
        return (
            f"openvino {self._ov.get_version()} from {os.path.dirname(self._ov.__file__)}, CPU, "
            f"f32 activations, {self.kv_type} paged KV cache in blocks of {BLOCK_SIZE}"
        )

    def _run(
        self,
        ids: np.ndarray,
        positions: np.ndarray,
        lens: np.ndarray,
        slots: np.ndarray,
        logits_at: np.ndarray,
        tables=None,
    ) -> tuple[np.ndarray, Callable[[], np.ndarray]]:
        """`ids`/`positions` (tokens,) for sequences of `lens` new tokens each, in `slots`
        (or through their block `tables`), starting at `positions[begin]`; logits and greedy
        tokens of the rows `logits_at`."""
        begins = np.zeros(len(lens) + 1, np.int32)
        np.cumsum(lens, out=begins[1:])
        past = positions[begins[:-1]].astype(np.int32)
        ends = past + lens
        blocks_each = -(-ends // BLOCK_SIZE)
        if tables is None:
            tables = [self._slot_blocks[s] for s in slots]
        table = np.concatenate([t[:b] for t, b in zip(tables, blocks_each, strict=True)])
        table_begins = np.zeros(len(lens) + 1, np.int32)
        np.cumsum(blocks_each, out=table_begins[1:])
        feeds = {
            "input_ids": ids.astype(np.int64, copy=False),
            "position_ids": positions.astype(np.int64, copy=False),
            "past_lens": past,
            "subsequence_begins": begins,
            "block_indices": table.astype(np.int32, copy=False),
            "block_indices_begins": table_begins,
            "max_context_len": np.array(int(ends.max()), np.int32),
            "logits_indices": logits_at.astype(np.int64, copy=False),
        }
        for name, arr in feeds.items():
            self.request.set_tensor(name, self._ov.Tensor(arr, shared_memory=True))
        self.request.infer()
        tokens = self.request.get_tensor("next_token").data.reshape(-1).copy()
        return tokens, lambda: self.request.get_tensor("logits").data.reshape(len(logits_at), -1)

    def decode(self, tokens: np.ndarray, positions: np.ndarray):
        """One token for slots `0..n-1` at `positions`; greedy tokens and a logits function."""
        n = len(tokens)
        rows = np.arange(n)
        return self._run(
            np.asarray(tokens, np.int64), np.asarray(positions, np.int64), np.ones(n, np.int32), rows, rows
        )

    def prefill(self, slot: int, ids, start: int):
        tokens, logits = self.prefill_rows(slot, np.asarray(ids, np.int64)[None], start)
        return int(tokens[0]), lambda: logits()[0]

    def prefill_rows(self, first_slot: int, ids: np.ndarray, start: int):
        """`ids` (k, t) for slots `first_slot..first_slot+k-1` at positions `start..`."""
        k, t = ids.shape
        positions = np.tile(np.arange(start, start + t, dtype=np.int64), k)
        last = np.arange(1, k + 1) * t - 1
        return self._run(
            ids.reshape(-1), positions, np.full(k, t, np.int32), np.arange(first_slot, first_slot + k), last
        )

    def all_logits(self, slot: int, ids: np.ndarray, start: int = 0) -> np.ndarray:
        """(t, vocab) logits of every position of `ids` written at `start..` of `slot` (fidelity
        measurements: perplexity needs each position)."""
        t = len(ids)
        positions = np.arange(start, start + t, dtype=np.int64)
        _, logits = self._run(
            np.asarray(ids, np.int64), positions, np.array([t], np.int32), np.array([slot]), np.arange(t)
        )
        return logits().copy()
