"""What the GPT-2 engine measures about its requests, for Triton's metrics endpoint.

The engine records on its generation thread into `EngineStats`: latency samples appended to
deques, token and request counts added to integers; no lock and no IPC on the hot path. The
Triton adapter (`model.py`) drains them on its own thread every `metrics_interval_s` into
Python-backend custom metrics (`pb_utils.MetricFamily`), each an IPC to the server.

The families carry the names and buckets of the vLLM backend's metrics, so dashboards built
for Triton's vLLM backend read them unchanged; what vLLM has no name for is `aigc:`.
`METRICS` is the one table of them (name, kind, help); the exporter, the docs and the
Grafana dashboard test read it.
"""

from __future__ import annotations

from collections import Counter, deque

# Seconds. vLLM's buckets, with finer ones at the low end: a CPU step is ~8 ms, a GPU step ~2 ms.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
ITL_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
)
E2E_BUCKETS = (0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)

TTFT = "vllm:time_to_first_token_seconds"
ITL = "vllm:time_per_output_token_seconds"
E2E = "vllm:e2e_request_latency_seconds"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
SUCCESS = "vllm:request_success_total"
FAILURE = "aigc:request_failure_total"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"
KV_FREE = "aigc:kv_slots_free"
KV_TOTAL = "aigc:kv_slots_total"
RESPONSES = "aigc:responses_total"
PREEMPTIONS = "vllm:num_preemptions_total"
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"
ROWS_MOVED = "aigc:rows_moved_total"

# (name, kind, help, buckets or None)
METRICS = (
    (TTFT, "histogram", "Time from a request's arrival in the engine to its first token.", TTFT_BUCKETS),
    (ITL, "histogram", "Time between consecutive output tokens of a request.", ITL_BUCKETS),
    (E2E, "histogram", "Time from a request's arrival in the engine to its end.", E2E_BUCKETS),
    (PROMPT_TOKENS, "counter", "Prompt tokens of the requests accepted.", None),
    (GENERATION_TOKENS, "counter", "Tokens generated.", None),
    (SUCCESS, "counter", "Requests ended, by finished_reason: stop, length, abort (client stopped).", None),
    (
        FAILURE,
        "counter",
        "Requests failed, by reason: timeout, error, rejected (bad input), busy (queue full).",
        None,
    ),
    (RUNNING, "gauge", "Requests holding a KV slot.", None),
    (WAITING, "gauge", "Requests waiting for a free KV slot.", None),
    (KV_USAGE, "gauge", "Share of the KV slots in use, 0..1.", None),
    (KV_FREE, "gauge", "Free KV slots.", None),
    (KV_TOTAL, "gauge", "KV slots (rows: sequences at once).", None),
    (PREEMPTIONS, "counter", "Requests preempted for KV blocks (recomputed later).", None),
    (PREFIX_QUERIES, "counter", "Prefill tokens looked up in the prefix cache.", None),
    (PREFIX_HITS, "counter", "Prefill tokens found in the prefix cache (not computed).", None),
    (
        ROWS_MOVED,
        "counter",
        "Decoding requests moved down into a slot that emptied below them (ONNX Runtime's rows: "
        "the decode step then computes no padding row there).",
        None,
    ),
    (
        RESPONSES,
        "counter",
        "Responses sent; generated tokens / responses is the tokens a response carries (a busy "
        "sender sends a stream's tokens together).",
        None,
    ),
)

# The engine's FinishReason values -> (family, label) as vLLM names them (EOS is a stop there).
FINISH_LABELS = {
    "stop": (SUCCESS, "stop"),
    "eos": (SUCCESS, "stop"),
    "length": (SUCCESS, "length"),
    "cancelled": (SUCCESS, "abort"),
    "timeout": (FAILURE, "timeout"),
    "error": (FAILURE, "error"),
}


class EngineStats:
    """Samples and counts since the last drain (samples) or since load (counts)."""

    def __init__(self, max_samples: int = 100_000):
        # bounded: an exporter that stops draining costs memory no more than this
        self.ttft: deque[float] = deque(maxlen=max_samples)
        self.itl: deque[float] = deque(maxlen=max_samples)
        self.e2e: deque[float] = deque(maxlen=max_samples)
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.ended: Counter = Counter()  # FinishReason value -> requests
        self.refused: Counter = Counter()  # "rejected" | "busy" -> requests (the adapter counts)
        self.preemptions = 0
        self.prefix_queries = 0  # prefill tokens looked up in the prefix cache
        self.prefix_hits = 0  # ... and found there
        self.rows_moved = 0  # decoding requests moved down into a free slot (a slot runner)


def drain(samples: deque) -> list[float]:
    """Everything in `samples` now, removed; safe while another thread appends."""
    out = []
    for _ in range(len(samples)):
        out.append(samples.popleft())
    return out
