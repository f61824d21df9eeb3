"""Triton Python-backend model `gpt2`: decoupled streaming text generation.

The interface of Triton's LLM backends (vLLM, TensorRT-LLM): in `text_input` BYTES,
optional `stream` BOOL, `sampling_parameters` BYTES (vLLM's JSON), `exclude_input_in_output`
BOOL and TensorRT-LLM's optional sampling tensors (`sampling.TENSOR_INPUTS`: `max_tokens`,
`temperature`, `random_seed`, `stop_words`, ...); out `text_output` BYTES. Both schemas become
one `SamplingParams`. TensorRT-LLM's optional `stop` BOOL: a request with `stop` true ends
the requests in flight with the same request id (their slots are freed at the next step) and
gets one empty final response; this stops a stream without cancelling the gRPC call.

This file only converts Triton requests into engine requests and engine results into
responses; the generation itself (KV slots, chunked prefill, in-flight batching, sampling)
is the `engine` package beside it in the version folder, which knows nothing of Triton. The
engine's settings are this model's config parameters (`EngineConfig.from_parameters`).

Threads: `execute` checks and tokenizes each request and submits it; one generation thread
runs `Engine.run` (wait for work, step, end the requests whose clients went away); responses
go out on a sender thread so Triton's IPC (~0.5 ms a response) overlaps the next step,
except a request's first response, which the generation thread sends at once (time to
first token). A metrics thread moves the engine's counts and latency samples into Triton's
metrics endpoint every `metrics_interval_s` (`engine.metrics`).
"""

import collections
import json
import os
import sys
import threading
import time
import traceback

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the engine package beside it
from engine import metrics as llm_metrics  # noqa: E402
from engine.config import EngineConfig  # noqa: E402
from engine.loader import load_engine  # noqa: E402
from engine.request_schema import SAMPLING_KEYS, TENSOR_INPUTS, RequestError, params_from_request  # noqa: E402
from engine.types import FinishReason, QueueFullError, Sink  # noqa: E402

# The vLLM backend's optional additional outputs: (input flag, output).
EXTRA_OUTPUTS = (
    ("return_finish_reason", "finish_reason"),
    ("return_num_input_tokens", "num_input_tokens"),
    ("return_num_output_tokens", "num_output_tokens"),
    ("return_logprobs", "logprobs"),
)
# The engine's reasons in vLLM's words (OpenAI's finish_reason): EOS and stop strings are "stop".
FINISH_REASONS = {
    FinishReason.STOP: "stop",
    FinishReason.EOS: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.CANCELLED: "abort",
}
_SAMPLING_TENSORS = frozenset(name for name, _, _, _ in TENSOR_INPUTS)


def _parameters(config):
    """The model config's parameters as strings."""
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def _threads(params):
    """The runtime's intra-op threads (0: its default, one per core)."""
    text = params.get("intra_op_threads") or "0"
    try:
        threads = int(text)
    except ValueError:
        raise ValueError(f"parameter intra_op_threads must be an integer >= 0, got {text!r}") from None
    if threads < 0:
        raise ValueError(f"parameter intra_op_threads must be an integer >= 0, got {text!r}")
    return threads


def _inputs(request):
    """The request's input tensors by name, read once: `pb_utils.get_input_tensor_by_name`
    walks every input again on each call, and a request asks for a dozen optional ones
    (that cost 0.2-0.3 ms of the first token's way in)."""
    return {t.name(): t for t in request.inputs()}


def _optional_scalar(inputs, name):
    tensor = inputs.get(name)
    if tensor is None:
        return None
    arr = tensor.as_numpy()
    if arr.size != 1:
        raise RequestError(f"{name} must hold exactly one value, got shape {list(arr.shape)}")
    return arr.reshape(-1)[0]


class _ResponseSender:
    """Responses leave off the generation thread, on one sender thread.

    A stream's text is queued per request: while the sender is busy with other responses,
    the text a stream generates meanwhile collects and goes out together in its next
    response (so the cost of Triton's IPC, ~0.5-2 ms a response, is paid per response and
    not per token when many streams run). No text waits while the sender is free, and a
    stream's first response is sent by the generation thread at once. A request's final
    response carries the text still pending. With `stream_interval` N > 1 a stream's text
    waits until N pieces have collected (fewer responses, each carrying more)."""

    def __init__(self, interval: int = 1):
        self.interval = interval  # a stream's text pieces a response waits for (`stream_interval`)
        self.cond = threading.Condition()
        self.ready = collections.deque()  # requests with something to send, each once
        self.closed = False
        self.responses = 0  # sent so far (the metrics thread reads it)
        self.thread = threading.Thread(target=self._run, name="gpt2-responses", daemon=True)
        self.thread.start()

    def send_now(self, sender, response=None, flags=0):
        try:
            if response is None:
                sender.send(flags=flags)
            else:
                sender.send(response, flags=flags)
            self.responses += 1
        except Exception as exc:  # a client gone away must not stop the others' responses
            pb_utils.Logger.log_warn(f"gpt2: could not send a response: {exc}")

    def text(self, request, text):
        """Queue a stream's next text."""
        job = request.context
        with self.cond:
            job.pending.append(text)
            job.pending_tokens = request.generated
            if len(job.pending) >= self.interval:
                self._ready(request)

    def finish(self, request):
        """Queue a request's final response (after the text already queued)."""
        with self.cond:
            request.context.finished = True
            request.context.pending_tokens = request.generated
            self._ready(request)

    def _ready(self, request):
        job = request.context
        if not job.queued:
            job.queued = True
            self.ready.append(request)
            self.cond.notify()

    def _run(self):
        while True:
            with self.cond:
                while not self.ready and not self.closed:
                    self.cond.wait()
                if not self.ready:
                    return
                request = self.ready.popleft()
                job = request.context
                job.queued = False
                text, job.pending = "".join(job.pending), []
                tokens, finished = job.pending_tokens, job.finished
            try:
                self._send(request, text, tokens, finished)
            except Exception as exc:  # building a response failed: that request only
                pb_utils.Logger.log_error(f"gpt2: a response could not be built: {exc}")

    def _send(self, request, text, tokens, finished):
        job = request.context
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if not finished:
            self.send_now(job.sender, _text_response(text, _extras(request, tokens)))
            return
        reason = request.finish_reason
        if reason in (FinishReason.ERROR, FinishReason.TIMEOUT):
            if text:
                self.send_now(job.sender, _text_response(text, _extras(request, tokens)))
            self.send_now(job.sender, _error_response(request.error), flags=final)
        elif job.stream:
            if not job.answered and job.prefix:  # nothing was streamed: the prompt goes first
                text = job.prefix + text
            extras = _extras(request, tokens, final=True)
            response = _text_response(text, extras) if text else _outputs_response(extras)
            self.send_now(job.sender, response, flags=final)
        elif reason is FinishReason.CANCELLED:
            self.send_now(job.sender, _outputs_response(_extras(request, tokens, final=True)), flags=final)
        else:
            whole = job.prefix + "".join(job.text)
            self.send_now(
                job.sender, _text_response(whole, _extras(request, tokens, final=True)), flags=final
            )

    def close(self, timeout):
        """Send what is queued, then stop."""
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join(timeout=timeout)


class _Job:
    """What the adapter keeps per request (the engine's `Request.context`)."""

    __slots__ = (
        "sender",
        "stream",
        "prefix",
        "text",
        "answered",
        "request_id",
        "extras",
        "reported",
        "pending",
        "pending_tokens",
        "queued",
        "finished",
        "logprobs_sent",
    )

    def __init__(self, sender, stream, prefix, request_id="", extras=()):
        self.sender, self.stream, self.prefix, self.text = sender, stream, prefix, []
        self.request_id = request_id
        self.extras = extras  # the vLLM backend's additional outputs asked for (EXTRA_OUTPUTS)
        self.reported = 0  # output tokens counted in the responses sent so far
        self.answered = False  # a response has gone out (the first one is sent inline)
        self.pending = []  # stream text waiting for the sender (`_ResponseSender`)
        self.pending_tokens = 0  # the request's output tokens that text covers
        self.queued = False  # in the sender's queue
        self.finished = False  # its final response is queued
        self.logprobs_sent = -1  # generated tokens whose log-probabilities went out (-1: not the prompt's)


class _TritonSink(Sink):
    def __init__(self, responses):
        self.responses = responses
        self.first_sent = False  # a stream's first response went out in this step

    def on_text(self, request, text):
        job = request.context
        if not job.stream:
            job.text.append(text)
            return
        if not job.answered:  # first token: send from the generation thread, now
            job.answered = True
            extras = _extras(request, request.generated)
            self.responses.send_now(job.sender, _text_response(job.prefix + text, extras))
            self.first_sent = True
        else:
            self.responses.text(request, text)

    def on_finish(self, request):
        self.responses.finish(request)


class _MetricsExporter:
    """The engine's `EngineStats` as Python-backend custom metrics (`llm_metrics.METRICS`),
    labelled with the model and version, flushed from this thread every `interval_s`."""

    def __init__(self, engine, responses, labels, interval_s):
        self.engine, self.responses, self.interval_s = engine, responses, interval_s
        kinds = {
            "histogram": pb_utils.MetricFamily.HISTOGRAM,
            "counter": pb_utils.MetricFamily.COUNTER,
            "gauge": pb_utils.MetricFamily.GAUGE,
        }
        self.families = {
            name: (pb_utils.MetricFamily(name=name, description=text, kind=kinds[kind]), buckets)
            for name, kind, text, buckets in llm_metrics.METRICS
        }
        self.labels = labels
        self.metrics = {}
        self.sent = {}  # counter -> the total sent so far (counters take increments)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="gpt2-metrics", daemon=True)
        self.thread.start()

    def metric(self, name, **extra):
        key = (name, tuple(sorted(extra.items())))
        if key not in self.metrics:
            family, buckets = self.families[name]
            labels = {**self.labels, **extra}
            self.metrics[key] = (
                family.Metric(labels=labels, buckets=list(buckets))
                if buckets
                else family.Metric(labels=labels)
            )
        return self.metrics[key]

    def count(self, name, total, **extra):
        key = (name, tuple(sorted(extra.items())))
        delta = total - self.sent.get(key, 0)
        if delta > 0:
            self.metric(name, **extra).increment(delta)
            self.sent[key] = total

    def flush(self):
        stats, engine = self.engine.stats, self.engine
        for name, samples in (
            (llm_metrics.TTFT, stats.ttft),
            (llm_metrics.ITL, stats.itl),
            (llm_metrics.E2E, stats.e2e),
        ):
            values = llm_metrics.drain(samples)
            if values:
                metric = self.metric(name)
                for value in values:
                    metric.observe(value)
        self.count(llm_metrics.PROMPT_TOKENS, stats.prompt_tokens)
        self.count(llm_metrics.GENERATION_TOKENS, stats.generation_tokens)
        self.count(llm_metrics.RESPONSES, self.responses.responses)
        self.count(llm_metrics.PREEMPTIONS, stats.preemptions)
        self.count(llm_metrics.ROWS_MOVED, stats.rows_moved)
        self.count(llm_metrics.PREFIX_QUERIES, stats.prefix_queries)
        self.count(llm_metrics.PREFIX_HITS, stats.prefix_hits)
        totals = {}
        for reason, n in list(stats.ended.items()):
            family, label = llm_metrics.FINISH_LABELS[reason]
            totals[(family, label)] = totals.get((family, label), 0) + n
        for reason, n in list(stats.refused.items()):
            totals[(llm_metrics.FAILURE, reason)] = n
        for (family, label), n in totals.items():
            if family == llm_metrics.SUCCESS:
                self.count(family, n, finished_reason=label)
            else:
                self.count(family, n, reason=label)
        slots, free = engine.runner.caps.max_rows, engine.free_slots  # the rows, not --slots
        self.metric(llm_metrics.RUNNING).set(len(engine.running))
        self.metric(llm_metrics.WAITING).set(engine.waiting)
        self.metric(llm_metrics.KV_FREE).set(free)
        self.metric(llm_metrics.KV_TOTAL).set(slots)
        self.metric(llm_metrics.KV_USAGE).set(engine.kv_usage())

    def _run(self):
        while not self.stop.wait(self.interval_s):
            try:
                self.flush()
            except Exception as exc:  # metrics must never take generation down
                pb_utils.Logger.log_warn(f"gpt2 metrics: {exc}")

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException(
                "gpt2 must be configured decoupled (model_transaction_policy)"
            )
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        params = _parameters(config)
        providers = None
        if args.get("model_instance_kind") == "GPU":
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.responses = _ResponseSender()
        self.sink = _TritonSink(self.responses)
        try:
            engine_config = EngineConfig.from_parameters(params)
            self.responses.interval = engine_config.stream_interval
            threads = _threads(params)
            self.engine = load_engine(
                version_dir,
                engine_config,
                self.sink,
                intra_op_threads=threads,
                providers=providers,
                own_process=True,  # this stub process runs gpt2 alone
            )
        except (
            Exception
        ) as exc:  # a bad setting, a missing or unreadable file: named, and nothing left running
            self.responses.close(timeout=1)
            raise pb_utils.TritonModelException(f"gpt2: {exc}") from exc
        self.max_tokens_limit = min(engine_config.max_tokens_limit, self.engine.max_len - 1)
        # Only where a call takes every core is there none left for the first response's way
        # out: a GPU's calls leave the host's cores free, as do fewer threads than cores.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        every_core = self.engine.runner.caps.device == "cpu" and (threads == 0 or threads >= cores)
        self.first_token_yield_s = engine_config.first_token_yield_ms / 1e3 if every_core else 0.0
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="gpt2-generation", daemon=True)
        self.thread.start()
        self.metrics = None
        if engine_config.metrics_interval_s > 0 and hasattr(pb_utils, "MetricFamily"):
            labels = {"model": args["model_name"], "version": args["model_version"]}
            self.metrics = _MetricsExporter(
                self.engine, self.responses, labels, engine_config.metrics_interval_s
            )
        runner, info, caps = self.engine.runner, self.engine.runner.info, self.engine.runner.caps
        pb_utils.Logger.log_info(f"gpt2: {runner.describe()}, numpy {np.__version__}")
        pb_utils.Logger.log_info(
            f"gpt2 ready: {info['n_layer']} layers, context {info['n_positions']}; KV cache {caps.max_rows} slots x "
            f"{caps.max_len} positions, {caps.kv_dtype.name}, {caps.kv_bytes / 2**20:.0f} MiB on {caps.device}, "
            f"allocated once"
        )

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                inputs = _inputs(request)
                if _optional_scalar(inputs, "stop"):
                    self._stop(request.request_id())
                    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    continue
                if _optional_scalar(inputs, "return_assets"):
                    sender.send(self._assets(), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    continue
                prompt_ids, params, job = self._parse(request, inputs, sender)
                self.engine.submit(prompt_ids, params, context=job)
                self.wake.set()
            except RequestError as exc:
                self.engine.stats.refused["busy" if isinstance(exc, QueueFullError) else "rejected"] += 1
                sender.send(_error_response(str(exc)), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception as exc:  # never let one bad request take the model down
                sender.send(
                    _error_response(f"internal error: {exc}"),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
        return None

    def _stop(self, request_id):
        """TensorRT-LLM's `stop`: end the unfinished requests that carry `request_id`. None
        left (it finished meanwhile) is not an error: stopping is idempotent."""
        if not request_id:
            raise RequestError("stop needs the id of the request to stop: send it as this request's id")
        for req in self.engine.requests():
            if req.context.request_id == request_id:
                self.engine.cancel(req)
        self.wake.set()

    def _parse(self, request, inputs, sender):
        raw = _optional_scalar(inputs, "text_input")
        given_ids = inputs.get("input_ids")
        if raw is None and given_ids is None:
            raise RequestError("text_input (or input_ids, the prompt as token ids) is required")
        if raw is not None and given_ids is not None:
            raise RequestError("text_input and input_ids are both given: send the prompt once")
        prompt = None
        if raw is not None:
            try:
                prompt = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            except UnicodeDecodeError:
                raise RequestError("text_input must be UTF-8 text") from None
        sp = _optional_scalar(inputs, "sampling_parameters")
        sp = sp if sp is not None else _request_parameters(request)
        tensors = {name: t.as_numpy() for name, t in inputs.items() if name in _SAMPLING_TENSORS}
        params = params_from_request(sp, tensors, self.max_tokens_limit)
        stream = _optional_scalar(inputs, "stream")
        exclude = _optional_scalar(inputs, "exclude_input_in_output")
        if prompt is None:
            ids = self.engine.check_prompt(self._token_ids(given_ids.as_numpy()), params)
            prompt = self.engine.tokenizer.decode(ids, skip_special_tokens=False)
        else:
            ids = self.engine.encode_prompt(prompt, params)
        prefix = "" if exclude is None or bool(exclude) else prompt
        stream = bool(stream) if stream is not None else False
        extras = tuple(name for flag, name in EXTRA_OUTPUTS if _optional_scalar(inputs, flag))
        return ids, params, _Job(sender, stream, prefix, request.request_id(), extras)

    def _assets(self):
        """This version's tokenizer.json and model_info.json, as one JSON object."""
        info = dict(self.engine.runner.info)
        data = {"tokenizer": self.engine.tokenizer.to_str(), "model_info": info}
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("assets", np.array([json.dumps(data).encode()], dtype=np.object_))
            ]
        )

    def _token_ids(self, array):
        vocab = int(self.engine.runner.info["vocab_size"])
        ids = np.asarray(array).reshape(-1)
        if not np.issubdtype(ids.dtype, np.integer) or ids.size == 0:
            raise RequestError("input_ids must be a non-empty list of token ids (INT64)")
        bad = ids[(ids < 0) | (ids >= vocab)]
        if bad.size:
            raise RequestError(f"input_ids must hold token ids in 0..{vocab - 1}, got {int(bad[0])}")
        return ids.astype(np.int64).tolist()

    # -- the generation loop (background thread) ---------------------------------------
    def _loop(self):
        # Ends with finalize: Triton calls it once the streams in flight have finished or its
        # exit timeout has passed; whatever is still here ends with a named error, not never.
        self.engine.run(
            self.wake,
            lambda req: req.context.sender.is_cancelled(),
            self.stop,
            on_error=lambda exc: pb_utils.Logger.log_error(
                f"gpt2 generation loop: {exc}\n{''.join(traceback.format_exception(exc))}"
            ),
            shutdown_message="server is shutting down: gpt2 is being unloaded; retry on another server",
            after_step=self._after_step,
        )

    def _after_step(self):
        """After a step that sent streams their first token: the cores to the response's way
        out (`first_token_yield_ms`) before the next call takes them all."""
        if self.sink.first_sent:
            self.sink.first_sent = False
            if self.first_token_yield_s > 0:
                time.sleep(self.first_token_yield_s)

    def finalize(self):
        started = time.monotonic()
        self.stop.set()
        self.wake.set()
        self.thread.join(timeout=5)
        self.responses.close(timeout=5)
        if self.metrics is not None:
            self.metrics.close()
        pb_utils.Logger.log_info(
            f"gpt2 finalize: generation loop {'still running' if self.thread.is_alive() else 'stopped'} "
            f"after {time.monotonic() - started:.2f} s"
        )


def _error_response(message):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


def _text_response(text, extras=()):
    out = pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_))
    return pb_utils.InferenceResponse(output_tensors=[out, *extras])


def _outputs_response(extras):
    """The last response of a stream: no text, the additional outputs asked for (if any)."""
    return pb_utils.InferenceResponse(output_tensors=list(extras)) if extras else None


def _extras(request, tokens, final=False):
    """The vLLM backend's additional outputs a request asked for, for the response going out
    now: `num_output_tokens` the tokens since the previous response (`tokens`: the output
    tokens this response's text covers), `num_input_tokens` the prompt's, `finish_reason`
    vLLM's word on the last response ("" before it)."""
    job = request.context
    if not job.extras:
        return ()
    out = []
    for name in job.extras:
        if name == "finish_reason":
            word = FINISH_REASONS.get(request.finish_reason, "") if final else ""
            out.append(pb_utils.Tensor(name, np.array([word.encode()], dtype=np.object_)))
        elif name == "num_input_tokens":
            out.append(pb_utils.Tensor(name, np.array([len(request.prompt_ids)], dtype=np.uint32)))
        elif name == "logprobs":
            out.append(pb_utils.Tensor(name, np.array([_logprobs_json(request, tokens)], dtype=np.object_)))
        else:
            out.append(pb_utils.Tensor(name, np.array([tokens - job.reported], dtype=np.uint32)))
    job.reported = tokens
    return out


def _logprobs_json(request, tokens):
    """The log-probability entries a response carries: the generated tokens' since the
    previous response (up to `tokens`), and the prompt's in the first one."""
    job, out = request.context, {}
    if job.logprobs_sent < 0:
        job.logprobs_sent = 0
        if request.prompt_logprobs is not None:
            out["prompt"] = request.prompt_logprobs
    if request.logprobs is not None:
        out["tokens"] = request.logprobs[job.logprobs_sent : tokens]
        job.logprobs_sent = max(job.logprobs_sent, tokens)
    return json.dumps(out, separators=(",", ":")).encode()


def _request_parameters(request):
    """Sampling fields given as request parameters (Triton's HTTP generate `parameters`)."""
    try:
        params = json.loads(request.parameters() or "{}")
    except ValueError:
        return None
    picked = {k: v for k, v in params.items() if k in SAMPLING_KEYS}
    return picked or None
