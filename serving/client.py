"""A small client over `tritonclient.grpc` for the served models.

with AigcClient("127.0.0.1:8001") as client:
    images = client.generate_images("dcgan", n=16, seed=0)     # uint8 (N, H, W, C)
    for delta in client.generate_text("Once", max_tokens=32):  # streamed text
        print(delta, end="")
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
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
            self._client = grpcclient.InferenceServerClient(url=url)
        except Exception as exc:  # bad URL syntax
            raise ClientError(f"url {url!r}: {exc}") from exc
        self._meta: dict[str, dict] = {}
        self._streams: list[_Stream] = []  # idle text streams, reused by the next request
        self._lock = threading.Lock()

    # -- lifecycle and health -----------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            streams, self._streams = self._streams, []
        for conn in streams:
            conn.close()
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
        deadline, delay = time.monotonic() + self.retry_deadline_s, 0.1
        while True:
            try:
                return fn(*args, **kwargs)
            except InferenceServerException as exc:
                if exc.status() in _RETRYABLE and time.monotonic() + delay < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
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
        `prompt_logprobs`). `details`: a dict the server's counts fill once the text is
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
            model, prompt, params, stream, exclude_input_in_output, timeout_s or self.timeout_s, details
        )
        return deltas if stream else "".join(deltas)

    def _stream(self, model, prompt, params, stream, exclude, timeout_s, details=None) -> Iterator[str]:
        if isinstance(prompt, str):
            first = _bytes_input("text_input", prompt)
        else:
            first = grpcclient.InferInput("input_ids", [len(prompt)], "INT64")
            first.set_data_from_numpy(np.asarray(prompt, np.int64))
        inputs = [
            first,
            _bytes_input("sampling_parameters", json.dumps(params)),
            _bool_input("stream", stream),
            _bool_input("exclude_input_in_output", exclude),
        ]
        if details is not None:
            details.update(finish_reason=None, prompt_tokens=None, completion_tokens=0)
            inputs += [_bool_input(flag, True) for flag in _DETAIL_FLAGS]
            if params.get("logprobs") is not None or params.get("prompt_logprobs") is not None:
                details.update(logprobs=[], prompt_logprobs=None)
                inputs.append(_bool_input("return_logprobs", True))
        request_id = uuid.uuid4().hex
        conn, pooled = self._send(model, inputs, request_id)
        answered = False  # a response of this request has arrived
        done = False  # its final response or its error arrived: the stream is idle again
        try:
            while True:
                result, error = conn.next(timeout_s, model)
                if error is not None and pooled and not answered and not _in_band(error):
                    # an idle stream the server or the network closed meanwhile: one retry
                    conn.close()
                    conn, pooled = self._send(model, inputs, request_id, reuse=False)
                    continue
                answered = True
                if error is not None:
                    done = _in_band(error)  # the server ended the request; the stream is fine
                    raise ClientError(_message(error))
                if details is not None:
                    _add_details(details, result)
                out = result.as_numpy("text_output")
                if out is not None and out.size:
                    text = b"".join(x if isinstance(x, bytes) else str(x).encode() for x in out.reshape(-1))
                    if text:
                        yield text.decode("utf-8")
                if _is_final(result):
                    done = True
                    return
        finally:
            if done:
                self._put_stream(conn)
            else:  # a timeout, a broken stream or the caller stopped reading
                self._stop(conn, model, request_id)

    def model_assets(self, model: str = "gpt2", timeout_s: float | None = None) -> dict:
        """The served text model's `tokenizer` (tokenizer.json text) and `model_info`, read
        through Triton (`return_assets`): no access to the repository's storage needed."""
        conn, _ = self._send(model, [_bool_input("return_assets", True)], uuid.uuid4().hex, reuse=False)
        try:
            result, error = conn.next(timeout_s or self.timeout_s, model)
            if error is not None:
                raise ClientError(_message(error))
            raw = result.as_numpy("assets")
            if raw is None or not raw.size:
                raise ClientError(f"{model} returned no assets")
            data = json.loads(raw.reshape(-1)[0])
            if not _is_final(result):  # the empty final response
                conn.next(timeout_s or self.timeout_s, model)
            return data
        finally:
            conn.close()

    def _send(self, model, inputs, request_id, reuse=True) -> tuple[_Stream, bool]:
        """Send a request on an idle stream (or a new one); (stream, whether it was idle)."""
        conn = self._take_stream() if reuse else None
        if conn is not None:
            try:
                conn.client.async_stream_infer(
                    model, inputs, request_id=request_id, enable_empty_final_response=True
                )
                return conn, True
            except InferenceServerException:  # it broke while idle
                conn.close()
        conn = self._new_stream()
        try:
            conn.client.async_stream_infer(
                model, inputs, request_id=request_id, enable_empty_final_response=True
            )
        except InferenceServerException as exc:
            conn.close(cancel=True)
            raise ClientError(_message(exc)) from None
        return conn, False

    def _stop(self, conn: _Stream, model: str, request_id: str, wait_s: float = 5.0) -> None:
        """End an unfinished request on the server with TensorRT-LLM's `stop` input, sent on
        the same stream, and wait for the final responses of both; the stream then carries
        the next request. Cancelling the gRPC call would end it too, but the Triton of the
        embedded server (2.51) can abort when a stream is cancelled while it writes a
        response (fixed in Triton 24.12); a cancel is the fallback when the stream is broken
        or both answers do not come in `wait_s` (a repository built before `stop` rejects
        it, and the request runs on)."""
        try:
            conn.client.async_stream_infer(
                model,
                [_bytes_input("text_input", ""), _bool_input("stop", True)],
                request_id=request_id,
                enable_empty_final_response=True,
            )
            finals, deadline = 0, time.monotonic() + wait_s
            while finals < 2:
                result, error = conn.responses.get(timeout=max(0.0, deadline - time.monotonic()))
                if error is not None and not _in_band(error):
                    raise ClientError(_message(error))
                finals += error is not None or _is_final(result)  # an error response is final
        except (InferenceServerException, ClientError, queue.Empty):
            conn.close(cancel=True)
            return
        self._put_stream(conn)

    def _take_stream(self) -> _Stream | None:
        """An idle open stream: opening a gRPC stream costs ~3 ms (measured), which would
        otherwise land on every request's time to first token. A stream that received
        anything while idle was closed by the server or the network and is dropped."""
        while True:
            with self._lock:
                if not self._streams:
                    return None
                conn = self._streams.pop()
            if conn.responses.empty():
                return conn
            conn.close()

    def _put_stream(self, conn: _Stream) -> None:
        with self._lock:
            self._streams.append(conn)

    def _new_stream(self) -> _Stream:
        try:
            return _Stream(self.url)
        except InferenceServerException as exc:
            raise ClientError(_message(exc)) from None


class _Stream:
    """One bidirectional gRPC stream on its own channel, carrying one request at a time, so
    that a request can be cancelled (Triton cancels per stream) without touching others."""

    def __init__(self, url: str):
        self.client = grpcclient.InferenceServerClient(url=url)
        self.responses: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))

    def next(self, timeout_s: float, model: str):
        """The next (result, error) of this stream."""
        try:
            return self.responses.get(timeout=timeout_s)
        except queue.Empty:
            raise ClientError(f"no response from {model} within {timeout_s:.0f} s") from None

    def close(self, cancel: bool = False) -> None:
        try:
            self.client.stop_stream(cancel_requests=cancel)
        finally:
            self.client.close()


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


def _bytes_input(name: str, text: str) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, [1], "BYTES")
    inp.set_data_from_numpy(np.array([text.encode("utf-8")], dtype=np.object_))
    return inp


def _bool_input(name: str, value: bool) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, [1], "BOOL")
    inp.set_data_from_numpy(np.array([value], dtype=bool))
    return inp


_DETAIL_FLAGS = ("return_finish_reason", "return_num_input_tokens", "return_num_output_tokens")


def _add_details(details: dict, result) -> None:
    """Fold one response's additional outputs into `details`: output tokens add up, the
    prompt's count and the finish reason are taken as they come."""
    reason = result.as_numpy("finish_reason")
    if reason is not None and reason.size and reason.reshape(-1)[0]:
        word = reason.reshape(-1)[0]
        details["finish_reason"] = word.decode() if isinstance(word, bytes) else str(word)
    prompt = result.as_numpy("num_input_tokens")
    if prompt is not None and prompt.size:
        details["prompt_tokens"] = int(prompt.reshape(-1)[0])
    generated = result.as_numpy("num_output_tokens")
    if generated is not None and generated.size:
        details["completion_tokens"] += int(generated.reshape(-1)[0])
    if "logprobs" in details:
        raw = result.as_numpy("logprobs")
        if raw is not None and raw.size and raw.reshape(-1)[0]:
            got = json.loads(raw.reshape(-1)[0])
            if "prompt" in got:
                details["prompt_logprobs"] = got["prompt"]
            details["logprobs"].extend(got.get("tokens", ()))


def _is_token_id(t) -> bool:
    return isinstance(t, (int, np.integer)) and not isinstance(t, bool) and t >= 0


def _in_band(error: InferenceServerException) -> bool:
    """An error the server sent as a response (the request is over, the stream still
    works), not a failure of the stream itself (those carry a gRPC status)."""
    return error.status() is None


def _is_final(result) -> bool:
    final = result.get_response().parameters.get("triton_final_response")
    return final is not None and final.bool_param


def _message(exc) -> str:
    text = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    return text or str(exc)
