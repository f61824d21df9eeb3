"""A small client over `tritonclient.grpc` for the served models.

with AigcClient("127.0.0.1:8001") as client:
    images = client.generate_images("dcgan", n=16, seed=0)     # uint8 (N, H, W, C)
    for delta in client.generate_text("Once", max_tokens=32):  # streamed text
        print(delta, end="")
"""

from __future__ import annotations

import json
import math
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.experimental
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from aigc.errors import ClientError

_RETRYABLE = ("StatusCode.UNAVAILABLE",)


class AigcClient:
    def __init__(self, url: str = "127.0.0.1:8001", timeout_s: float = 60.0, retry_deadline_s: float = 10.0):
        if timeout_s <= 0:
            raise ClientError(f"timeout_s must be > 0, got {timeout_s}")
        self.url = url
        self.timeout_s = timeout_s
        self.retry_deadline_s = retry_deadline_s
        try:
            self._client = grpcclient.InferenceServerClient(url=url, channel_args=_CHANNEL_OPTIONS)
        except Exception as exc:  # bad URL syntax
            raise ClientError(f"url {url!r}: {exc}") from exc
        self._meta: dict[str, dict] = {}
        self._text_channel = None  # the text requests' gRPC channel, opened by the first
        self._infer_stream = None  # ... and its ModelStreamInfer, one call per request (`_open`)
        self._lock = threading.Lock()

    # -- lifecycle and health -----------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            channel, self._text_channel, self._infer_stream = self._text_channel, None, None
        if channel is not None:
            channel.close()
        self._client.close()

    def __enter__(self) -> AigcClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def is_live(self) -> bool:
        try:
            return self._client.is_server_live(client_timeout=self.timeout_s)
        except InferenceServerException:
            return False

    def is_ready(self, model: str | None = None) -> bool:
        try:
            if model is None:
                return self._client.is_server_ready(client_timeout=self.timeout_s)
            return self._client.is_model_ready(model, client_timeout=self.timeout_s)
        except InferenceServerException:
            return False

    def wait_ready(self, timeout_s: float = 60.0, model: str | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.is_ready(model):
                return
            time.sleep(0.2)
        raise ClientError(
            f"server at {self.url} not ready{f' for {model}' if model else ''} after {timeout_s:.0f} s"
        )

    def _call(self, fn, *args, **kwargs):
        """Retry UNAVAILABLE (server restarting) with backoff inside the retry deadline."""
        retry = _Backoff(self.retry_deadline_s)
        while True:
            try:
                return fn(*args, **kwargs)
            except InferenceServerException as exc:
                if exc.status() in _RETRYABLE and retry.wait():
                    continue
                raise ClientError(_message(exc)) from None

    def input_shape(self, model: str) -> tuple[str, list[int]]:
        """(input name, dims without batch) from the model's metadata (cached)."""
        if model not in self._meta:
            meta = self._call(
                self._client.get_model_metadata, model, as_json=True, client_timeout=self.timeout_s
            )
            self._meta[model] = meta
        inp = self._meta[model]["inputs"][0]
        return inp["name"], [int(d) for d in inp["shape"][1:]]

    # -- images -------------------------------------------------------------------------
    def _infer(self, model: str, name: str, array: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
        dtype = {np.float32: "FP32", np.uint8: "UINT8"}[array.dtype.type]
        inp = grpcclient.InferInput(name, list(array.shape), dtype)
        inp.set_data_from_numpy(array)
        req = [grpcclient.InferRequestedOutput(o) for o in outputs]
        result = self._call(self._client.infer, model, [inp], outputs=req, client_timeout=self.timeout_s)
        return [result.as_numpy(o) for o in outputs]

    def latents(self, model: str, n: int, seed: int | None = None) -> np.ndarray:
        _check_count(n)
        _, dims = self.input_shape(model)
        return np.random.default_rng(seed).standard_normal((n, *dims)).astype(np.float32)

    def generate_images(
        self, model: str = "dcgan", n: int = 1, seed: int | None = None, z: np.ndarray | None = None
    ) -> np.ndarray:
        """uint8 images (N, H, W, C) from latents `z` (drawn from N(0, I) with `seed` if None)."""
        if z is None:
            z = self.latents(model, n, seed)
        return self.decode(z, model=model)

    def decode(self, z: np.ndarray, model: str = "vae_decoder") -> np.ndarray:
        z = np.asarray(z)
        name, dims = self.input_shape(model)
        if z.dtype != np.float32:
            raise ClientError(f"z: dtype {z.dtype} not allowed; expected float32")
        if z.ndim != 2 or list(z.shape[1:]) != dims:
            raise ClientError(
                f"z: shape {list(z.shape)} not allowed; expected [N, {', '.join(map(str, dims))}]"
            )
        if not np.all(np.isfinite(z)):
            raise ClientError("z: contains NaN or infinite values")
        return self._infer(model, name, z, ["image"])[0]

    def sample(self, n: int = 1, seed: int | None = None) -> np.ndarray:
        """Images from the VAE decoder for latents drawn from N(0, I)."""
        return self.generate_images("vae_decoder", n=n, seed=seed)

    def encode(self, images: np.ndarray, model: str = "vae_encoder") -> tuple[np.ndarray, np.ndarray]:
        """(mu, logvar) of uint8 images (N, H, W, C) from the VAE encoder."""
        images = np.asarray(images)
        name, dims = self.input_shape(model)
        if images.dtype != np.uint8:
            raise ClientError(f"image: dtype {images.dtype} not allowed; expected uint8")
        if images.ndim != 4 or list(images.shape[1:]) != dims:
            raise ClientError(
                f"image: shape {list(images.shape)} not allowed; expected [N, {', '.join(map(str, dims))}]"
            )
        mu, logvar = self._infer(model, name, images, ["mu", "logvar"])
        return mu, logvar

    # -- text ---------------------------------------------------------------------------
    def generate_text(
        self,
        prompt: str | list[int],
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | list[str] | None = None,
        ignore_eos: bool = False,
        stream: bool = True,
        exclude_input_in_output: bool = True,
        timeout_s: float | None = None,
        model: str = "gpt2",
        model_version: str = "",
        min_tokens: int = 0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repetition_penalty: float = 1.0,
        details: dict | None = None,
        **extra,
    ) -> Iterator[str] | str:
        """Text from the served GPT-2: an iterator of deltas (stream=True) or the whole string.
        `prompt`: text, or token ids (sent as `input_ids`). `extra`: further
        `sampling_parameters` fields (`min_p`, `stop_token_ids`, `bad_words`, `logprobs`,
        `prompt_logprobs`). `model_version`: the version to run ("" the server's choice, its
        newest); a version the server does not serve is an error before any text. `details`: a dict the server's counts fill once the text is
        complete (the vLLM backend's additional outputs): `finish_reason` ("stop", "length"),
        `prompt_tokens`, `completion_tokens`; with `logprobs` / `prompt_logprobs`, also
        `logprobs` (an `engine.logprobs` entry per generated token, filled as responses
        arrive) and `prompt_logprobs` (one per prompt token, the first None)."""
        params = sampling_parameters(
            max_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            stop,
            ignore_eos,
            min_tokens=min_tokens,
            presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty,
            repetition_penalty=repetition_penalty,
            **extra,
        )
        if isinstance(prompt, (list, tuple, np.ndarray)):
            if len(prompt) == 0 or not all(_is_token_id(t) for t in prompt):
                raise ClientError("prompt as token ids must be a non-empty list of integers >= 0")
        elif not isinstance(prompt, str) or not prompt:
            raise ClientError("prompt (text_input) must be a non-empty string or a list of token ids")
        deltas = self._stream(
            model,
            prompt,
            params,
            stream,
            exclude_input_in_output,
            timeout_s or self.timeout_s,
            details,
            str(model_version),
        )
        return deltas if stream else "".join(deltas)

    def _stream(
        self, model, prompt, params, stream, exclude, timeout_s, details=None, version=""
    ) -> Iterator[str]:
        if isinstance(prompt, str):
            first = _bytes_tensor("text_input", prompt)
        else:
            first = ("input_ids", "INT64", [len(prompt)], np.asarray(prompt, "<i8").tobytes())
        tensors = [
            first,
            _bytes_tensor("sampling_parameters", json.dumps(params)),
            _bool_tensor("stream", stream),
            _bool_tensor("exclude_input_in_output", exclude),
        ]
        if details is not None:
            details.update(finish_reason=None, prompt_tokens=None, completion_tokens=0)
            tensors += [_bool_tensor(flag, True) for flag in _DETAIL_FLAGS]
            if params.get("logprobs") is not None or params.get("prompt_logprobs") is not None:
                details.update(logprobs=[], prompt_logprobs=None)
                tensors.append(_bool_tensor("return_logprobs", True))
        request_id = uuid.uuid4().hex
        request = _request(model, request_id, tensors, version)
        call = self._open(request, timeout_s, on_late=self._late)
        done = False  # its final response or its error arrived: nothing of it runs on the server
        retry = _Backoff(self.retry_deadline_s)
        try:
            while True:
                try:
                    result = call.next()
                except _Failed as failed:
                    if failed.unavailable and not call.answered and retry.wait():
                        # not connected (the server restarting, a connection dropped while
                        # idle): the request never ran, so it is sent again, as `_call` does
                        call = self._open(request, timeout_s, on_late=self._late)
                        continue
                    done = failed.in_band or call.ended  # the server ended the request
                    raise ClientError(failed.message) from None
                if call.timed_out:  # this came after the watchdog had stopped the request
                    raise ClientError(call.late_message())
                if details is not None:
                    _add_details(details, result)
                text = result.text("text_output")
                if text:
                    yield text.decode("utf-8")
                if result.final:
                    done = True
                    return
        finally:
            if done:
                call.finish()
            else:  # a timeout, a broken connection, or the caller stopped reading
                self._stop(call)

    def model_assets(
        self, model: str = "gpt2", timeout_s: float | None = None, model_version: str = ""
    ) -> dict:
        """The served text model's `tokenizer` (tokenizer.json text) and `model_info`, read
        through Triton (`return_assets`): no access to the repository's storage needed.
        `model_version`: whose ("" the server's newest)."""
        request = _request(model, uuid.uuid4().hex, [_bool_tensor("return_assets", True)], str(model_version))
        call = self._open(request, timeout_s or self.timeout_s)
        try:
            result = call.next()
            raw = result.text("assets")
            if not raw:
                raise ClientError(f"{model} returned no assets")
            data = json.loads(raw)
            if not result.final:  # the empty final response
                call.next()
            call.finish()
            return data
        except _Failed as failed:
            raise ClientError(failed.message) from None
        finally:
            call.close()

    def _open(self, request, timeout_s: float, on_late=None) -> _Call:
        """Send `request` on a call of its own (`_Call`; `on_late`: what the watchdog runs
        when no response came in `timeout_s`, None to cancel the call)."""
        with self._lock:
            if self._infer_stream is None:
                self._text_channel = grpc.insecure_channel(
                    self.url,
                    options=[
                        *_CHANNEL_OPTIONS,
                        # the call's responses are read in the caller's thread: no thread of
                        # gRPC's or ours per stream (40 % less client CPU a token, measured)
                        (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
                    ],
                )
                self._infer_stream = self._text_channel.unary_stream(
                    _STREAM_INFER,
                    request_serializer=service_pb2.ModelInferRequest.SerializeToString,
                    response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
                )
            start = self._infer_stream
        return _Call(start, request, self.url, timeout_s, on_late)

    def _stop(self, call: _Call, wait_s: float = 5.0) -> None:
        """End an unfinished request on the server with TensorRT-LLM's `stop` input (a call
        of its own carrying the request's id), then read the request's call to its end.
        Cancelling the gRPC call would end it too, but the Triton of the embedded server
        (2.51) can abort when a stream is cancelled while it writes a response (fixed in
        Triton 24.12); a cancel is the fallback when the stop is refused (a repository built
        before `stop`) or the request's end does not come in `wait_s`."""
        if not call.ended:
            try:
                # a late request's stop went out from the watchdog's thread (`_late`)
                if call.timed_out or self._send_stop(call, wait_s):
                    call.timeout_s = wait_s
                    call.read_to_end(wait_s)
            except ClientError:  # no answer in wait_s
                pass
        call.close()

    def _send_stop(self, call: _Call, wait_s: float) -> bool:
        """Send `stop` for `call`'s request, to the version that runs it; True once the server
        answered it."""
        tensors = [_bytes_tensor("text_input", ""), _bool_tensor("stop", True)]
        stop = self._open(_request(call.model, call.request_id, tensors, call.version), wait_s)
        try:
            return stop.read_to_end(wait_s)
        finally:
            stop.close()

    def _late(self, call: _Call, wait_s: float = 5.0) -> None:
        """Run by the watchdog on a thread of its own when `call` waited `timeout_s` for a
        response: its request is stopped, so that the reader gets the final response and
        reports the timeout; the call is cancelled if it is not over `wait_s` later (a
        server that answers nothing)."""
        try:
            self._send_stop(call, wait_s)
        except ClientError:
            pass
        if not call.over.wait(wait_s):
            call.call.cancel()


_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
_MAX_MESSAGE = 2**31 - 1
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    # a channel kept for many requests must find a restarted server soon: gRPC's default
    # reconnect backoff grows to 120 s while the server is away (3.3 s after a 20 s restart,
    # measured)
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class _Backoff:
    """Waits between tries of a call that found no server: 0.1 s, doubling up to 2 s, while
    the next try still starts inside `deadline_s`."""

    def __init__(self, deadline_s: float):
        self.deadline, self.delay = time.monotonic() + deadline_s, 0.1

    def wait(self) -> bool:
        """Wait before the next try; False (no wait) once the deadline would pass."""
        if time.monotonic() + self.delay >= self.deadline:
            return False
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, 2.0)
        return True


class _Failed(Exception):
    """A call's failure: an error the server sent as a response (`in_band`: the request is
    over), or the call's own gRPC status (`unavailable`: it never reached the server)."""

    def __init__(self, message: str, in_band: bool = False, unavailable: bool = False):
        super().__init__(message)
        self.message, self.in_band, self.unavailable = message, in_band, unavailable


class _Call:
    """One request on a ModelStreamInfer call of its own: the request is sent and the call's
    sending side closed (Triton streams a decoupled model's responses, then ends the call),
    and its responses are read in the caller's thread, with gRPC's single-threaded
    unary-stream mode. A request is ended by `stop` or, failing that, by cancelling its call,
    which touches no other request (Triton cancels per stream)."""

    def __init__(self, start, request, url: str, timeout_s: float, on_late=None):
        self.url, self.timeout_s, self.on_late = url, timeout_s, on_late
        self.model, self.version, self.request_id = request.model_name, request.model_version, request.id
        self.deadline = math.inf  # while a read waits: past it the watchdog steps in
        self.timed_out = False  # the watchdog stepped in
        self.answered = False  # a response arrived
        self.over = threading.Event()  # the call is over: read to its end, failed or cancelled
        self.call = start(request)
        _WATCHDOG.watch(self)

    @property
    def ended(self) -> bool:
        return self.over.is_set()

    def next(self):
        """The next response's result; `_Failed` for an error or the call's end, ClientError
        when none came in `timeout_s`."""
        if self.ended:
            raise _Failed(f"{self.model}: the request's call is over")
        self.deadline = time.monotonic() + self.timeout_s
        try:
            response = next(self.call)
        except StopIteration:
            self._end()
            raise _Failed(
                f"{self.model}: the server ended the stream before the request's last response"
            ) from None
        except grpc.RpcError as exc:
            self._end()
            if self.timed_out:
                raise ClientError(self.late_message()) from None
            code = exc.code() if callable(getattr(exc, "code", None)) else None
            details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
            raise _Failed(
                f"{self.model} at {self.url}: {details or code}",
                unavailable=code == grpc.StatusCode.UNAVAILABLE,
            ) from None
        finally:
            self.deadline = math.inf
        self.answered = True
        if response.error_message:
            raise _Failed(response.error_message, in_band=True)
        return _Response(response.infer_response)

    def read_to_end(self, within_s: float) -> bool:
        """Read the responses up to the request's last, then the call's end: True when that
        came in `within_s`; False when an error response ended the request or time ran out."""
        until = time.monotonic() + within_s
        while time.monotonic() < until:
            try:
                result = self.next()
            except _Failed as failed:
                if failed.in_band:
                    self.finish()
                return False
            if result.final:
                self.finish()
                return True
        return False

    def finish(self) -> None:
        """After the request's last response: read the call's end (its status), so that the
        call is over on both sides (a call dropped unread is cancelled by gRPC)."""
        while not self.ended:
            try:
                self.next()
            except (_Failed, ClientError):  # the request is complete whatever the call does
                break

    def late_message(self) -> str:
        return f"no response from {self.model} within {self.timeout_s:g} s"

    def expire(self) -> None:
        """Called by the watchdog: no response came in `timeout_s`."""
        self.timed_out = True
        if self.on_late is None:
            self.call.cancel()
        else:
            threading.Thread(target=self.on_late, args=(self,), name="aigc-client-stop", daemon=True).start()

    def close(self) -> None:
        if not self.ended:
            self.call.cancel()
        self._end()

    def _end(self) -> None:
        self.over.set()
        _WATCHDOG.unwatch(self)


class _Watchdog:
    """Cancels a call whose read has waited `timeout_s` for a response (gRPC's reads of a
    single-threaded call take no timeout). One thread for the process, started with the
    first call: it wakes at the earliest deadline of a waiting read, and at least every
    quarter of the shortest timeout, since a read sets its deadline without waking it."""

    def __init__(self):
        self._cond = threading.Condition()
        self._calls: set[_Call] = set()
        self._thread: threading.Thread | None = None

    def watch(self, call: _Call) -> None:
        with self._cond:
            self._calls.add(call)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="aigc-client-timeouts", daemon=True)
                self._thread.start()
            self._cond.notify()

    def unwatch(self, call: _Call) -> None:
        with self._cond:
            self._calls.discard(call)

    def _run(self) -> None:
        with self._cond:
            while True:
                if not self._calls:
                    self._cond.wait()
                    continue
                now = time.monotonic()
                for call in [c for c in self._calls if c.deadline <= now]:
                    self._calls.discard(call)
                    call.expire()
                calls = list(self._calls)
                wake = min(
                    [c.deadline for c in calls] + [now + max(0.05, c.timeout_s / 4) for c in calls],
                    default=math.inf,
                )
                self._cond.wait(None if wake == math.inf else max(0.0, wake - now))


_WATCHDOG = _Watchdog()


def sampling_parameters(
    max_tokens=64, temperature=0.0, top_k=0, top_p=1.0, seed=None, stop=None, ignore_eos=False, **extra
) -> dict:
    """Check sampling arguments with the server's own `SamplingParams` (the same fields and
    ranges; only the server knows its max_tokens limit); the JSON `sampling_parameters` takes.
    `extra`: any other field of the schema (`min_tokens`, the penalties, ...)."""
    from engine.request_schema import RequestError, SamplingParams

    fields = {"max_tokens": max_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p}
    fields.update({"seed": seed, "stop": stop or None, "ignore_eos": ignore_eos, **extra})
    try:
        return SamplingParams.from_dict(fields, max_tokens_limit=None).to_dict()
    except RequestError as exc:
        raise ClientError(str(exc)) from None


def save_image_grid(images: np.ndarray, path: Path, ncol: int = 8) -> Path:
    """Write uint8 (N, H, W, C) images as one PNG grid (`aigc.imagegrid`)."""
    from aigc.imagegrid import save_png_grid

    return save_png_grid(images, path, ncol)


def _check_count(n) -> None:
    if not isinstance(n, int) or not 1 <= n <= 4096:
        raise ClientError(f"n must be an integer in 1..4096, got {n!r}")


def _bytes_tensor(name: str, text: str) -> tuple[str, str, list[int], bytes]:
    """(name, datatype, shape, raw contents) of a one-element BYTES tensor: Triton's raw
    BYTES layout is each element's length (4 bytes, little-endian), then the element."""
    data = text.encode("utf-8")
    return name, "BYTES", [1], struct.pack("<I", len(data)) + data


def _bool_tensor(name: str, value: bool) -> tuple[str, str, list[int], bytes]:
    return name, "BOOL", [1], b"\x01" if value else b"\x00"


def _request(model: str, request_id: str, tensors, version: str = "") -> service_pb2.ModelInferRequest:
    """A ModelInferRequest of `tensors` (`_bytes_tensor` tuples) that asks for the empty final
    response, so that a stream's end is always a response flagged final; `version` "" leaves
    the version to the server's policy."""
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    for name, datatype, shape, raw in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
    return request


_DETAIL_FLAGS = ("return_finish_reason", "return_num_input_tokens", "return_num_output_tokens")


def _add_details(details: dict, result) -> None:
    """Fold one response's additional outputs into `details`: output tokens add up, the
    prompt's count and the finish reason are taken as they come."""
    reason = result.text("finish_reason")
    if reason:
        details["finish_reason"] = reason.decode()
    prompt = result.integer("num_input_tokens")
    if prompt is not None:
        details["prompt_tokens"] = prompt
    generated = result.integer("num_output_tokens")
    if generated is not None:
        details["completion_tokens"] += generated
    if "logprobs" in details:
        raw = result.text("logprobs")
        if raw:
            got = json.loads(raw)
            if "prompt" in got:
                details["prompt_logprobs"] = got["prompt"]
            details["logprobs"].extend(got.get("tokens", ()))


def _is_token_id(t) -> bool:
    return isinstance(t, (int, np.integer)) and not isinstance(t, bool) and t >= 0


_INTEGERS = {"UINT32": "<I", "INT32": "<i", "UINT64": "<Q", "INT64": "<q", "UINT16": "<H", "INT16": "<h"}


class _Response:
    """A text request's response (a ModelInferResponse), its outputs read straight from the
    message: a stream reads up to five a token, and `tritonclient`'s `InferResult.as_numpy`
    searches the outputs and goes through numpy for each (a third of the client's CPU a
    token at 8 streams, profiled)."""

    __slots__ = ("message", "_raw")

    def __init__(self, message):
        self.message = message
        raw = message.raw_output_contents
        outputs = message.outputs
        self._raw = (
            {o.name: (o.datatype, raw[i]) for i, o in enumerate(outputs)}
            if len(raw) == len(outputs)
            else None  # contents in the typed fields (not what Triton sends): tritonclient's way
        )

    @property
    def final(self) -> bool:
        """Whether this is the request's last response."""
        flag = self.message.parameters.get("triton_final_response")
        return flag is not None and flag.bool_param

    def text(self, name: str) -> bytes | None:
        """The elements of BYTES output `name` joined (None where the response lacks it)."""
        if self._raw is None:
            return self._numpy_text(name)
        got = self._raw.get(name)
        if got is None or got[0] != "BYTES":
            return None
        raw, parts, at = got[1], [], 0
        while at + 4 <= len(raw):  # each element: its length (4 bytes, little-endian), its bytes
            (n,) = struct.unpack_from("<I", raw, at)
            parts.append(raw[at + 4 : at + 4 + n])
            at += 4 + n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def integer(self, name: str) -> int | None:
        """The first element of integer output `name` (None where the response lacks it)."""
        if self._raw is None:
            out = grpcclient.InferResult(self.message).as_numpy(name)
            return int(out.reshape(-1)[0]) if out is not None and out.size else None
        got = self._raw.get(name)
        if got is None or got[0] not in _INTEGERS or not got[1]:
            return None
        return struct.unpack_from(_INTEGERS[got[0]], got[1])[0]

    def _numpy_text(self, name: str) -> bytes | None:
        out = grpcclient.InferResult(self.message).as_numpy(name)
        if out is None or not out.size:
            return None
        return b"".join(x if isinstance(x, bytes) else str(x).encode() for x in out.reshape(-1))


def _message(exc) -> str:
    text = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    return text or str(exc)
