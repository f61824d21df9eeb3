"""The GPT-2 generation engine: KV cache in fixed slots written in place, chunked prefill,
in-flight batching. Nothing here imports Triton; `model.py` only converts requests and
responses. Only numpy, onnxruntime and tokenizers: this file is copied into the model
repository beside `model.py` and `sampling.py`.

The cache is allocated once per engine: per layer a key and a value buffer of shape
`(slots, heads, max_len, head_size)` on the session's device. A request holds one slot from
admission to its end. The exported graph's `GroupQueryAttention` gets the same buffer as
`past` and `present` through IO binding, so a call writes only the new positions of each
row (`seqlens_k` per row) and reads only each row's own length: nothing is copied, padded
or concatenated per token, and rows of different lengths share one batched step.

One `step()`: admit waiting requests into free slots, prefill one chunk of the oldest
prompt (a small chunk while others are decoding, so a long prompt does not stall them),
then one decode step for every decoding slot. Finished, cancelled, timed-out and failed
requests free their slot at once.
"""

from __future__ import annotations

import collections
import enum
import heapq
import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

try:  # in the package (tests, benchmarks) or flat in a repository version folder (Triton)
    from .llm_metrics import EngineStats
    from .ortsession import session_options
    from .sampling import Detokenizer, RequestError, SamplingParams, TokenHistory, sample_token
except ImportError:
    from llm_metrics import EngineStats
    from ortsession import session_options
    from sampling import Detokenizer, RequestError, SamplingParams, TokenHistory, sample_token

_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class FinishReason(str, enum.Enum):
    LENGTH = "length"  # max_tokens reached
    STOP = "stop"  # a stop string appeared
    EOS = "eos"  # the model ended the text
    CANCELLED = "cancelled"  # the client went away
    TIMEOUT = "timeout"  # ran past max_request_seconds
    ERROR = "error"  # failed inside the server


class Status(enum.Enum):
    WAITING = "waiting"  # queued for a free slot
    PREFILLING = "prefilling"  # holds a slot; prompt chunks being written
    DECODING = "decoding"  # one token per step
    FINISHED = "finished"


class QueueFullError(RequestError):
    """Every slot is busy and the waiting queue is full."""


@dataclass(eq=False)
class Request:
    """One generation. `filled` counts the positions of its slot holding valid keys/values."""

    prompt_ids: list[int]
    params: SamplingParams
    deadline: float = math.inf
    context: object = None  # the adapter's own data (response sender, stream flag, ...)
    status: Status = Status.WAITING
    finish_reason: FinishReason | None = None
    error: str | None = None
    slot: int = -1
    filled: int = 0
    generated: int = 0
    next_token: int = -1
    detok: Detokenizer | None = None
    rng: np.random.Generator | None = None
    arrived: float = 0.0
    first_token_at: float | None = None
    last_token_at: float = 0.0
    tokens: list[int] = field(default_factory=list)
    eos: int | None = None  # the token that ends it: the model's EOS, or the request's end_id
    history: TokenHistory | None = None  # only with penalties
    bad_ids: tuple[tuple[int, ...], ...] = ()  # banned token sequences (bad_words)


@dataclass(frozen=True)
class EngineConfig:
    slots: int = 8  # concurrent generations (rows of the KV cache)
    max_len: int = 0  # positions per slot; 0 = the model's context window
    prefill_chunk: int = 64  # at most this many prompt tokens per step while others decode
    # ... and no more than a chunk measured to cost `prefill_budget` x one decode step, so the
    # running streams' inter-token gap at most doubles while a long prompt goes in (0 = a
    # fixed `prefill_chunk`). The cost is fitted online: ms = fixed + per-token x tokens.
    prefill_budget: float = 1.0
    idle_prefill_chunk: int = 512  # prompt tokens per call while nothing is decoding
    max_queue: int = 64  # requests waiting for a slot before new ones are refused
    max_request_seconds: float = 300.0
    cuda_graph: bool = False  # on a GPU: replay captured CUDA graphs for decode steps
    # A CPU version folder with `companion.onnx`: it runs the prefills and/or the decode steps
    # of at least this many rows (0 = none), where the build measured it faster.
    companion_prefill: bool = False
    companion_from_rows: int = 0

    def check(self, n_positions: int) -> None:
        if not 1 <= self.slots <= 1024:
            raise ValueError(f"kv_slots must be in 1..1024, got {self.slots}")
        if not 0 <= self.max_len <= n_positions:
            raise ValueError(
                f"kv_max_len must be in 1..{n_positions} (0 = the context window), got {self.max_len}"
            )
        if self.prefill_chunk < 1 or self.idle_prefill_chunk < 1:
            raise ValueError("prefill_chunk and idle_prefill_chunk must be >= 1")
        if not 0 <= self.prefill_budget <= 100:
            raise ValueError(
                f"prefill_budget must be in 0..100 (0 = fixed chunks), got {self.prefill_budget}"
            )
        if self.max_queue < 0:
            raise ValueError(f"max_queue_size must be >= 0, got {self.max_queue}")


class Sink:
    """Where the engine delivers results; the Triton adapter sends responses, tests record."""

    def on_text(self, request: Request, text: str) -> None:  # a non-empty piece of output text
        pass

    def on_finish(self, request: Request) -> None:  # finish_reason (and error) are set
        pass


# -- the cache and the model -----------------------------------------------------------------


class KVSlots:
    """`2 x layers` buffers of `(slots, heads, max_len, head_size)`, allocated and touched once;
    with `block_size`, `(slots x max_len / block_size, heads, block_size, head_size)` blocks
    (a paged-attention runner: slot `s` owns the `s`-th run of `max_len / block_size` blocks)."""

    def __init__(
        self, n_layer, n_head, head_size, slots, max_len, dtype, device="cpu", device_id=0, block_size=0
    ):
        if block_size:
            self.shape = (slots * max_len // block_size, n_head, block_size, head_size)
        else:
            self.shape = (slots, n_head, max_len, head_size)
        self.dtype = np.dtype(dtype)
        self.device, self.device_id = device, device_id
        self.slot_bytes = n_head * max_len * head_size * self.dtype.itemsize
        self.nbytes = 2 * n_layer * slots * self.slot_bytes
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
        self._free = list(range(slots))
        heapq.heapify(self._free)

    @property
    def buffers(self) -> list:
        """The host arrays (CPU) or device OrtValues, key then value per layer."""
        return self._buffers

    @property
    def free(self) -> int:
        return len(self._free)

    def acquire(self) -> int | None:
        """The lowest free slot (keeps the decoding rows packed at the start)."""
        return heapq.heappop(self._free) if self._free else None

    def release(self, slot: int) -> None:
        heapq.heappush(self._free, slot)


class OrtGpt2:
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
        companion_prefill: bool = False,
        companion_from_rows: int = 0,
        shared_pool: bool = False,
    ):
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
        # beside int4) shares the KV slots: it runs the prefills and/or the decode steps from
        # `companion_from_rows` rows, where its measured profile is faster (`aigc build`).
        companion = os.path.join(model_dir, "companion.onnx")
        pair = (
            os.path.isfile(companion)
            and "CUDAExecutionProvider" not in [p if isinstance(p, str) else p[0] for p in providers]
            and bool(companion_prefill or companion_from_rows)
        )
        opts = session_options(intra_op_threads)
        if pair and shared_pool:
            # Both graphs on one thread pool: with a pool each, the threads of the graph that
            # just ran spin on the cores the other needs, which doubles the prefill after
            # decode steps (benchmarks/pair-thread-pool.md).
            # The pool is process-wide: once it exists, ONNX Runtime refuses sessions with
            # their own pools, so only a process of its own (`shared_pool`) takes it.
            ort.set_global_thread_pool_sizes(intra_op_threads, 1)
            opts = session_options(shared_pool=True)
        self.session = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), opts, providers=providers)
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.companion = None
        self.companion_prefill = False
        self.companion_from_rows = 0
        if pair:
            self.companion = ort.InferenceSession(companion, opts, providers=providers)
            self.companion_prefill, self.companion_from_rows = companion_prefill, companion_from_rows
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
        self.slots, self.max_len = slots, max_len
        self.kv = KVSlots(
            self.n_layer, self.n_head, self.head_size, slots, max_len, self.kv_dtype, self.device
        )
        self.kv_names = [
            (f"past_{kv}_{i}", f"present_{kv}_{i}") for i in range(self.n_layer) for kv in ("key", "value")
        ]
        # Host arrays that the bindings point at: written in place before every call.
        self._ids = np.zeros((max(slots, 1), 1), np.int64)
        self._pos = np.zeros((max(slots, 1), 1), np.int64)
        self._seqlens = np.zeros(max(slots, 1), np.int32)
        self._total = np.zeros((), np.int32)
        self._tokens = np.zeros(max(slots, 1), np.int64)
        self._logits = np.zeros((max(slots, 1), self.vocab), np.float32)
        self._logits_dev = None
        self._inputs_dev = None
        if self.device != "cpu":
            # On a GPU the per-step inputs live on the device too: IO binding copies a host
            # input to the device once, when it is bound, so they are refreshed in place
            # (`update_inplace`) before each step; only the greedy ids come back to the host.
            self._logits_dev = ort.OrtValue.ortvalue_from_shape_and_type(
                (max(slots, 1), self.vocab), np.float32, self.device, 0
            )
            self._inputs_dev = {
                name: ort.OrtValue.ortvalue_from_numpy(arr, self.device, 0)
                for name, arr in (
                    ("input_ids", self._ids),
                    ("position_ids", self._pos),
                    ("seqlens_k", self._seqlens),
                )
            }
        self._graphs = cuda_graph and self.device == "cuda"
        self._tokens_dev = None
        if self._graphs:  # a captured graph writes only device memory
            self._tokens_dev = ort.OrtValue.ortvalue_from_shape_and_type(
                (max(slots, 1),), np.int64, self.device, 0
            )
        self._run_options: dict[int, object] = {}  # graph id -> RunOptions
        self._decode_bindings: dict[int, object] = {}
        self._prefill_bindings: dict[int, object] = {}

    @property
    def runtime_description(self) -> str:
        import onnxruntime as ort

        return (
            f"onnxruntime {ort.__version__} from {os.path.dirname(ort.__file__)}, "
            f"providers {self.session.get_providers()}"
            + (
                f"; companion graph for {'prefills' if self.companion_prefill else ''}"
                f"{' and ' if self.companion_prefill and self.companion_from_rows else ''}"
                f"{f'decode steps of {self.companion_from_rows}+ rows' if self.companion_from_rows else ''}"
                if self.companion is not None
                else ""
            )
        )

    def _bind_kv(self, binding, first_slot: int, rows: int) -> None:
        shape = [rows, self.n_head, self.max_len, self.head_size]
        offset = first_slot * self.kv.slot_bytes
        for (past, present), ptr in zip(self.kv_names, self.kv.ptrs):
            binding.bind_input(past, self.kv.device, 0, self.kv_dtype, shape, ptr + offset)
            binding.bind_output(present, self.kv.device, 0, self.kv_dtype, shape, ptr + offset)

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

    def _decode_session(self, rows: int):
        if self.companion is not None and self.companion_from_rows and rows >= self.companion_from_rows:
            return self.companion
        return self.session

    def _decode_binding(self, rows: int):
        binding = self._decode_bindings.get(rows)
        if binding is None:
            binding = self._decode_session(rows).io_binding()
            shapes = {"input_ids": [rows, 1], "position_ids": [rows, 1], "seqlens_k": [rows]}
            hosts = {"input_ids": self._ids, "position_ids": self._pos, "seqlens_k": self._seqlens}
            for name, host in hosts.items():
                if self._inputs_dev is None:
                    binding.bind_input(name, "cpu", 0, host.dtype, shapes[name], host.ctypes.data)
                else:
                    dev = self._inputs_dev[name]
                    binding.bind_input(name, self.device, 0, host.dtype, shapes[name], dev.data_ptr())
            # GroupQueryAttention reads this one on the host on every device.
            binding.bind_input("total_sequence_length", "cpu", 0, np.int32, [], self._total.ctypes.data)
            self._bind_kv(binding, 0, rows)
            self._bind_outputs(binding, rows, graph=self._graphs)
            self._decode_bindings[rows] = binding
        return binding

    def decode(
        self, tokens: np.ndarray, positions: np.ndarray
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
        self._total[...] = self.max_len if self._graphs else int(positions.max()) + 1
        if self._inputs_dev is not None:
            for name, host in (
                ("input_ids", self._ids),
                ("position_ids", self._pos),
                ("seqlens_k", self._seqlens),
            ):
                self._inputs_dev[name].update_inplace(host)
        if self._graphs:
            self.session.run_with_iobinding(self._decode_binding(n), self._graph_options(n))
            return self._tokens_dev.numpy()[:n], lambda: self._logits_rows(n)
        self._decode_session(n).run_with_iobinding(self._decode_binding(n))
        return self._tokens[:n].copy(), lambda: self._logits_rows(n)

    def prefill(
        self, slot: int, ids: list[int] | np.ndarray, start: int
    ) -> tuple[int, Callable[[], np.ndarray]]:
        """Write the keys/values of `ids` at positions `start..` of `slot`; returns the greedy
        next token and a function giving its (vocab,) logits."""
        tokens, logits = self.prefill_rows(slot, np.asarray(ids, np.int64)[None], start)
        return int(tokens[0]), lambda: logits()[0]

    def prefill_rows(
        self, first_slot: int, ids: np.ndarray, start: int
    ) -> tuple[np.ndarray, Callable[[], np.ndarray]]:
        """`ids` (k, t): chunks of the same length for slots `first_slot..first_slot+k-1`,
        each written at positions `start..start+t-1`; returns greedy tokens (k,) and a function
        giving the (k, vocab) logits."""
        k, t = ids.shape
        session = self.companion if self.companion_prefill else self.session
        binding = self._prefill_bindings.get((first_slot, k))
        if binding is None:
            binding = session.io_binding()
            self._bind_kv(binding, first_slot, k)
            self._bind_outputs(binding, k)
            self._prefill_bindings[(first_slot, k)] = binding
        # Bound per call: a host input bound here is copied to the device at once on a GPU.
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(ids, np.int64))
        binding.bind_cpu_input(
            "position_ids", np.repeat(np.arange(start, start + t, dtype=np.int64)[None], k, 0)
        )
        binding.bind_cpu_input("seqlens_k", np.full(k, start + t - 1, np.int32))
        binding.bind_cpu_input("total_sequence_length", np.array(start + t, np.int32))
        session.run_with_iobinding(binding, self._graph_options(-1) if self._graphs else None)
        return self._tokens[:k].copy(), lambda: self._logits_rows(k)

    def _logits_rows(self, n: int) -> np.ndarray:
        if self._logits_dev is None:
            return self._logits[:n]
        return self._logits_dev.numpy()[:n]


# -- the scheduler ---------------------------------------------------------------------------


class _CostFit:
    """ms = fixed + per_token x tokens, least squares over recent calls (older ones fade)."""

    def __init__(self, keep: float = 0.95):
        self.keep = keep
        self.sums = np.zeros(5)  # weight, t, ms, t*t, t*ms

    def add(self, tokens: int, ms: float) -> None:
        self.sums = self.keep * self.sums + np.array([1.0, tokens, ms, tokens * tokens, tokens * ms])

    def tokens_within(self, budget_ms: float) -> int | None:
        """Most tokens one call can take within `budget_ms`, but never so few that the fixed
        part (a pass over the weights) is over two thirds of a chunk's cost: smaller chunks
        would spend most of the machine on weight passes. None until two sizes were seen."""
        w, t, ms, tt, tm = self.sums
        var = w * tt - t * t
        if w < 2 or var <= 1e-9 * max(w * tt, 1.0):
            return None
        per_token = (w * tm - t * ms) / var
        fixed = (ms - per_token * t) / w
        if per_token <= 0:
            return None  # cost does not grow with tokens here (a GPU): no limit from the budget
        within = math.floor((budget_ms - fixed) / per_token + 1e-6)  # 1e-6: a fit's rounding
        return max(within, math.ceil(fixed / (2 * per_token) - 1e-6))


class _Ema:
    def __init__(self, keep: float = 0.9):
        self.keep, self.value = keep, None

    def add(self, x: float) -> None:
        self.value = x if self.value is None else self.keep * self.value + (1 - self.keep) * x


class Engine:
    """Requests in, text out through a `Sink`. `submit` and `cancel` may be called from any
    thread; `step` runs on one thread (the generation loop)."""

    def __init__(
        self,
        model: OrtGpt2,
        tokenizer,
        config: EngineConfig,
        sink: Sink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.sink = sink or Sink()
        self.clock = clock
        self.eos = model.info.get("eos_token_id")
        self.max_len = model.max_len
        self.running: list[Request] = []  # holding a slot, in admission order
        self._waiting: collections.deque[Request] = collections.deque()
        self._cancelled: list[Request] = []  # the objects, not ids: an id can be reused
        self._lock = threading.Lock()
        self._prefill_cost = _CostFit()
        self._decode_ms = _Ema()
        self.stats = EngineStats()  # for the metrics endpoint (llm_metrics)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def free_slots(self) -> int:
        return self.model.kv.free

    def has_work(self) -> bool:
        return bool(self.running or self._waiting)

    def requests(self) -> list[Request]:
        """Every unfinished request: running ones, then waiting ones."""
        with self._lock:
            return [*self.running, *self._waiting]

    # -- requests in -------------------------------------------------------------------------
    def encode_prompt(
        self, prompt: str, params: SamplingParams, max_prompt_tokens: int | None = None
    ) -> list[int]:
        if not prompt:
            raise RequestError("text_input must be a non-empty string")
        ids = self.tokenizer.encode(prompt).ids
        return self.check_prompt(ids, params, max_prompt_tokens)

    def check_prompt(
        self, ids: list[int], params: SamplingParams, max_prompt_tokens: int | None = None
    ) -> list[int]:
        window = self.max_len
        limit = min(max_prompt_tokens or window - 1, window - 1)
        if not ids:
            raise RequestError("text_input encodes to no tokens")
        if len(ids) > limit:
            raise RequestError(
                f"text_input has {len(ids)} tokens; the limit is {limit} (context window {window})"
            )
        if len(ids) + params.max_tokens > window:
            raise RequestError(
                f"max_tokens {params.max_tokens} + {len(ids)} prompt tokens exceed the context window of "
                f"{window}; max_tokens must be <= {window - len(ids)} for this prompt"
            )
        vocab = int(self.model.info["vocab_size"])
        if params.end_id is not None and params.end_id >= vocab:
            raise RequestError(f"end_id must be a token id in 0..{vocab - 1}, got {params.end_id}")
        if any(t >= vocab for t in params.stop_token_ids):
            raise RequestError(f"stop_token_ids must be token ids in 0..{vocab - 1}")
        return list(ids)

    def submit(self, prompt_ids: list[int], params: SamplingParams, context=None) -> Request:
        """Queue a request (prompt already checked). QueueFullError when every slot is busy
        and `max_queue` requests already wait: the running ones are not disturbed."""
        now = self.clock()
        req = Request(
            list(prompt_ids), params, deadline=now + self.config.max_request_seconds, context=context
        )
        req.arrived = now
        req.detok = Detokenizer(self.tokenizer, params.stop, params.min_tokens)
        req.rng = None if params.greedy else np.random.Generator(np.random.PCG64(params.seed))
        req.eos = self.eos if params.end_id is None else params.end_id
        req.history = TokenHistory(req.prompt_ids) if params.penalized else None
        req.bad_ids = self._bad_word_ids(params.bad_words)
        with self._lock:
            # Requests beyond the free slots wait; at most `max_queue` of them.
            if len(self._waiting) >= self.model.kv.free + self.config.max_queue:
                raise QueueFullError(
                    f"server busy: all {self.config.slots} KV slots in use and {len(self._waiting)} requests "
                    f"waiting (max_queue_size {self.config.max_queue}); retry later"
                )
            self._waiting.append(req)
        self.stats.prompt_tokens += len(req.prompt_ids)
        return req

    def cancel(self, req: Request) -> None:
        """Ends `req` at the next step (any thread); its slot is freed then."""
        with self._lock:
            self._cancelled.append(req)

    # -- the loop ----------------------------------------------------------------------------
    def step(self) -> bool:
        """Admit, prefill one chunk, decode one token for every decoding slot. False: idle."""
        self._end_cancelled_and_late()
        self._admit()
        decoding = [r for r in self.running if r.status is Status.DECODING]
        prefilling = [r for r in self.running if r.status is Status.PREFILLING]
        if prefilling:
            budget = (
                self._chunk_tokens(len(prefilling), len(decoding))
                if decoding
                else self.config.idle_prefill_chunk
            )
            group = self._prefill_group(prefilling, budget)
            self._guard(self._prefill, group, budget // len(group))
        decoding = [r for r in self.running if r.status is Status.DECODING]
        if decoding:
            self._guard(self._decode, decoding)
        return bool(prefilling or decoding)

    def _chunk_tokens(self, prefilling: int, decoding: int) -> int:
        """Prompt tokens for this step's chunk while others decode: at most `prefill_chunk`,
        and a chunk measured to cost `prefill_budget` decode steps, scaled by how many
        prompts wait per decoding stream (each request gets a like share of the machine:
        a few running streams are not stalled by one long prompt, and one running stream
        does not starve seven prompts that arrived together)."""
        limit = self.config.prefill_chunk
        if not self.config.prefill_budget or self._decode_ms.value is None:
            return limit
        share = max(1.0, prefilling / decoding)
        fit = self._prefill_cost.tokens_within(self.config.prefill_budget * share * self._decode_ms.value)
        return limit if fit is None else max(1, min(limit, fit))

    @staticmethod
    def _prefill_group(prefilling: list[Request], budget: int) -> list[Request]:
        """The oldest prefilling request, with those that can share its call: next slots, the
        same prompt progress and length (requests that arrived together), within `budget`
        prompt tokens."""
        head = prefilling[0]
        by_slot = {r.slot: r for r in prefilling}
        group = [head]
        chunk = min(budget, len(head.prompt_ids) - head.filled)
        while (len(group) + 1) * chunk <= budget:
            nxt = by_slot.get(group[-1].slot + 1)
            if nxt is None or nxt.filled != head.filled or len(nxt.prompt_ids) != len(head.prompt_ids):
                break
            group.append(nxt)
        return group

    def _prefill(self, group: list[Request], chunk: int) -> None:
        head = group[0]
        ids = np.asarray([r.prompt_ids[head.filled : head.filled + chunk] for r in group], np.int64)
        t0 = time.perf_counter()
        tokens, logits = self.model.prefill_rows(head.slot, ids, head.filled)
        self._prefill_cost.add(ids.size, (time.perf_counter() - t0) * 1e3)
        for i, req in enumerate(group):
            req.filled += ids.shape[1]
            if req.filled == len(req.prompt_ids):
                req.status = Status.DECODING
                self._guard(self._advance, req, int(tokens[i]), lambda i=i: logits()[i])

    def _decode(self, rows: list[Request]) -> None:
        n = max(r.slot for r in rows) + 1  # rows are slots 0..n-1; others idle in place
        tokens = np.zeros(n, np.int64)
        positions = np.zeros(n, np.int64)
        for r in self.running:  # a prefilling slot's dummy row writes where its next chunk will
            if r.slot < n:
                positions[r.slot] = r.filled
        for r in rows:
            tokens[r.slot] = r.next_token
        t0 = time.perf_counter()
        greedy, logits = self.model.decode(tokens, positions)
        self._decode_ms.add((time.perf_counter() - t0) * 1e3)
        for r in rows:
            r.filled += 1
            self._guard(self._advance, r, int(greedy[r.slot]), lambda r=r: logits()[r.slot])

    def _bad_word_ids(self, words: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
        """Each bad word's token ids, spelt with and without a leading space (as vLLM bans
        them at the start of the text and after a word)."""
        seqs = {}
        for word in words:
            for text in (word.lstrip(), " " + word.lstrip()):
                ids = tuple(self.tokenizer.encode(text).ids)
                if ids:
                    seqs[ids] = None
        return tuple(seqs)

    def _banned(self, req: Request) -> list[int]:
        """Tokens `req` may not produce next: its end tokens before `min_tokens` (vLLM's
        min_tokens, transformers' MinNewTokensLength), and the last token of a bad word whose
        other tokens the output ends with."""
        p = req.params
        banned = []
        if req.generated < p.min_tokens:
            if not p.ignore_eos and req.eos is not None:
                banned.append(req.eos)
            banned.extend(p.stop_token_ids)
        for seq in req.bad_ids:
            k = len(seq) - 1
            if k == 0 or (len(req.tokens) >= k and tuple(req.tokens[-k:]) == seq[:-1]):
                banned.append(seq[-1])
        return banned

    def _next_token(self, req: Request, greedy_token: int, logits: Callable[[], np.ndarray]) -> int:
        """The graph's arg-max when it is the answer (greedy, no penalty, not banned); else
        the sampler over the logits."""
        banned = self._banned(req) if req.bad_ids or req.generated < req.params.min_tokens else ()
        if req.params.greedy and req.history is None and greedy_token not in banned:
            return greedy_token
        return sample_token(logits(), req.params, req.rng, req.history, banned)

    def _advance(self, req: Request, greedy_token: int, logits: Callable[[], np.ndarray]) -> None:
        token = self._next_token(req, greedy_token, logits)
        now = self.clock()
        if req.first_token_at is None:
            req.first_token_at = now
            self.stats.ttft.append(now - req.arrived)
        else:
            self.stats.itl.append(now - req.last_token_at)
        req.last_token_at = now
        self.stats.generation_tokens += 1
        req.generated += 1
        req.next_token = token
        req.tokens.append(token)
        if req.history is not None:
            req.history.add(token)
        if token == req.eos and not req.params.ignore_eos:
            text, reason = req.detok.flush(), FinishReason.EOS
        else:
            text = req.detok.push(token)
            reason = None
            if req.detok.stopped:
                reason = FinishReason.STOP
            elif token in req.params.stop_token_ids:
                text += req.detok.flush()
                reason = FinishReason.STOP
            elif req.generated >= req.params.max_tokens or req.filled >= self.max_len:
                text += req.detok.flush()
                reason = FinishReason.STOP if req.detok.stopped else FinishReason.LENGTH
        if text:
            self.sink.on_text(req, text)
        if reason is not None:
            self._finish(req, reason)

    # -- admission and endings ---------------------------------------------------------------
    def _admit(self) -> None:
        with self._lock:
            while self._waiting and self.model.kv.free:
                req = self._waiting.popleft()
                req.slot = self.model.kv.acquire()
                req.status, req.filled = Status.PREFILLING, 0
                self.running.append(req)

    def _end_cancelled_and_late(self) -> None:
        now = self.clock()
        with self._lock:
            cancelled, self._cancelled = self._cancelled, []
            waiting = list(self._waiting)
        for req in [*self.running, *waiting]:
            if any(req is c for c in cancelled):
                self._finish(req, FinishReason.CANCELLED)
            elif now > req.deadline:
                self._finish(
                    req,
                    FinishReason.TIMEOUT,
                    f"request timeout: generation ran past max_request_seconds ({self.config.max_request_seconds:g} s)",
                )

    def _finish(self, req: Request, reason: FinishReason, error: str | None = None) -> None:
        if req.status is Status.FINISHED:
            return
        if req.status is Status.WAITING:
            with self._lock:
                if req in self._waiting:
                    self._waiting.remove(req)
        else:
            self.running.remove(req)
            self.model.kv.release(req.slot)
        req.status, req.finish_reason, req.error = Status.FINISHED, reason, error
        self.stats.ended[reason.value] += 1
        if req.first_token_at is not None:
            self.stats.e2e.append(self.clock() - req.arrived)
        self.sink.on_finish(req)

    def _guard(self, fn, *args) -> None:
        """A failing model call ends the requests it was for, a failing token step (sampling,
        detokenizing, a response) only its own request; the engine keeps serving."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - reported to each request, logged by the adapter
            rows = args[0] if isinstance(args[0], list) else [args[0]]
            for req in rows:
                if req.status is not Status.FINISHED:
                    self._finish(req, FinishReason.ERROR, f"internal error during generation: {exc}")

    def abort_all(self, message: str) -> None:
        """Ends every running and waiting request with `message` (shutdown)."""
        with self._lock:
            waiting = list(self._waiting)
        for req in [*self.running, *waiting]:
            self._finish(req, FinishReason.ERROR, message)

    # -- offline use (tests, profiling) --------------------------------------------------------
    def run_until_done(self, requests: list[Request]) -> None:
        while any(r.status is not Status.FINISHED for r in requests):
            self.step()

    def generate_ids(self, prompt_ids: list[int], params: SamplingParams) -> list[int]:
        req = self.submit(self.check_prompt(prompt_ids, params), params)
        self.run_until_done([req])
        return req.tokens


def runtime_of(model_dir: str) -> str:
    """`openvino` for a folder holding an OpenVINO IR, else `onnxruntime`."""
    return "openvino" if os.path.isfile(os.path.join(model_dir, "openvino_model.xml")) else "onnxruntime"


def load_engine(
    model_dir: str,
    config: EngineConfig,
    sink: Sink | None = None,
    intra_op_threads: int = 0,
    providers=None,
    clock: Callable[[], float] = time.monotonic,
    own_process: bool = False,
) -> Engine:
    """The engine for a repository version folder: `model.onnx` (run by ONNX Runtime) or
    `openvino_model.xml` (run by OpenVINO), `tokenizer.json` and `model_info.json`.
    `own_process`: the engine is the process's only ONNX Runtime user (a Triton Python-backend
    stub), so a pair of graphs may take the process-wide thread pool (`OrtGpt2`)."""
    from tokenizers import Tokenizer

    with open(os.path.join(model_dir, "model_info.json")) as f:
        n_positions = int(json.load(f)["n_positions"])
    config.check(n_positions)
    max_len = config.max_len or n_positions
    if runtime_of(model_dir) == "openvino":
        try:
            from .gpt2_openvino import OvGpt2
        except ImportError:
            from gpt2_openvino import OvGpt2
        model = OvGpt2(model_dir, config.slots, max_len, intra_op_threads)
    else:
        model = OrtGpt2(
            model_dir,
            config.slots,
            max_len,
            intra_op_threads,
            providers,
            config.cuda_graph,
            config.companion_prefill,
            config.companion_from_rows,
            shared_pool=own_process,
        )
    tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    return Engine(model, tokenizer, config, sink, clock)
