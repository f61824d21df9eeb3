"""The engine's ONNX Runtime runner: the exported KV-slot graph in a session, its inputs and
the KV slots bound once per row count through IO binding; a call fills small host arrays
and runs.

The graph's `GroupQueryAttention` gets the same buffer as `past` and `present`, so a call
writes only the new positions of each row (`seqlens_k` per row) and reads only each row's
own length: nothing is copied, padded or concatenated per token, and rows of different
lengths share one decode call. Its kernel takes one sequence length per call, so on a GPU
prefill rows and decode rows go in separate calls. On the CPU (`mixed_calls`) a step that has
both runs them in one call of a second session, the graph rewritten so that only attention
tells the decode rows from the chunk (`engine.runners.mixed_graph`): the chunk then costs its
tokens, not a second pass over the weights (`RunnerCaps.mixed_slots`).

The kernel addresses rows, not blocks, so on the CPU the cache's memory follows use another
way: `max_sequences` rows of the whole window are reserved, not committed, and the operating
system backs a page of a row only when a position in it is written (16 positions of one
head for GPT-2's fp32 rows); an ended request's pages go back (`release_slot`). The
scheduler counts each request's pages out of a pool of `kv_cache_mib` (default `slots`
windows' worth) as it grows and preempts the newest when the pool is short, as it does a
block runner's blocks. On a GPU the slots are allocated whole, once.
"""

from __future__ import annotations

import collections
import json
import logging
import os
from collections.abc import Callable

import numpy as np

from engine.config import EngineConfig
from engine.kv import PAGE, KVBuffers, page_positions
from engine.plan import COMPANION, MAIN, Forward, ForwardOutput, Phase, SlotCopy
from engine.runners.base import RunnerCaps
from engine.runners.mixed_graph import CHUNK_PREFIX, PROTO_MAX_BYTES
from engine.runners.ortsession import session_options

logger = logging.getLogger(__name__)

_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8}
# `kv_cache_precision` as the build names a graph's cache type (`auto`: whatever it is)
PRECISION_TYPES = {"f32": np.float32, "f16": np.float16, "i8": np.int8}
GRAPH_FILE = "model.onnx"
COMPANION_FILE = "companion.onnx"
MIXED_FILE = "mixed.onnx"  # `aigc build`'s mixed-call graph (`mixed_graph.write_mixed_graph`)
# a mixed call's IO bindings kept (one per decode rows, first chunk slot and chunk rows)
MIXED_BINDINGS = 256


def _mixed_session(path: str, opts, providers) -> tuple[object | None, str]:
    """The mixed-call session of the graph at `path`: the build's `mixed.onnx` beside it,
    else the graph rewritten in memory (a version folder made by hand; its proto stays in
    the process's heap, so the build writes the file); and what the server's log says of
    it. None where the graph cannot take the rewrite."""
    import onnxruntime as ort

    built = os.path.join(os.path.dirname(path), MIXED_FILE)
    name = os.path.basename(path)
    if os.path.isfile(built):
        session = ort.InferenceSession(built, opts, providers=providers)
        return session, f"decode rows and a prompt chunk in one call of {MIXED_FILE} ({name}'s weights)"
    import onnx

    from engine.runners.mixed_graph import mixed_graph

    if os.path.getsize(path) > PROTO_MAX_BYTES:  # its rewrite would not fit one protocol buffer
        return None, f"off ({name} is over {PROTO_MAX_BYTES / 2**30:.1f} GiB and no {MIXED_FILE} was built)"
    try:
        model = mixed_graph(onnx.load(path))
    except ValueError as exc:
        logger.warning("%s: prefill and decode rows go in separate calls: %s", path, exc)
        return None, f"off ({exc})"
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=providers)
    return session, f"decode rows and a prompt chunk in one call of {name}, rewritten in memory"


class OrtRunner:
    """The exported graph in an ONNX Runtime session, its inputs and the KV slots bound once
    per row count through IO binding; a call fills small host arrays and runs."""

    def __init__(
        self,
        model_dir: str,
        slots: int,
        max_len: int,
        intra_op_threads: int = 0,
        providers=None,
        cuda_graph: bool = False,
        companion: bool = False,
        shared_pool: bool = False,
        max_sequences: int = 0,
        cache_mib: float = 0.0,
        mixed: str | None = None,
    ):
        """`slots` rows of the whole window, allocated once; or, with `max_sequences` on the
        CPU, that many rows committed by use out of `cache_mib` (0: `slots` windows' worth).
        `mixed`: the graph (MAIN or COMPANION) whose weights run the steps that mix decode
        rows and a prompt chunk, on the CPU; None: those go in two calls."""
        import onnxruntime as ort

        with open(os.path.join(model_dir, "model_info.json")) as f:
            self.info = json.load(f)
        available = ort.get_available_providers()
        providers = providers or [
            p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available
        ]
        if "CUDAExecutionProvider" in providers and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # the CUDA and cuDNN libraries of the nvidia-* pip packages
        if cuda_graph and "CUDAExecutionProvider" in providers:
            # A decode step replays one captured CUDA graph per row count (`gpu_graph_id`):
            # one launch instead of one per node; prefills run uncaptured (their shapes vary).
            providers = [
                ("CUDAExecutionProvider", {"enable_cuda_graph": "1"}) if p == "CUDAExecutionProvider" else p
                for p in providers
            ]
        # A companion graph (`companion.onnx`: the same model with other weights, e.g. int8
        # beside int4) shares the KV slots; the scheduler routes calls to it (`Forward.graph`)
        # where the build measured it faster.
        companion_path = os.path.join(model_dir, COMPANION_FILE)
        on_cpu = "CUDAExecutionProvider" not in [p if isinstance(p, str) else p[0] for p in providers]
        pair = companion and os.path.isfile(companion_path) and on_cpu
        mixed_source = None
        if mixed is not None and on_cpu:
            mixed_source = companion_path if mixed == COMPANION and pair else os.path.join(model_dir, GRAPH_FILE)
        opts = session_options(intra_op_threads)
        if (pair or mixed_source) and shared_pool:
            # Both graphs on one thread pool: with a pool each, the threads of the graph that
            # just ran spin on the cores the other needs, which doubles the prefill after
            # decode steps (benchmarks/pair-thread-pool.md).
            # The pool is process-wide: once it exists, ONNX Runtime refuses sessions with
            # their own pools, so only a process of its own (`shared_pool`) takes it.
            ort.set_global_thread_pool_sizes(intra_op_threads, 1)
            opts = session_options(shared_pool=True)
        self.session = ort.InferenceSession(os.path.join(model_dir, GRAPH_FILE), opts, providers=providers)
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.companion = None
        if pair:
            self.companion = ort.InferenceSession(companion_path, opts, providers=providers)
        self.mixed, self.mixed_graph, self.mixed_note = None, None, "off"
        if mixed_source is not None:
            self.mixed_graph = COMPANION if mixed_source == companion_path else MAIN
            self.mixed, self.mixed_note = _mixed_session(mixed_source, opts, providers)
            if self.mixed is None:
                self.mixed_graph = None
        if "CUDAExecutionProvider" in providers and self.device != "cuda":
            raise RuntimeError(
                f"CUDA was asked for but this onnxruntime ({ort.__version__} at {os.path.dirname(ort.__file__)}) "
                f"offers {', '.join(available)}: install onnxruntime-gpu"
            )
        self.n_layer, self.n_head = int(self.info["n_layer"]), int(self.info["n_head"])
        self.head_size, self.n_positions = int(self.info["head_size"]), int(self.info["n_positions"])
        self.vocab = int(self.info["vocab_size"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        if "past_key_0" not in inputs or "seqlens_k" not in inputs:
            raise RuntimeError(
                f"{model_dir}/model.onnx is not a KV-slot graph (past_key_i, seqlens_k); re-run `aigc export`"
            )
        self.kv_dtype = _NP_TYPES[inputs["past_key_0"].type]
        # an export before `logits_indices` projects every position onto the vocabulary
        self.indexed = "logits_indices" in inputs
        if self.companion is not None:
            theirs = {i.name: i.type for i in self.companion.get_inputs()}.get("past_key_0")
            if theirs != inputs["past_key_0"].type:
                raise RuntimeError(
                    f"{model_dir}: {COMPANION_FILE} caches {theirs} but {GRAPH_FILE} {inputs['past_key_0'].type}; "
                    "the pair shares one cache (re-run `aigc build`)"
                )
        itemsize = np.dtype(self.kv_dtype).itemsize
        page = page_positions(self.head_size, itemsize)
        windows, rows, kv_len = slots, slots, max_len
        # by use: a row of each head is whole pages (`page` positions each; the row's length
        # rounded up to them), where a page holds whole positions
        by_use = bool(max_sequences) and self.device == "cpu" and PAGE % (self.head_size * itemsize) == 0
        if by_use:
            rows, kv_len = max(max_sequences, slots), -(-max_len // page) * page
        self.slots, self.max_len, self.kv_len = rows, max_len, kv_len
        self.kv = KVBuffers(
            self.n_layer,
            self.n_head,
            self.head_size,
            rows,
            kv_len,
            self.kv_dtype,
            self.device,
            commit=not by_use,
        )
        block_size = blocks = 0
        kv_bytes = self.kv.nbytes
        if by_use:
            block_size = page
            block_bytes = 2 * self.n_layer * self.n_head * page * self.head_size * itemsize
            per_window = -(-max_len // page)
            blocks = int(cache_mib * 2**20) // block_bytes if cache_mib else windows * per_window
            if blocks < per_window:
                raise ValueError(
                    f"kv_cache_mib {cache_mib:g} holds {blocks} pages of {page} positions; one request of "
                    f"the {max_len}-position window needs {per_window} ({per_window * block_bytes / 2**20:.1f} MiB)"
                )
            kv_bytes = blocks * block_bytes
        self.kv_names = [
            (f"past_{kv}_{i}", f"present_{kv}_{i}") for i in range(self.n_layer) for kv in ("key", "value")
        ]
        # Host arrays that the bindings point at: written in place before every call. The
        # outputs hold a mixed call's rows too (a decode call's and a prefill call's; pages
        # are committed only where a call writes).
        self._ids = np.zeros((max(rows, 1), 1), np.int64)
        self._pos = np.zeros((max(rows, 1), 1), np.int64)
        self._seqlens = np.zeros(max(rows, 1), np.int32)
        self._total = np.zeros((), np.int32)
        self._last = np.zeros(1, np.int64)  # a decode call's logits_indices: its one position
        self._tokens = np.zeros(2 * max(rows, 1), np.int64)
        self._logits = np.zeros((2 * max(rows, 1), self.vocab), np.float32)
        self._logits_dev = None
        self._inputs_dev = None
        if self.device != "cpu":
            # On a GPU the per-step inputs live on the device too: IO binding copies a host
            # input to the device once, when it is bound, so they are refreshed in place
            # (`update_inplace`) before each step; only the greedy ids come back to the host.
            self._logits_dev = ort.OrtValue.ortvalue_from_shape_and_type(
                (max(rows, 1), self.vocab), np.float32, self.device, 0
            )
            self._inputs_dev = {
                name: ort.OrtValue.ortvalue_from_numpy(arr, self.device, 0)
                for name, arr in (
                    ("input_ids", self._ids),
                    ("position_ids", self._pos),
                    ("seqlens_k", self._seqlens),
                    ("logits_indices", self._last),
                )
            }
        self._graphs = cuda_graph and self.device == "cuda"
        self._tokens_dev = None
        if self._graphs:  # a captured graph writes only device memory
            self._tokens_dev = ort.OrtValue.ortvalue_from_shape_and_type(
                (max(rows, 1),), np.int64, self.device, 0
            )
        self._run_options: dict[int, object] = {}  # graph id -> RunOptions
        self._decode_bindings: dict[tuple[str, int], object] = {}
        self._prefill_bindings: dict[tuple[str, int, int], object] = {}
        self._mixed_bindings: collections.OrderedDict[tuple[int, int, int], object] = (
            collections.OrderedDict()
        )
        self.caps = RunnerCaps(
            mixed=self.mixed is not None,
            mixed_slots=self.mixed is not None,
            padded_prompts=self.mixed is not None,
            max_rows=rows,
            max_len=max_len,
            kv_dtype=np.dtype(self.kv_dtype),
            kv_bytes=kv_bytes,
            device=self.device,
            graphs=(MAIN, COMPANION) if self.companion is not None else (MAIN,),
            copies=self.device == "cpu",  # host arrays; a device cache reuses free slots only
            group_past=False,
            block_size=block_size,
            blocks=blocks,
            block_tables=False,
        )

    @classmethod
    def from_version(
        cls,
        model_dir: str,
        config: EngineConfig,
        max_len: int,
        threads: int = 0,
        providers=None,
        own_process: bool = False,
    ) -> OrtRunner:
        """The runner of a repository version folder, as `engine.loader` builds it.
        `own_process`: the engine is the process's only ONNX Runtime user (a Triton
        Python-backend stub), so a pair of graphs may take the process-wide thread pool."""
        runner = cls(
            model_dir,
            config.slots,
            max_len,
            threads,
            providers,
            config.cuda_graph,
            companion=bool(config.companion_prefill or config.companion_from_rows),
            shared_pool=own_process,
            max_sequences=config.sequences,
            cache_mib=config.kv_cache_mib,
            mixed=(COMPANION if config.companion_prefill else MAIN) if config.mixed_calls else None,
        )
        asked = PRECISION_TYPES.get(config.kv_cache_precision)
        if config.kv_cache_precision != "auto" and asked is not runner.kv_dtype:
            raise ValueError(
                f"kv_cache_precision {config.kv_cache_precision}: this graph's cache is "
                f"{np.dtype(runner.kv_dtype).name} (ONNX Runtime's cache has its graph's type; "
                "`aigc build --kv-cache-precision` picks the graph)"
            )
        return runner

    def execute(self, forward: Forward) -> ForwardOutput:
        if forward.phase is Phase.MIXED:
            return ForwardOutput(*self.mixed_call(forward))
        if forward.phase is Phase.DECODE:
            greedy, logits = self.decode(forward.ids, forward.starts, forward.graph)
        else:
            every = np.empty(0, np.float32)
            if forward.all_logits:  # prompt log-probabilities: every position's logits too
                every = np.empty((forward.rows, int(forward.lens[0]), self.vocab), np.float32)
            greedy, logits = self.prefill_rows(
                forward.slots[0], forward.matrix(), int(forward.starts[0]), forward.graph, every
            )
            if forward.all_logits:
                return ForwardOutput(greedy, logits, position_logits=every.__getitem__)
        return ForwardOutput(greedy, logits)

    def copy_slot(self, copy: SlotCopy) -> None:
        self.kv.copy_slot(copy.src, copy.dst, copy.positions)

    def release_slot(self, slot: int) -> None:
        self.kv.release_slot(slot)

    def describe(self) -> str:
        import onnxruntime as ort

        caps = self.caps
        memory = (
            f"; {caps.max_rows} KV slots committed by use, {caps.blocks} pages of {caps.block_size} positions"
            if caps.block_size
            else f"; {caps.max_rows} KV slots allocated whole"
        )
        return (
            f"onnxruntime {ort.__version__} from {os.path.dirname(ort.__file__)}, "
            f"providers {self.session.get_providers()}"
            + ("; a companion graph shares the KV slots" if self.companion is not None else "")
            + f"; mixed calls: {self.mixed_note}"
            + memory
        )

    def _bind_kv(self, binding, first_slot: int, rows: int, prefix: str = "") -> None:
        shape = [rows, self.n_head, self.kv_len, self.head_size]
        offset = first_slot * self.kv.slot_bytes
        for (past, present), ptr in zip(self.kv_names, self.kv.ptrs, strict=True):
            binding.bind_input(prefix + past, self.kv.device, 0, self.kv_dtype, shape, ptr + offset)
            binding.bind_output(prefix + present, self.kv.device, 0, self.kv_dtype, shape, ptr + offset)

    def _graph_options(self, graph_id: int):
        """RunOptions naming the CUDA graph to capture or replay (-1: none)."""
        import onnxruntime as ort

        if graph_id not in self._run_options:
            ro = ort.RunOptions()
            ro.add_run_config_entry("gpu_graph_id", str(graph_id))
            self._run_options[graph_id] = ro
        return self._run_options[graph_id]

    def _bind_outputs(self, binding, rows: int, graph: bool = False) -> None:
        if graph:
            binding.bind_output("next_token", self.device, 0, np.int64, [rows], self._tokens_dev.data_ptr())
        else:
            binding.bind_output("next_token", "cpu", 0, np.int64, [rows], self._tokens.ctypes.data)
        if self._logits_dev is None:
            binding.bind_output(
                "last_logits", "cpu", 0, np.float32, [rows, self.vocab], self._logits.ctypes.data
            )
        else:
            binding.bind_output(
                "last_logits", self.device, 0, np.float32, [rows, self.vocab], self._logits_dev.data_ptr()
            )

    def _session(self, graph: str):
        if graph == COMPANION:
            if self.companion is None:
                raise RuntimeError("a call was routed to the companion graph, but this version has none")
            return self.companion
        return self.session

    def _decode_binding(self, rows: int, graph: str):
        binding = self._decode_bindings.get((graph, rows))
        if binding is None:
            binding = self._session(graph).io_binding()
            shapes = {"input_ids": [rows, 1], "position_ids": [rows, 1], "seqlens_k": [rows]}
            hosts = {"input_ids": self._ids, "position_ids": self._pos, "seqlens_k": self._seqlens}
            for name, host in hosts.items():
                if self._inputs_dev is None:
                    binding.bind_input(name, "cpu", 0, host.dtype, shapes[name], host.ctypes.data)
                else:
                    dev = self._inputs_dev[name]
                    binding.bind_input(name, self.device, 0, host.dtype, shapes[name], dev.data_ptr())
            if self.indexed:
                if self._inputs_dev is None:
                    binding.bind_input("logits_indices", "cpu", 0, np.int64, [1], self._last.ctypes.data)
                else:
                    dev = self._inputs_dev["logits_indices"]
                    binding.bind_input("logits_indices", self.device, 0, np.int64, [1], dev.data_ptr())
            # GroupQueryAttention reads this one on the host on every device.
            binding.bind_input("total_sequence_length", "cpu", 0, np.int32, [], self._total.ctypes.data)
            self._bind_kv(binding, 0, rows)
            self._bind_outputs(binding, rows, graph=self._graphs)
            self._decode_bindings[(graph, rows)] = binding
        return binding

    def decode(
        self, tokens: np.ndarray, positions: np.ndarray, graph: str = MAIN
    ) -> tuple[np.ndarray, Callable[[], np.ndarray]]:
        """One token for slots `0..n-1` (row i = slot i) at `positions` (each row's filled
        length, where its new key/value is written). Returns the greedy tokens (n,) and a
        function giving the (n, vocab) logits (a device copy only when sampling asks)."""
        n = len(tokens)
        self._ids[:n, 0] = tokens
        self._pos[:n, 0] = positions
        self._seqlens[:n] = positions
        # A captured graph keeps the host value it saw: give it the slot length, an upper bound
        # (each row attends over its own `seqlens_k`, read on the device at every replay).
        self._total[...] = self.kv_len if self._graphs else int(positions.max()) + 1
        if self._inputs_dev is not None:
            for name, host in (
                ("input_ids", self._ids),
                ("position_ids", self._pos),
                ("seqlens_k", self._seqlens),
            ):
                self._inputs_dev[name].update_inplace(host)
        if self._graphs:
            self.session.run_with_iobinding(self._decode_binding(n, MAIN), self._graph_options(n))
            return self._tokens_dev.numpy()[:n], lambda: self._logits_rows(n)
        self._session(graph).run_with_iobinding(self._decode_binding(n, graph))
        return self._tokens[:n].copy(), lambda: self._logits_rows(n)

    def prefill(
        self, slot: int, ids: list[int] | np.ndarray, start: int
    ) -> tuple[int, Callable[[], np.ndarray]]:
        """Write the keys/values of `ids` at positions `start..` of `slot`; returns the greedy
        next token and a function giving its (vocab,) logits."""
        tokens, logits = self.prefill_rows(slot, np.asarray(ids, np.int64)[None], start)
        return int(tokens[0]), lambda: logits()[0]

    def prefill_rows(
        self,
        first_slot: int,
        ids: np.ndarray,
        start: int,
        graph: str = MAIN,
        every: np.ndarray | None = None,
    ) -> tuple[np.ndarray, Callable[[], np.ndarray]]:
        """`ids` (k, t): chunks of the same length for slots `first_slot..first_slot+k-1`,
        each written at positions `start..start+t-1`; returns greedy tokens (k,) and a function
        giving the (k, vocab) logits. `every` (k, t, vocab), when given, receives every
        position's logits (the graph's `logits` output, computed only then)."""
        k, t = ids.shape
        session = self._session(graph)
        binding = self._prefill_bindings.get((graph, first_slot, k))
        if every is not None and every.size:  # a binding of its own: the cached ones skip it
            binding = session.io_binding()
            self._bind_kv(binding, first_slot, k)
            self._bind_outputs(binding, k)
            binding.bind_output("logits", "cpu", 0, np.float32, [k, t, self.vocab], every.ctypes.data)
        elif binding is None:
            binding = session.io_binding()
            self._bind_kv(binding, first_slot, k)
            self._bind_outputs(binding, k)
            self._prefill_bindings[(graph, first_slot, k)] = binding
        # Bound per call: a host input bound here is copied to the device at once on a GPU.
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(ids, np.int64))
        binding.bind_cpu_input(
            "position_ids", np.repeat(np.arange(start, start + t, dtype=np.int64)[None], k, 0)
        )
        binding.bind_cpu_input("seqlens_k", np.full(k, start + t - 1, np.int32))
        binding.bind_cpu_input("total_sequence_length", np.array(start + t, np.int32))
        if self.indexed:  # the last position's logits, or every position's
            picked = np.arange(t, dtype=np.int64) if every is not None and every.size else np.array([t - 1])
            binding.bind_cpu_input("logits_indices", picked)
        session.run_with_iobinding(binding, self._graph_options(-1) if self._graphs else None)
        return self._tokens[:k].copy(), lambda: self._logits_rows(k)

    def mixed_call(self, forward: Forward) -> tuple[np.ndarray, Callable[[], np.ndarray]]:
        """A step's decode call (its first `decode_rows` rows: slots 0..n-1, one token each)
        and its prefill call (the rest: consecutive slots, one start, one length; or, at
        position 0, any lengths, padded on the right to the longest) in one call of the mixed
        session; returns each row's greedy token and a function giving their logits, in the
        forward's row order."""
        if self.mixed is None or forward.graph != self.mixed_graph:
            raise RuntimeError(
                f"a mixed call for graph {forward.graph!r}; this runner mixes {self.mixed_graph}"
            )
        n, rows = forward.decode_rows, forward.rows
        k = rows - n
        first, start = forward.slots[n], int(forward.starts[n])
        lens = forward.lens[n:]
        t = int(lens.max())
        ids = np.ascontiguousarray(forward.ids, np.int64)
        if (lens != t).any():
            # Rows of different lengths, each padded on the right: GroupQueryAttention's first
            # prompt reads each row's own length (`seqlens_k`); a padding position's keys and
            # values land past the row's end, where its next tokens overwrite them.
            if start:
                raise ValueError(f"prompt rows of {sorted(set(lens.tolist()))} tokens past position 0")
            chunk = np.zeros((k, t), np.int64)
            chunk[np.arange(t)[None] < lens[:, None]] = ids[n:]
            ids = np.concatenate([ids[:n], chunk.reshape(-1)])
        key = (n, first, k)
        binding = self._mixed_bindings.get(key)
        if binding is None:
            binding = self.mixed.io_binding()
            self._bind_kv(binding, 0, n)
            self._bind_kv(binding, first, k, prefix=CHUNK_PREFIX)
            self._bind_outputs(binding, rows)
            self._mixed_bindings[key] = binding
            if len(self._mixed_bindings) > MIXED_BINDINGS:
                self._mixed_bindings.popitem(last=False)
        else:
            self._mixed_bindings.move_to_end(key)
        decode_starts = forward.starts[:n]
        positions = np.concatenate([decode_starts, np.tile(np.arange(start, start + t, dtype=np.int64), k)])
        binding.bind_cpu_input("input_ids", ids[None])
        binding.bind_cpu_input("position_ids", positions[None])
        binding.bind_cpu_input("seqlens_k", decode_starts.astype(np.int32))
        binding.bind_cpu_input("total_sequence_length", np.array(int(decode_starts.max()) + 1, np.int32))
        binding.bind_cpu_input(CHUNK_PREFIX + "seqlens_k", (start + lens - 1).astype(np.int32))
        binding.bind_cpu_input(CHUNK_PREFIX + "total_sequence_length", np.array(start + t, np.int32))
        binding.bind_cpu_input(
            "logits_indices", np.concatenate([np.arange(n), n - 1 + t * np.arange(k) + lens]).astype(np.int64)
        )
        self.mixed.run_with_iobinding(binding)
        return self._tokens[:rows].copy(), lambda: self._logits_rows(rows)

    def _logits_rows(self, n: int) -> np.ndarray:
        if self._logits_dev is None:
            return self._logits[:n]
        return self._logits_dev.numpy()[:n]
