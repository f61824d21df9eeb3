"""Triton Python-backend model `gpt2`: decoupled streaming text generation.

The interface of Triton's LLM backends (vLLM, TensorRT-LLM): in `text_input` BYTES,
optional `stream` BOOL, `sampling_parameters` BYTES (JSON), `exclude_input_in_output`
BOOL; out `text_output` BYTES. `execute` only checks each request and queues it; one
background thread runs the generation loop with in-flight batching (every active request
advances by one token per batched decode step; a request joins at the next step and
leaves when it finishes). Responses go out on a second thread, in order, so the IPC of
sending a token to Triton (~0.5 ms measured) overlaps the next decode step instead of
adding to it.
"""

import json
import os
import queue
import sys
import threading
import time
import traceback

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt2_engine import SAMPLING_KEYS, Gpt2Engine, RequestError, parse_sampling_parameters  # noqa: E402


def _param(config, key, default):
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return default if value in (None, "") else type(default)(value)


def _optional_scalar(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    arr = tensor.as_numpy()
    if arr.size != 1:
        raise RequestError(f"{name} must hold exactly one value, got shape {list(arr.shape)}")
    return arr.reshape(-1)[0]


# Cancellation is an IPC round trip to Triton (~0.1-0.2 ms): ask every this many steps.
CANCEL_CHECK_EVERY = 8


class _ResponseSender:
    """One thread sending responses in the order they were queued (per request order is
    what the client sees), so the generation loop never waits on Triton's IPC."""

    def __init__(self):
        self.queue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="gpt2-responses", daemon=True)
        self.thread.start()

    def send(self, sender, response=None, flags=0):
        self.queue.put((sender, response, flags))

    def _run(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            sender, response, flags = item
            try:
                if response is None:
                    sender.send(flags=flags)
                else:
                    sender.send(response, flags=flags)
            except Exception as exc:  # a client gone away must not stop the others' responses
                pb_utils.Logger.log_warn(f"gpt2: could not send a response: {exc}")

    def close(self, timeout):
        self.queue.put(None)
        self.thread.join(timeout=timeout)


class _Job:
    __slots__ = ("sender", "request", "seq", "stream", "prefix", "text", "deadline")

    def __init__(self, sender, request, seq, stream, prefix, deadline):
        self.sender, self.request, self.seq = sender, request, seq
        self.stream, self.prefix, self.text, self.deadline = stream, prefix, [], deadline


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException(
                "gpt2 must be configured decoupled (model_transaction_policy)"
            )
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.max_tokens_limit = _param(config, "max_tokens_limit", 512)
        self.max_prompt_tokens = _param(config, "max_prompt_tokens", 0)
        self.max_batch = _param(config, "max_active_sequences", 16)
        self.max_request_seconds = _param(config, "max_request_seconds", 300.0)
        threads = _param(config, "intra_op_threads", 0)
        providers = None
        if args.get("model_instance_kind") == "GPU":
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.engine = Gpt2Engine(version_dir, intra_op_threads=threads, providers=providers)
        self.queue = queue.Queue()
        self.running = True
        self.responses = _ResponseSender()
        self.thread = threading.Thread(target=self._loop, name="gpt2-generation", daemon=True)
        self.thread.start()
        pb_utils.Logger.log_info(
            f"gpt2 ready: {self.engine.n_layer} layers, context {self.engine.n_positions}, "
            f"past {self.engine.past_dtype.__name__}, providers {self.engine.session.get_providers()}"
        )

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                self.queue.put(self._parse(request, sender))
            except RequestError as exc:
                sender.send(_error_response(str(exc)), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception as exc:  # never let one bad request take the model down
                sender.send(
                    _error_response(f"internal error: {exc}"),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
        return None

    def _parse(self, request, sender):
        raw = _optional_scalar(request, "text_input")
        if raw is None:
            raise RequestError("text_input is required")
        try:
            prompt = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError:
            raise RequestError("text_input must be UTF-8 text") from None
        sp = _optional_scalar(request, "sampling_parameters")
        sp = sp if sp is not None else _request_parameters(request)
        params = parse_sampling_parameters(sp, self.max_tokens_limit)
        stream = _optional_scalar(request, "stream")
        exclude = _optional_scalar(request, "exclude_input_in_output")
        ids = self.engine.encode_prompt(prompt, params, self.max_prompt_tokens or None)
        seq = self.engine.new_sequence(request.request_id(), ids, params)
        prefix = "" if exclude is None or bool(exclude) else prompt
        deadline = time.monotonic() + self.max_request_seconds
        return _Job(sender, request, seq, bool(stream) if stream is not None else False, prefix, deadline)

    # -- the generation loop (background thread) ---------------------------------------
    def _loop(self):
        jobs = {}
        steps = 0
        while self.running:
            try:
                self._admit(jobs)
                if not jobs:
                    continue
                finished, now = [], time.monotonic()
                steps += 1
                check_cancel = steps % CANCEL_CHECK_EVERY == 0
                for seq, token in self.engine.step():
                    job = jobs[id(seq)]
                    self._emit(job, token)
                    if not seq.finished and now > job.deadline:
                        self._fail(
                            job.sender,
                            f"request timeout: generation ran past max_request_seconds "
                            f"({self.max_request_seconds:g} s)",
                        )
                        job.sender = None
                        finished.append(seq)
                    elif seq.finished or (check_cancel and job.sender.is_cancelled()):
                        finished.append(seq)
                self._retire(jobs, finished)
            except Exception as exc:  # fail the active requests, keep serving new ones
                pb_utils.Logger.log_error(f"gpt2 generation loop: {exc}\n{traceback.format_exc()}")
                for job in jobs.values():
                    self._fail(job.sender, f"internal error during generation: {exc}")
                self.engine.remove([j.seq for j in jobs.values()])
                jobs.clear()
        self._shut_down(jobs)

    def _shut_down(self, jobs):
        """The loop is stopping (finalize): a request still active or queued ends with a
        named error instead of never. Triton itself calls finalize only once the streams in
        flight have finished or its exit timeout has passed."""
        message = "server is shutting down: gpt2 is being unloaded; retry on another server"
        for job in jobs.values():
            if job.sender is not None:
                self._fail(job.sender, message)
        self.engine.remove([j.seq for j in jobs.values()])
        jobs.clear()
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._fail(job.sender, message)

    def _admit(self, jobs):
        """Requests waiting in the queue join the batch, prefilled together in one call
        (blocking for new work only when nothing is being generated)."""
        new = []
        while len(jobs) + len(new) < self.max_batch:
            try:
                job = self.queue.get_nowait() if jobs or new else self.queue.get(timeout=0.1)
            except queue.Empty:
                break
            if job is None:
                break
            if not job.sender.is_cancelled():
                new.append(job)
        if not new:
            return
        try:
            tokens = self.engine.add_many([job.seq for job in new])
        except Exception as exc:
            for job in new:
                self._fail(job.sender, f"internal error in prefill: {exc}")
            return
        for job, token in zip(new, tokens):
            if job.prefix and job.stream:
                self._send(job.sender, job.prefix)
            self._emit(job, token)
            if job.seq.finished:
                self._finish(job)
            else:
                jobs[id(job.seq)] = job

    def _emit(self, job, token):
        delta = self.engine.text_delta(job.seq, token)
        if not delta:
            return
        if job.stream:
            self._send(job.sender, delta)
        else:
            job.text.append(delta)

    def _retire(self, jobs, finished):
        for seq in finished:
            job = jobs.pop(id(seq))
            if job.sender is not None and not job.sender.is_cancelled():
                self._finish(job)
        self.engine.remove(finished)

    def _finish(self, job):
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if job.stream:
            self.responses.send(job.sender, flags=final)
        else:
            text = job.prefix + "".join(job.text)
            self.responses.send(job.sender, _text_response(text), flags=final)

    def _send(self, sender, text):
        self.responses.send(sender, _text_response(text))

    def _fail(self, sender, message):
        self.responses.send(
            sender, _error_response(message), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        )

    def finalize(self):
        started = time.monotonic()
        self.running = False
        self.queue.put(None)
        self.thread.join(timeout=5)
        self.responses.close(timeout=5)
        pb_utils.Logger.log_info(
            f"gpt2 finalize: generation loop {'still running' if self.thread.is_alive() else 'stopped'} "
            f"after {time.monotonic() - started:.2f} s"
        )


def _error_response(message):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


def _text_response(text):
    out = pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_))
    return pb_utils.InferenceResponse(output_tensors=[out])


def _request_parameters(request):
    """Sampling fields given as request parameters (Triton's HTTP generate `parameters`)."""
    try:
        params = json.loads(request.parameters() or "{}")
    except ValueError:
        return None
    picked = {k: v for k, v in params.items() if k in SAMPLING_KEYS}
    return picked or None
