"""The OpenAI-compatible HTTP frontend: FastAPI over the Triton server's gRPC API.

Threads: the event loop never waits on gRPC. The model index and configs come from
tritonclient's asyncio client; a generation runs `AigcClient.generate_text` (a blocking
iterator) on a worker thread (kept for the next generation), which hands each delta to the
loop through an `_Inbox`. When the HTTP client goes away mid-request (Starlette cancels the
stream's task; a waiting handler polls `request.is_disconnected()`), the worker stops at the
next delta and closes the client's generator, which stops the request on the server and so
frees its KV cache.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import queue
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from aigc.errors import ClientError, ServerError
from engine.config import EngineConfig
from engine.request_schema import SamplingParams
from serving import security
from serving.client import AigcClient
from serving.openai_api import schemas
from serving.openai_api.guard import BodyTooLarge, Guard, HttpMetrics, redact_paths
from serving.openai_api.options import FrontendOptions
from serving.openai_api.protocol import (
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    SSE_DONE,
    APIError,
    ChatTemplate,
    Generation,
    ResponseWriter,
    bad_request,
    finish_reason,
    model_not_found,
    parse_chat,
    parse_completion,
    parse_detokenize,
    parse_tokenize,
    server_error,
    sse,
    total_usage,
    usage,
)

logger = logging.getLogger(__name__)

# How often a handler waiting for the next delta checks that its HTTP client is still there.
DISCONNECT_POLL_S = 0.25
# Age past which the served models' index is asked again, in the background (`TritonModels`).
INDEX_REFRESH_S = 1.0


@dataclass(frozen=True)
class ServedModel:
    """A served text model's version with what the frontend needs from its repository folder."""

    name: str
    version: str
    tokenizer: object  # tokenizers.Tokenizer, the server's own tokenizer.json
    template: ChatTemplate
    window: int  # positions a request may fill: prompt + max_tokens
    max_tokens_limit: int
    counts: bool = False  # the model returns finish_reason and token counts (vLLM's return_* flags)
    # sampling fields a request leaves out: the checkpoint's generation config, else OpenAI's
    sampling_defaults: tuple[tuple[str, object], ...] = (("temperature", 1.0),)
    logprobs: bool = False  # the model takes input_ids and returns log-probabilities
    eos_token_id: int | None = None
    bos_token_id: int | None = None

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text).ids) if text else 0

    def default_max_tokens(self, gen: Generation, prompt_tokens: int) -> int:
        """Completions: OpenAI's 16. Chat: what fits the window (at least 1, so that an
        overlong prompt gets the server's own error naming its length)."""
        if gen.kind == "completion":
            return min(COMPLETIONS_DEFAULT_MAX_TOKENS, self.max_tokens_limit)
        return max(1, min(self.max_tokens_limit, self.window - prompt_tokens))


class TritonModels:
    """The server's text models (those with the `text_input` / `text_output` interface):
    READY entries of Triton's repository index; a version's tokenizer, limits and chat
    template are read once.

    A request does not wait for the index (a round trip, ~0.8 ms of its first token): it
    takes the one last asked, which is asked again in the background once it is older than
    `INDEX_REFRESH_S`. A version switch (`aigc build --url`, `aigc rollback`) is still
    followed at once: a generation runs on the version it was given (its tokenizer and
    template are that version's), and when that version has gone its request is refused
    before any text; `generate` then asks the index (`moved`) and starts it again on the
    version now served."""

    def __init__(self, url: str, repository: Path | None, timeout_s: float = 10.0, key: str | None = None):
        self.url, self.timeout_s = url, timeout_s
        self.repository = Path(repository) if repository is not None else None
        self.headers = security.key_headers(key)  # Triton's control key (`serving.security`)
        self._client = None
        self._is_text: dict[tuple[str, str], bool] = {}
        self._loaded: dict[tuple[str, str], ServedModel] = {}
        self._served: dict[str, str] | None = None  # name -> version, as last asked
        self._served_at = -math.inf  # when that ask started (time.monotonic)
        self._asking: asyncio.Future | None = None  # the index being asked now
        self._asking_at = -math.inf  # when that ask started

    def _grpc(self):
        if self._client is None:  # created on the event loop it will run on
            import tritonclient.grpc.aio as grpcaio

            self._client = grpcaio.InferenceServerClient(self.url)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def _ask(self, method: str, *args, **kwargs):
        from tritonclient.utils import InferenceServerException

        try:
            return await getattr(self._grpc(), method)(
                *args, as_json=True, client_timeout=self.timeout_s, headers=self.headers, **kwargs
            )
        except InferenceServerException as exc:
            logger.error("the inference server at %s answered %s: %s", self.url, method, exc)
            status = 503 if str(exc.status()) == "StatusCode.UNAVAILABLE" else 500
            raise APIError(status, f"the inference server: {exc.message()}", type="server_error") from None

    async def ready(self) -> bool:
        try:
            return bool(await self._grpc().is_server_ready(client_timeout=self.timeout_s))
        except Exception:  # unreachable counts as not ready
            return False

    async def text_models(self) -> list[tuple[str, str]]:
        """(name, version) of every READY text model; the newest version where several are."""
        asked = time.monotonic()
        index = await self._ask("get_model_repository_index")
        newest: dict[str, str] = {}
        for entry in index.get("models", []):
            name, version = entry.get("name"), entry.get("version", "")
            if entry.get("state") != "READY" or not version:
                continue
            if (name, version) not in self._is_text:
                meta = await self._ask("get_model_metadata", name, model_version=version)
                inputs = {i["name"] for i in meta.get("inputs", [])}
                outputs = {o["name"] for o in meta.get("outputs", [])}
                self._is_text[(name, version)] = "text_input" in inputs and "text_output" in outputs
            if self._is_text[(name, version)] and int(version) > int(newest.get(name, "0")):
                newest[name] = version
        if asked >= self._served_at:  # not overtaken by an ask started later
            self._served, self._served_at = dict(newest), asked
        return sorted(newest.items())

    async def _index(self, fresh: bool = False) -> dict[str, str]:
        """name -> version of the served text models: asked now where `fresh` or none is known
        yet (concurrent callers share one ask), else the one last asked, with a new ask
        started in the background once it is older than `INDEX_REFRESH_S`."""
        if fresh or self._served is None:
            called = time.monotonic()
            while True:
                if self._asking is None or self._asking.done():
                    self._ask_index()
                started = self._asking_at
                await asyncio.shield(self._asking)  # a caller gone does not cancel the others' ask
                if not fresh or started >= called:  # fresh: an ask that started after the call
                    return self._served
        if (
            self._asking is None or self._asking.done()
        ) and time.monotonic() - self._served_at > INDEX_REFRESH_S:
            self._ask_index()
        return self._served

    def _ask_index(self) -> None:
        self._asking_at = time.monotonic()
        self._asking = asyncio.ensure_future(self.text_models())
        # a failed ask is logged (`_ask`) and raised to those who wait for it; one nobody
        # waits for (a background ask) is marked seen, and the next request asks again
        self._asking.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def moved(self, model: ServedModel) -> bool:
        """Whether the server no longer serves `model`'s version (asked now)."""
        return (await self._index(fresh=True)).get(model.name) != model.version

    async def get(self, name: str, fresh: bool = False) -> ServedModel:
        """The served model `name`; "" names the one text model where one is served (vLLM's
        tokenizer routes take no model). `fresh`: the index asked now, not the one last asked."""
        served = await self._index(fresh)
        if not fresh and (name not in served if name else len(served) != 1):
            served = await self._index(fresh=True)  # a miss: perhaps loaded since last asked
        if not name and len(served) == 1:
            name = next(iter(served))
        elif not name:
            raise bad_request(
                f"model is required where several text models are served: {', '.join(sorted(served)) or 'none'}",
                "model",
            )
        if name not in served:
            raise model_not_found(name, sorted(served))
        key = (name, served[name])
        if key not in self._loaded:
            config = await self._ask("get_model_config", name, model_version=served[name])
            self._loaded[key] = await asyncio.to_thread(self._load, name, served[name], config["config"])
        return self._loaded[key]

    def _assets(self, name: str, version: str, inputs: set) -> tuple[object, dict]:
        """(tokenizer, model info) of a served version: through Triton where the model
        answers `return_assets` (no access to the repository's storage needed, S3 included),
        else from the version's folder under `repository`."""
        from tokenizers import Tokenizer

        if "return_assets" in inputs:
            with AigcClient(self.url, timeout_s=60) as client:
                data = client.model_assets(name, model_version=version)
            return Tokenizer.from_str(data["tokenizer"]), data["model_info"]
        if self.repository is None:
            raise ValueError(
                f"{name} version {version} predates return_assets, and no --repository was given"
            )
        folder = self.repository / name / version
        return Tokenizer.from_file(str(folder / "tokenizer.json")), json.loads(
            (folder / "model_info.json").read_text()
        )

    def _load(self, name: str, version: str, config: dict) -> ServedModel:
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        inputs = {i.get("name") for i in config.get("input", [])}
        try:
            tokenizer, info = self._assets(name, version, inputs)
            template = ChatTemplate.from_parameters(params)
            engine_config = EngineConfig.from_parameters(params)
            window = engine_config.max_len or int(info["n_positions"])
            max_tokens_limit = engine_config.max_tokens_limit
            counts = "return_finish_reason" in inputs
            logprobs = {"return_logprobs", "input_ids"} <= inputs
            defaults = {"temperature": 1.0, **info.get("generation_defaults", {})}
        except Exception as exc:  # missing or unreadable files, a bad parameter
            logger.error("model %s version %s in %s: %r", name, version, self.repository, exc)
            raise APIError(
                500,
                f"model {name} version {version} could not be read (see the server's log)",
                type="server_error",
            ) from None
        return ServedModel(
            name,
            version,
            tokenizer,
            template,
            window,
            max_tokens_limit,
            counts,
            tuple(sorted(defaults.items())),
            logprobs,
            info.get("eos_token_id"),
            info.get("bos_token_id"),
        )


def _extra_sampling(p: SamplingParams) -> dict:
    """The sampling fields `generate_text` takes as extras, where a request set them."""
    extra = {}
    if p.min_p:
        extra["min_p"] = p.min_p
    if p.stop_token_ids:
        extra["stop_token_ids"] = list(p.stop_token_ids)
    if p.bad_words:
        extra["bad_words"] = list(p.bad_words)
    if p.logprobs is not None:
        extra["logprobs"] = p.logprobs
    if p.prompt_logprobs is not None:
        extra["prompt_logprobs"] = p.prompt_logprobs
    if p.structured_output is not None:
        extra["structured_output"] = p.structured_output
    return extra


class _VersionGone(Exception):
    """A generation was refused before any text, and its model's version is no longer served."""


class _ClientGone(Exception):
    """The HTTP client disconnected; its generation has been cancelled."""


class _Run:
    """One generation on a worker thread (the gRPC client's iterator blocks); its events reach
    the event loop through an `_Inbox`: ("delta", text), ("end", None) or ("error", message).
    `details` (when the model returns them): the server's finish_reason and token counts,
    complete once "end" has arrived."""

    def __init__(
        self,
        client: AigcClient,
        model: ServedModel,
        prompt: str | list[int],
        params: SamplingParams,
        details: dict | None = None,
    ):
        self.client, self.model, self.prompt, self.params = client, model, prompt, params
        self.details = details
        self.inbox = _Inbox(asyncio.get_running_loop())
        self.cancelled = threading.Event()
        _GENERATIONS.submit(self._work)

    def _put(self, item) -> None:
        if not self.inbox.put(item):  # the loop has closed (frontend stopping): nobody listens
            self.cancelled.set()

    def _work(self) -> None:
        deltas, n = None, 0
        try:
            p = self.params
            deltas = self.client.generate_text(
                self.prompt,
                max_tokens=p.max_tokens,
                temperature=p.temperature,
                top_k=p.top_k,
                top_p=p.top_p,
                seed=p.seed,
                stop=list(p.stop) or None,
                ignore_eos=p.ignore_eos,
                stream=True,
                model=self.model.name,
                model_version=self.model.version,  # the version whose tokenizer made the prompt
                min_tokens=p.min_tokens,
                presence_penalty=p.presence_penalty,
                frequency_penalty=p.frequency_penalty,
                repetition_penalty=p.repetition_penalty,
                details=self.details,
                **_extra_sampling(p),
            )
            for delta in deltas:
                if self.cancelled.is_set():
                    logger.info("HTTP client went away after %d deltas: cancelling its Triton request", n)
                    break
                n += 1
                self._put(("delta", delta))
            else:
                self._put(("end", None))
        except ClientError as exc:
            self._put(("error", str(exc)))
        except Exception as exc:  # a bug here must still answer the HTTP request
            logger.exception("generation failed")
            self._put(("error", f"internal error: {exc}"))
        finally:
            if deltas is not None:
                # Closed before the server's final response, the client ends the request on
                # the server with `stop`: it stops generating and frees its KV cache.
                deltas.close()

    async def next(self, request: Request) -> tuple[str, str | None]:
        """The next event; _ClientGone (the generation cancelled) if the client disconnects."""
        while True:
            item = await self.inbox.get(DISCONNECT_POLL_S)
            if item is not _NOTHING:
                return item
            if await request.is_disconnected():
                self.cancel()
                raise _ClientGone

    def take_ready(self) -> list[tuple[str, str | None]]:
        """The events already queued, taken without waiting."""
        return self.inbox.take_ready()

    def cancel(self) -> None:
        """Stop the generation (no-op once it has ended); safe to call from `finally`. A
        `next` waiting meanwhile raises CancelledError."""
        self.cancelled.set()
        self.inbox.cancel_wait()


class _Workers:
    """Daemon threads that run the generations (each blocks on its gRPC stream), kept for
    the next: starting a thread for each request cost ~0.7 ms of its time to first token
    (measured). A thread is added only when none is idle, so there are as many as the most
    generations that ran at once."""

    def __init__(self, name: str):
        self._name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0

    def submit(self, fn) -> None:
        with self._lock:
            spawn = self._idle == 0
            if spawn:
                self._threads += 1
            else:
                self._idle -= 1
        self._jobs.put(fn)
        if spawn:
            threading.Thread(target=self._run, name=f"{self._name}-{self._threads}", daemon=True).start()

    def _run(self) -> None:
        while True:
            fn = self._jobs.get()
            try:
                fn()
            except Exception:  # the job reports its own errors; this keeps the thread
                logger.exception("a generation thread's job failed")
            with self._lock:
                self._idle += 1


_GENERATIONS = _Workers("openai-generation")

_NOTHING = object()  # `_Inbox.get`: nothing came in time


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Inbox:
    """A worker thread's events for the event loop. The thread appends under a lock and
    wakes the loop only while it waits: no task, queue or timer per event, and no wake-up
    at all for the events that come while the loop is busy (they are read without waiting,
    and `take_ready` puts them in one chunk)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._items: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._waiter: asyncio.Future | None = None

    def put(self, item) -> bool:
        """Append `item` (from any thread); False when the loop has closed."""
        with self._lock:
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            try:
                self.loop.call_soon_threadsafe(_wake, waiter)
            except RuntimeError:
                return False
        return True

    def take_ready(self) -> list:
        with self._lock:
            items = list(self._items)
            self._items.clear()
        return items

    async def get(self, timeout_s: float):
        """The next item, or `_NOTHING` when none came in `timeout_s`."""
        with self._lock:
            if self._items:
                return self._items.popleft()
            self._waiter = waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout_s, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            with self._lock:
                if self._waiter is waiter:
                    self._waiter = None
        with self._lock:
            return self._items.popleft() if self._items else _NOTHING

    def cancel_wait(self) -> None:
        """A `get` waiting now raises CancelledError (from the loop's thread)."""
        with self._lock:
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.cancel()


def create_app(
    grpc_url: str,
    repository: Path | None,
    timeout_s: float = 600.0,
    options: FrontendOptions | None = None,
    triton_key: str | None = None,
) -> FastAPI:
    """The FastAPI app for the Triton server at `grpc_url` serving `repository`.
    `timeout_s`: longest wait for a model's next response (queued requests included);
    `options`: who may call it and how much it takes; `triton_key`: Triton's control key."""
    options = options or FrontendOptions()
    options.validate()
    models = TritonModels(grpc_url, repository, key=triton_key)
    client = AigcClient(grpc_url, timeout_s=timeout_s)
    metrics = HttpMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await models.close()
        client.close()

    app = FastAPI(title="aigc-serve OpenAI-compatible API", version=_version(), lifespan=lifespan)
    app.state.models = models
    app.add_middleware(Guard, options=options, metrics=metrics, routes=_route_of)
    if options.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(options.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["authorization", "content-type"],
        )

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        body = exc.body()
        if exc.status >= 500:  # the server's own words may name its files: logged whole, sent without
            logger.error("%s %s: %d %s", request.method, request.url.path, exc.status, exc.message)
            body["error"]["message"] = redact_paths(exc.message)
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(
            APIError(exc.status_code, message, code=code).body(),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        return JSONResponse(
            bad_request(f"{param or 'the request'}: {first.get('msg', 'invalid')}", param).body(), 400
        )

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse(APIError(413, str(exc), code="request_too_large").body(), status_code=413)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        ref = uuid.uuid4().hex[:12]
        logger.error("unexpected error %s in %s %s", ref, request.method, request.url.path, exc_info=exc)
        message = f"internal error (reference {ref} in the server's log)"
        return JSONResponse(APIError(500, message, type="server_error").body(), status_code=500)

    @app.get("/version")
    async def version() -> dict:
        return {"version": _version()}

    @app.get("/metrics")
    async def http_metrics() -> Response:
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.post("/tokenize", openapi_extra=schemas.request_body(schemas.TokenizeRequest))
    async def tokenize(request: Request) -> dict:
        req = parse_tokenize(await _json(request))
        model = await models.get(req.model)
        text = model.template.render(req.messages) if req.messages else req.prompt
        ids = model.tokenizer.encode(text).ids
        out = {"count": len(ids), "max_model_len": model.window, "tokens": ids}
        if req.return_token_strs:
            out["token_strs"] = [model.tokenizer.id_to_token(i) for i in ids]
        return out

    @app.post("/detokenize", openapi_extra=schemas.request_body(schemas.DetokenizeRequest))
    async def detokenize(request: Request) -> dict:
        req = parse_detokenize(await _json(request))
        model = await models.get(req.model)
        vocab = model.tokenizer.get_vocab_size()
        bad = next((t for t in req.tokens if not 0 <= t < vocab), None)
        if bad is not None:
            raise bad_request(f"tokens: every id must be in 0..{vocab - 1}, got {bad}", "tokens")
        return {"prompt": model.tokenizer.decode(list(req.tokens), skip_special_tokens=False)}

    @app.get("/tokenizer_info")
    async def tokenizer_info(model: str = "") -> dict:
        """vLLM's /tokenizer_info: what a client needs to tokenize as the server does
        (lm-evaluation-harness's `tokenizer_backend=remote` reads it)."""
        served = await models.get(model)

        def token(i):
            return served.tokenizer.id_to_token(i) if i is not None else None

        return {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model": served.name,
            "eos_token": token(served.eos_token_id),
            "bos_token": token(served.bos_token_id),
            "pad_token": None,
            "model_max_length": served.window,
            "vocab_size": served.tokenizer.get_vocab_size(),
            "chat_template": served.template.jinja(),
        }

    @app.get("/health")
    async def health() -> Response:
        ok = await models.ready()
        return JSONResponse({"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503)

    def model_card(name: str, version: str) -> dict:
        folder = Path(repository) / name / version if repository is not None else None
        created = int(folder.stat().st_mtime) if folder is not None and folder.is_dir() else 0  # its build
        return {"id": name, "object": "model", "created": created, "owned_by": "aigc-serve"}

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card(*m) for m in await models.text_models()]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str) -> dict:
        served = await models.get(name)
        return model_card(served.name, served.version)

    @app.post("/v1/completions", openapi_extra=schemas.request_body(schemas.CompletionRequest))
    async def completions(request: Request) -> Response:
        return await generate(request, parse_completion(await _json(request)))

    @app.post("/v1/chat/completions", openapi_extra=schemas.request_body(schemas.ChatCompletionRequest))
    async def chat_completions(request: Request) -> Response:
        return await generate(request, parse_chat(await _json(request)))

    async def generate(request: Request, gen: Generation) -> Response:
        model = await models.get(gen.model)
        try:
            return await answer(request, gen, model, retry=True)
        except _VersionGone:  # switched since the index was last asked: once more on the new one
            now = await models.get(gen.model, fresh=True)
            logger.info(
                "%s version %s is no longer served: the request goes to version %s",
                model.name,
                model.version,
                now.version,
            )
            return await answer(request, gen, now, retry=False)

    async def answer(request: Request, gen: Generation, model: ServedModel, retry: bool) -> Response:
        if gen.logprobs is not None and not model.logprobs:
            raise bad_request(
                f"logprobs: version {model.version} of {model.name} was built before the served models "
                "returned log-probabilities; rebuild it (aigc build)",
                "logprobs",
            )
        if gen.kind == "chat":
            gen = replace(gen, prompt=model.template.render(gen.messages), prompts=())
        prompts = gen.prompts or (gen.prompt,)
        if any(not isinstance(p, str) for p in prompts) and not model.logprobs:
            raise bad_request(
                f"prompt: version {model.version} of {model.name} takes text prompts only; rebuild it "
                "(aigc build) for token-id prompts",
                "prompt",
            )
        if gen.best_of > gen.n and not model.logprobs:
            raise bad_request(
                f"best_of: version {model.version} of {model.name} returns no log-probabilities to rank by; "
                "rebuild it (aigc build)",
                "best_of",
            )
        # each prompt's best_of samples (all checked before any starts), index prompt * n + j
        groups = [
            [_Choice(i * gen.n + j, p, gen, model, j) for j in range(gen.best_of)]
            for i, p in enumerate(prompts)
        ]
        choices = [c for group in groups for c in group]
        try:
            firsts = await _start(request, groups, client)
        except _ClientGone:
            for c in choices:
                c.cancel()
            return Response(status_code=499)
        errors = [f[1] for f in firsts if f[0] == "error"]
        if errors:  # an error before any text keeps its HTTP status
            for c in choices:
                c.cancel()
            if retry and await models.moved(model):
                raise _VersionGone
            raise server_error(errors[0], gen)
        writer = ResponseWriter(gen)
        if gen.stream:
            events = _events(request, choices, firsts, gen, writer)
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        try:
            await asyncio.gather(
                *(c.collect(request, first) for c, first in zip(choices, firsts, strict=True))
            )
        except _ClientGone:
            for c in choices:
                c.cancel()
            return Response(status_code=499)
        failed = next((c.error for c in choices if c.error is not None), None)
        if failed is not None:
            raise server_error(failed, gen)
        answers = []
        for i, group in enumerate(groups):  # best_of: the n of highest log-probability
            best = (
                sorted(group, key=lambda c: -c.cumulative_logprob())[: gen.n]
                if gen.best_of > gen.n
                else group
            )
            for j, c in enumerate(best):
                c.index = i * gen.n + j
                answers.append(c.answer(writer))
        body = writer.response(answers, total_usage([c.outcome()[1] for c in choices]))
        return JSONResponse(body)

    return app


class _Choice:
    """One prompt of a request (a completions batch holds several) and its generation."""

    def __init__(self, index: int, prompt, gen: Generation, model: ServedModel, sample: int = 0):
        self.index, self.gen, self.model = index, gen, model
        self.ids = None if isinstance(prompt, str) else list(prompt)
        self.text = (
            prompt if self.ids is None else model.tokenizer.decode(self.ids, skip_special_tokens=False)
        )
        # the prompt's ids, encoded once (its count for usage, its first id for echo's logprobs)
        self.prompt_ids = self.ids if self.ids is not None else model.tokenizer.encode(self.text).ids
        self.prompt_tokens = len(self.prompt_ids)
        self.params = gen.params(
            model.default_max_tokens(gen, self.prompt_tokens),
            model.max_tokens_limit,
            dict(model.sampling_defaults),
            sample,
        )
        self.run: _Run | None = None
        self.parts: list[str] = []
        self.error: str | None = None
        self.sent = 0  # generated tokens whose log-probabilities have gone out (streams)

    def start(self, client: AigcClient) -> None:
        asks = self.gen.logprobs is not None or self.gen.best_of > self.gen.n
        details = {} if (self.model.counts or asks) else None
        prompt = self.text if self.ids is None else self.ids
        self.run = _Run(client, self.model, prompt, self.params, details)

    async def collect(self, request: Request, item: tuple[str, str | None]) -> None:
        while item[0] == "delta":
            self.parts.append(item[1])
            item = await self.run.next(request)
        if item[0] == "error":
            self.error = item[1]

    def cancel(self) -> None:
        if self.run is not None:
            self.run.cancel()

    def cumulative_logprob(self) -> float:
        return sum(e[1] for e in (self.run.details or {}).get("logprobs") or ())

    @property
    def generated(self) -> str:
        return "" if self.gen.score_only else "".join(self.parts)

    def outcome(self) -> tuple[str, dict]:
        """(finish_reason, usage): the server's own when the model returns them, else counted
        here with the model's tokenizer."""
        d, max_tokens = self.run.details, self.params.max_tokens
        if self.gen.score_only:
            return "length", usage(self.prompt_tokens, 0)
        if d and d.get("finish_reason") and d.get("prompt_tokens") is not None:
            return d["finish_reason"], usage(d["prompt_tokens"], d["completion_tokens"])
        completion_tokens = self.model.count(self.generated)
        return finish_reason(completion_tokens, max_tokens), usage(self.prompt_tokens, completion_tokens)

    def answer(self, writer: ResponseWriter) -> dict:
        reason, _ = self.outcome()
        text = (self.text if self.gen.echo else "") + self.generated
        return writer.choice(self.index, text, reason, self.logprobs_of(writer))

    def logprobs_of(self, writer: ResponseWriter, first_chunk: bool = True, generated: bool = True):
        """This choice's log-probabilities in OpenAI's shape: with echo, the prompt's in the
        first chunk; the generated tokens' not yet sent."""
        if self.gen.logprobs is None:
            return None
        d = self.run.details or {}
        new = []
        if generated and not self.gen.score_only:
            made = d.get("logprobs") or []
            new, self.sent = made[self.sent :], len(made)
        prompt = []
        if self.gen.echo and first_chunk:
            prompt = [[self.prompt_ids[0], None, None], *(d.get("prompt_logprobs") or [None])[1:]]
        return writer.logprobs(self.model.tokenizer, prompt + new, self.index)


async def _events(
    request: Request,
    choices: list[_Choice],
    firsts: list[tuple[str, str | None]],
    gen: Generation,
    writer: ResponseWriter,
) -> AsyncIterator[bytes]:
    """Server-sent events of one request's choices, interleaved as their text arrives.
    Starlette cancels this generator's task when the client disconnects; `finally` then
    cancels the generations."""
    pending: dict = {}  # choice -> the awaitable of its next event
    try:
        for c, first in zip(choices, firsts, strict=True):
            if gen.kind == "chat":
                yield sse(writer.chunk(first=True, index=c.index))
            if gen.echo:
                yield sse(
                    writer.chunk(c.text, index=c.index, logprobs=c.logprobs_of(writer, generated=False))
                )
            pending[c] = _ready(first)
        failed = None
        while pending:
            for c, (kind, value) in await _first_events(pending):
                if kind == "delta":
                    # what else has arrived for this choice goes in the same chunk: when the
                    # client or this loop falls behind the engine, a chunk carries several
                    # tokens instead of the backlog growing a chunk a token
                    after = None
                    for item in c.run.take_ready():
                        if item[0] == "delta" and after is None:
                            value += item[1]
                        else:
                            after = item  # the end or an error: the choice's last event
                    c.parts.append(value)
                    if not gen.score_only:
                        lp = c.logprobs_of(writer, first_chunk=False)
                        yield sse(writer.chunk(value, index=c.index, logprobs=lp))
                    following = _ready(after) if after is not None else c.run.next(request)
                    pending[c] = following
                elif kind == "error":  # after text went out the status is sent: OpenAI's error event
                    failed = value
                else:
                    reason, _ = c.outcome()
                    lp = c.logprobs_of(writer, first_chunk=False) if not gen.score_only else None
                    yield sse(writer.chunk(reason=reason, index=c.index, logprobs=lp))
            if failed is not None:
                yield sse(server_error(failed, gen).body())
                break
        if failed is None and gen.include_usage:
            yield sse(writer.usage_chunk(total_usage([c.outcome()[1] for c in choices])))
        yield SSE_DONE
    except _ClientGone:
        return
    finally:
        for waiting in pending.values():
            if isinstance(waiting, asyncio.Future):
                waiting.cancel()
            else:
                waiting.close()  # a coroutine never started
        for c in choices:
            c.cancel()


async def _ready(item):
    return item


async def _first_events(pending: dict) -> list:
    """(choice, event) of the choices in `pending` (choice -> the awaitable of its next event)
    whose events have come, each taken out of `pending`. One choice, the usual request, is
    awaited directly; several are wrapped in tasks and the first to finish are taken."""
    if len(pending) == 1:
        c, waiting = pending.popitem()
        return [(c, await waiting)]
    for c, waiting in pending.items():
        if not isinstance(waiting, asyncio.Future):
            pending[c] = asyncio.ensure_future(waiting)
    done, _ = await asyncio.wait(pending.values(), return_when=asyncio.FIRST_COMPLETED)
    out = [(c, task.result()) for c, task in pending.items() if task in done]
    for c, _ in out:
        del pending[c]
    return out


async def _start(request: Request, groups: list[list[_Choice]], client: AigcClient) -> list:
    """Start every choice and wait for each one's first event. A prompt's other samples
    start once its first has its first token: its prompt is then in the prefix cache (a block
    runner's), so theirs is read, not computed again (vLLM's parallel sampling)."""
    leaders = [group[0] for group in groups]
    for c in leaders:
        c.start(client)
    first = await asyncio.gather(*(c.run.next(request) for c in leaders))
    rest = [c for group in groups for c in group[1:]]
    for c in rest:
        c.start(client)
    later = iter(await asyncio.gather(*(c.run.next(request) for c in rest)))
    by_leader = dict(zip(map(id, leaders), first, strict=True))
    return [by_leader[id(c)] if c is group[0] else next(later) for group in groups for c in group]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("aigc-serve")
    except PackageNotFoundError:
        return "unknown"


_ROUTES = (
    "/health",
    "/version",
    "/metrics",
    "/tokenize",
    "/detokenize",
    "/tokenizer_info",
    "/v1/models",
    "/v1/completions",
    "/v1/chat/completions",
)


def _route_of(path: str) -> str:
    """The route a path is counted under in /metrics (a bounded set of labels)."""
    if path in _ROUTES:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{name}"
    return "other"


async def _json(request: Request):
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON ({exc})", None) from None


class OpenAIFrontend:
    """uvicorn serving `create_app` on a thread of its own, beside the Triton server; port 0
    picks a free port. The socket is bound here, so a taken port is a ServerError."""

    def __init__(
        self,
        grpc_url: str,
        repository: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        graceful_s: float = 30.0,
        options: FrontendOptions | None = None,
        triton_key: str | None = None,
    ):
        self.grpc_url, self.host, self.port = grpc_url, host, port
        self.repository = Path(repository) if repository is not None else None
        self.graceful_s = graceful_s
        self.options, self.triton_key = options or FrontendOptions(), triton_key
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> OpenAIFrontend:
        import uvicorn

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            sock = socket.create_server((self.host, self.port), family=family)
        except OSError as exc:
            raise ServerError(
                f"port {self.port} (OpenAI API) on {self.host} is not available ({exc.strerror}); "
                "stop what holds it or pass another --openai-port"
            ) from None
        self.port = sock.getsockname()[1]
        if not security.is_loopback(self.host) and not self.options.api_key:
            logger.warning(
                "the OpenAI API binds %s without an API key: anyone who reaches the port may generate "
                "(--openai-api-key-file or $%s)",
                self.host,
                security.OPENAI_KEY_ENV,
            )
        config = uvicorn.Config(
            create_app(self.grpc_url, self.repository, options=self.options, triton_key=self.triton_key),
            host=self.host,
            port=self.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(self.graceful_s),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="openai-frontend", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise ServerError(f"the OpenAI API frontend on {self.url} did not start")
            time.sleep(0.01)
        logger.info("OpenAI-compatible API on %s/v1 (Triton gRPC %s)", self.url, self.grpc_url)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=self.graceful_s + 5)
        self._server = None

    def __enter__(self) -> OpenAIFrontend:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
