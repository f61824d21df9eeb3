"""OpenAI's request and response shapes, mapped onto the served text model's interface.

Plain functions and dataclasses (no FastAPI, no Triton) so that tests can call them without a
server. A request becomes one `Generation`: the prompt text the server receives and the
sampling fields that `SamplingParams` (the client's and the server's one validated object)
checks; OpenAI's own limits (n = 1, temperature 0..2) are checked here first.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass

from engine.request_schema import SAMPLING_KEYS, RequestError, SamplingParams

logger = logging.getLogger(__name__)

# OpenAI's documented default for /v1/completions; chat defaults to what fits the window.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
OPENAI_MAX_TEMPERATURE = 2.0
CHAT_ROLES = ("system", "developer", "user", "assistant")

# Fields of OpenAI's requests this server cannot honour: accepted only at a value that asks
# for nothing (what the official clients send when the caller leaves them out).
_NEUTRAL = {
    "logit_bias": (None, {}),
    "suffix": (None, ""),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "parallel_tool_calls": (None, False, True),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
}
# Bookkeeping fields with no effect on the text: accepted and ignored.
_IGNORED = ("user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key", "verbosity")
# vLLM's extra sampling fields (the openai client sends them through `extra_body`).
_EXTRA_SAMPLING = (
    "top_k",
    "ignore_eos",
    "repetition_penalty",
    "min_tokens",
    "min_p",
    "stop_token_ids",
    "bad_words",
)
# OpenAI's sampling fields, passed on as the same SamplingParams fields (the same ranges:
# penalties in [-2, 2])
_SAMPLING = ("temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty")
# structured output: OpenAI's response_format, vLLM's guided_* and structured_outputs fields
_STRUCTURED = (
    "response_format",
    "structured_outputs",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
)
_COMMON = ("model", "stream", "stream_options", "n", "max_tokens") + _SAMPLING + _STRUCTURED
COMPLETION_FIELDS = frozenset(_COMMON + ("prompt", "echo", "logprobs", "best_of") + _EXTRA_SAMPLING)
CHAT_FIELDS = frozenset(
    _COMMON + ("messages", "max_completion_tokens", "logprobs", "top_logprobs") + _EXTRA_SAMPLING
)
MAX_LOGPROBS = 20  # vLLM's default max_logprobs (OpenAI: 5 for completions, 20 for chat)
MAX_BATCH = 256  # prompts in one completions request
MAX_N = 64  # choices per prompt (n, best_of)


class APIError(Exception):
    """An error answered as OpenAI's error object with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None) -> APIError:
    return APIError(400, message, param=param)


def model_not_found(model: str, served: list[str]) -> APIError:
    return APIError(
        404,
        f"The model '{model}' does not exist or is not a text model; served text models: "
        f"{', '.join(served) or 'none'}",
        param="model",
        code="model_not_found",
    )


@dataclass(frozen=True)
class ChatTemplate:
    """GPT-2 has no chat format of its own: each message is `message` with `{role}` and
    `{content}` replaced, then `generation` starts the assistant's turn. The served model's
    config.pbtxt parameters `chat_message_template` and `chat_generation_prompt` override
    the defaults."""

    message: str = "{role}: {content}\n"
    generation: str = "assistant:"

    @classmethod
    def from_parameters(cls, parameters: dict[str, str]) -> ChatTemplate:
        default = cls()
        message = parameters.get("chat_message_template") or default.message
        if "{content}" not in message:
            raise ValueError(f"chat_message_template must contain {{content}}, got {message!r}")
        return cls(message, parameters.get("chat_generation_prompt", default.generation))

    def jinja(self) -> str:
        """The same template in the Jinja form Hugging Face tokenizers carry (`chat_template`),
        for clients that render chats themselves (vLLM's /tokenizer_info)."""

        def literal(text: str) -> str:
            return "{{ " + json.dumps(text) + " }}" if text else ""

        def piece(text: str) -> str:
            out = []
            for i, part in enumerate(text.split("{content}")):
                if i:
                    out.append("{{ message['content'] }}")
                out.append("{{ message['role'] }}".join(literal(x) for x in part.split("{role}")))
            return "".join(out)

        return (
            "{% for message in messages %}" + piece(self.message) + "{% endfor %}"
            "{% if add_generation_prompt %}" + literal(self.generation) + "{% endif %}"
        )

    def render(self, messages) -> str:
        """`messages`: (role, content) pairs."""
        # str.replace, not str.format: braces in a message are text, not fields.
        turns = (self.message.replace("{role}", r).replace("{content}", c) for r, c in messages)
        return "".join(turns) + self.generation


@dataclass(frozen=True)
class Generation:
    """One checked request: what goes to the server and how the answer is shaped."""

    kind: str  # "completion" | "chat"
    model: str
    prompt: str  # the text the server receives (chat: set by `ChatTemplate.render(messages)`)
    sampling: dict  # SamplingParams fields; max_tokens None = the endpoint's default
    stream: bool
    include_usage: bool
    echo: bool = False
    max_tokens_field: str = "max_tokens"  # how the caller named it, for error messages
    messages: tuple[tuple[str, str], ...] = ()  # chat: (role, content) pairs
    # completions: each prompt of the batch, text or token ids (a choice each, by index)
    prompts: tuple = ()
    logprobs: int | None = None  # alternatives per token; None: no log-probabilities
    score_only: bool = False  # max_tokens 0 with echo: the prompt's log-probabilities alone
    structured_field: str = "response_format"  # the field that asked for structured output
    n: int = 1  # choices returned per prompt
    best_of: int = 1  # generated per prompt; the n of highest log-probability returned

    def params(
        self,
        default_max_tokens: int,
        max_tokens_limit: int | None = None,
        defaults: dict | None = None,
        choice: int = 0,
    ) -> SamplingParams:
        """The request's sampling fields, with `defaults` (the model's) for those it left out;
        the log-probabilities it asks (with `echo`, the prompt's too). `choice` j of a prompt's
        n samples draws from `seed + j`, and best_of ranks by log-probabilities."""
        fields = {**(defaults or {}), **self.sampling}
        if choice and fields.get("seed") is not None:
            fields["seed"] = (fields["seed"] + choice) % 2**64
        if self.best_of > self.n:
            fields.setdefault("logprobs", 0)
        if fields.get("max_tokens") is None:
            fields["max_tokens"] = default_max_tokens
        if self.score_only:  # one token is generated and dropped: the engine always makes one
            fields["max_tokens"] = 1
        if self.logprobs is not None:
            fields["logprobs"] = self.logprobs
            if self.echo:
                fields["prompt_logprobs"] = self.logprobs
        return check_sampling(fields, self.max_tokens_field, max_tokens_limit, self.structured_field)


def check_sampling(
    fields: dict,
    max_tokens_field: str = "max_tokens",
    max_tokens_limit: int | None = None,
    structured_field: str = "response_format",
) -> SamplingParams:
    """SamplingParams' own checks, with the served model's max_tokens limit when known (the
    server checks it again); a RequestError becomes a 400 naming the field."""
    try:
        return SamplingParams.from_dict(fields, max_tokens_limit=max_tokens_limit)
    except RequestError as exc:
        raise field_error(str(exc), max_tokens_field, structured_field=structured_field) from None


def field_error(
    message: str,
    max_tokens_field: str = "max_tokens",
    prompt_field: str = "prompt",
    structured_field: str = "response_format",
) -> APIError:
    """A 400 for a RequestError message (client- or server-side), `param` set from the field
    it names (its first word) in OpenAI's spelling."""
    head = message.split(" ", 1)[0].rstrip(":")
    if head == "structured_output":  # the field the request used for it
        message = structured_field + message[len("structured_output") :]
        head = structured_field
    elif head == "max_tokens" and max_tokens_field != "max_tokens":
        message = max_tokens_field + message[len("max_tokens") :]
        head = max_tokens_field
    elif head == "text_input":
        head = prompt_field
    elif head not in SAMPLING_KEYS:
        head = None
    return bad_request(message, head)


def server_error(message: str, gen: Generation) -> APIError:
    """The APIError for an error the server (or the client on its behalf) answered."""
    if message.startswith(("server busy", "server is shutting down")):
        return APIError(503, message, type="server_error", code="server_busy")
    if message.startswith("Request for unknown model"):  # unloaded since it was looked up
        return APIError(404, message, param="model", code="model_not_found")
    if message.split(" ", 1)[0].rstrip(":") in (*SAMPLING_KEYS, "text_input", "sampling_parameters"):
        prompt_field = "messages" if gen.kind == "chat" else "prompt"
        return field_error(message, gen.max_tokens_field, prompt_field, gen.structured_field)
    if "StatusCode.UNAVAILABLE" in message or "failed to connect" in message:
        return APIError(503, f"the inference server is unreachable: {message}", type="server_error")
    return APIError(500, message, type="server_error")


def _check_object(body) -> dict:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", None)
    return body


_logged_unknown: set[str] = set()
_logged_lock = threading.Lock()


def _check_fields(body: dict, allowed: frozenset) -> None:
    """Fields this server cannot honour at a value that asks for something: 400. Fields it
    does not know: ignored, as vLLM does (clients send newer and vendor fields), and logged
    once per name."""
    for key, value in body.items():
        if key in allowed or key in _IGNORED:
            continue
        if key in _NEUTRAL:
            if value not in _NEUTRAL[key]:
                raise bad_request(f"{key} is not supported by this server (got {value!r})", key)
            continue
        with _logged_lock:
            first = key not in _logged_unknown and len(_logged_unknown) < 1000
            if first:
                _logged_unknown.add(key)
        if first:
            logger.warning(
                "ignoring the request field %r, which this server does not know (logged once)", key
            )


def _common(body: dict) -> tuple[str, dict, bool, bool]:
    """(model, sampling fields, stream, include_usage) of either endpoint."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required: the name of a served text model (GET /v1/models)", "model")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request(f"stream must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request(
            'stream_options must be an object such as {"include_usage": true}', "stream_options"
        )
    include_usage = bool((options or {}).get("include_usage", False))
    sampling = {k: body[k] for k in _SAMPLING + _EXTRA_SAMPLING if k in body}
    sampling = {k: v for k, v in sampling.items() if v is not None}
    if isinstance(sampling.get("stop"), list) and not sampling["stop"]:
        del sampling["stop"]
    t = sampling.get("temperature")
    # OpenAI's range is narrower than SamplingParams' [0, 100]: say OpenAI's.
    if t is not None and not (
        isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= OPENAI_MAX_TEMPERATURE
    ):
        raise bad_request(
            f"temperature must be a number in 0..{OPENAI_MAX_TEMPERATURE:g} (0 = greedy), got {t!r}",
            "temperature",
        )
    spec = _structured(body)
    if spec is not None:
        sampling["structured_output"] = spec
    check_sampling(sampling, structured_field=_structured_field(body))  # SamplingParams' own checks
    return model, sampling, bool(stream), include_usage


def _prompts(prompt) -> tuple:
    """OpenAI's prompt forms: a string, a list of strings, a list of token ids, or a list of
    lists of token ids; each prompt a string or a tuple of ids."""

    def ids(x) -> bool:
        return (
            isinstance(x, list)
            and bool(x)
            and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in x)
        )

    if isinstance(prompt, str) and prompt:
        return (prompt,)
    if ids(prompt):
        return (tuple(prompt),)
    if isinstance(prompt, list) and prompt and len(prompt) <= MAX_BATCH:
        if all(isinstance(p, str) and p for p in prompt):
            return tuple(prompt)
        if all(ids(p) for p in prompt):
            return tuple(tuple(p) for p in prompt)
    raise bad_request(
        "prompt must be a non-empty string, a list of token ids, or a list of up to "
        f"{MAX_BATCH} of either (one choice each)",
        "prompt",
    )


def _logprobs_field(body: dict, key: str) -> int | None:
    value = body.get(key)
    if value is None or value is False:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_LOGPROBS:
        raise bad_request(f"{key} must be an integer in 0..{MAX_LOGPROBS} or null, got {value!r}", key)
    return value


def _count_field(body: dict, key: str, least: int = 1) -> int:
    value = body.get(key)
    if value is None:
        return least
    if not isinstance(value, int) or isinstance(value, bool) or not least <= value <= MAX_N:
        raise bad_request(f"{key} must be an integer in {least}..{MAX_N}, got {value!r}", key)
    return value


def _choices(body: dict, stream: bool) -> tuple[int, int]:
    """(n, best_of): best_of >= n, and not with a stream (the best are known at the end)."""
    n = _count_field(body, "n")
    best_of = _count_field(body, "best_of", n) if body.get("best_of") is not None else n
    if best_of > n and stream:
        raise bad_request("best_of > n cannot stream: the best are known when all have ended", "best_of")
    return n, best_of


def _structured_field(body: dict) -> str:
    return next((k for k in _STRUCTURED if body.get(k) is not None), "response_format")


def _structured(body: dict) -> dict | None:
    """The engine's `structured_output` spec from whichever of OpenAI's and vLLM's fields
    the request uses (at most one)."""
    given = [k for k in _STRUCTURED if body.get(k) is not None]
    fmt = body.get("response_format")
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
            raise bad_request(
                'response_format must be {"type": "text"}, {"type": "json_object"} or '
                '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}',
                "response_format",
            )
        if fmt["type"] == "text":
            given.remove("response_format")
    if len(given) > 1:
        raise bad_request(f"give one structured-output field, not {', '.join(given)}", given[1])
    if not given:
        return None
    key = given[0]
    value = body[key]
    if key == "response_format":
        if value["type"] == "json_object":
            return {"json_object": True}
        schema = (value.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise bad_request(
                "response_format.json_schema.schema must be a JSON schema object", "response_format"
            )
        return {"json": schema}
    if key == "structured_outputs":
        if not isinstance(value, dict):
            raise bad_request('structured_outputs must be an object such as {"json": {...}}', key)
        return value
    kind = {
        "guided_json": "json",
        "guided_regex": "regex",
        "guided_choice": "choice",
        "guided_grammar": "grammar",
    }[key]
    if kind == "json" and isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise bad_request(
                "guided_json must be a JSON schema (an object, or its JSON text)", key
            ) from None
    return {kind: value}


def parse_completion(body) -> Generation:
    body = _check_object(body)
    _check_fields(body, COMPLETION_FIELDS)
    model, sampling, stream, include_usage = _common(body)
    n, best_of = _choices(body, stream)
    prompts = _prompts(body.get("prompt"))
    echo = body.get("echo") or False
    if not isinstance(echo, bool):
        raise bad_request(f"echo must be true or false, got {echo!r}", "echo")
    max_tokens = body.get("max_tokens")
    score_only = max_tokens == 0 and echo
    if max_tokens == 0 and not echo:
        raise bad_request(
            "max_tokens 0 needs echo: true (the prompt scored, nothing generated)", "max_tokens"
        )
    sampling["max_tokens"] = None if score_only else max_tokens
    first = prompts[0] if isinstance(prompts[0], str) else ""
    return Generation(
        "completion",
        model,
        first,
        sampling,
        stream,
        include_usage,
        echo,
        prompts=prompts,
        logprobs=_logprobs_field(body, "logprobs"),
        score_only=score_only,
        n=n,
        best_of=best_of,
        structured_field=_structured_field(body),
    )


def parse_chat(body) -> Generation:
    """The prompt is left empty: the served model's ChatTemplate renders `messages` into it."""
    body = _check_object(body)
    _check_fields(body, CHAT_FIELDS)
    model, sampling, stream, include_usage = _common(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list of {role, content} objects", "messages")
    turns = tuple(_message(i, m) for i, m in enumerate(messages))
    field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    sampling["max_tokens"] = body.get(field)
    wants = body.get("logprobs") or False
    if not isinstance(wants, bool):
        raise bad_request(f"logprobs must be true or false, got {wants!r}", "logprobs")
    n = _count_field(body, "n")
    top = _logprobs_field(body, "top_logprobs")
    if top is not None and not wants:
        raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
    return Generation(
        "chat",
        model,
        "",
        sampling,
        stream,
        include_usage,
        max_tokens_field=field,
        messages=turns,
        logprobs=(top or 0) if wants else None,
        n=n,
        best_of=n,
        structured_field=_structured_field(body),
    )


def _message(i: int, m) -> tuple[str, str]:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise bad_request(f"{where} must be an object with role and content", "messages")
    role = m.get("role")
    if role not in CHAT_ROLES:
        raise bad_request(f"{where}.role must be one of {', '.join(CHAT_ROLES)}, got {role!r}", "messages")
    content = m.get("content")
    if isinstance(content, list):  # content parts: only text ones can reach GPT-2
        if not all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content
        ):
            raise bad_request(f"{where}.content: only text parts are supported", "messages")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise bad_request(f"{where}.content must be a string or a list of text parts", "messages")
    return role, content


@dataclass(frozen=True)
class TokenizeRequest:
    model: str  # "": the server's one text model
    prompt: str = ""
    messages: tuple[tuple[str, str], ...] = ()
    return_token_strs: bool = False


@dataclass(frozen=True)
class DetokenizeRequest:
    model: str  # "": the server's one text model
    tokens: tuple[int, ...]


def _model_field(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required: the name of a served text model (GET /v1/models)", "model")
    return model


def _optional_model(body: dict) -> str:
    """vLLM's tokenizer routes: `model` may be left out where one text model is served."""
    return _model_field(body) if body.get("model") is not None else ""


def parse_tokenize(body) -> TokenizeRequest:
    """vLLM's /tokenize: `prompt` (text) or `messages` (rendered by the chat template)."""
    body = _check_object(body)
    model = _optional_model(body)
    strs = body.get("return_token_strs") or False
    if not isinstance(strs, bool):
        raise bad_request(f"return_token_strs must be true or false, got {strs!r}", "return_token_strs")
    if "messages" in body:
        messages = body["messages"]
        if not isinstance(messages, list) or not messages:
            raise bad_request("messages must be a non-empty list of {role, content} objects", "messages")
        return TokenizeRequest(
            model, messages=tuple(_message(i, m) for i, m in enumerate(messages)), return_token_strs=strs
        )
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise bad_request("prompt must be a string (or give messages)", "prompt")
    return TokenizeRequest(model, prompt=prompt, return_token_strs=strs)


def parse_detokenize(body) -> DetokenizeRequest:
    body = _check_object(body)
    model = _optional_model(body)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in tokens
    ):
        raise bad_request("tokens must be a list of token ids (integers)", "tokens")
    return DetokenizeRequest(model, tuple(tokens))


# -- responses --------------------------------------------------------------------------
def finish_reason(completion_tokens: int, max_tokens: int) -> str:
    """ "length" when the text reached max_tokens, else "stop" (end of text or a stop string).
    The server streams text, not token ids: the count is the text re-encoded by the model's
    tokenizer, which is the generated count whenever the text encodes back to the same ids."""
    return "length" if completion_tokens >= max_tokens else "stop"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def total_usage(each: list[dict]) -> dict:
    """The usage of a request whose choices had `each`."""
    prompt = sum(u["prompt_tokens"] for u in each)
    return usage(prompt, sum(u["completion_tokens"] for u in each))


class ResponseWriter:
    """Builds one request's response or stream chunks in OpenAI's format."""

    def __init__(self, gen: Generation):
        self.gen = gen
        prefix, self.object = (
            ("chatcmpl", "chat.completion") if gen.kind == "chat" else ("cmpl", "text_completion")
        )
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self._offsets: dict[int, int] = {}  # choice -> characters its tokens covered so far

    def _envelope(self, obj: str, choices: list, extra: dict | None = None) -> dict:
        out = {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.gen.model,
            "choices": choices,
        }
        out.update(extra or {})
        return out

    def choice(self, index: int, text: str, reason: str, logprobs: dict | None = None) -> dict:
        if self.gen.kind == "chat":
            out = {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs}
        else:
            out = {"index": index, "text": text, "logprobs": logprobs}
        out["finish_reason"] = reason
        return out

    def response(self, choices: list[dict], counts: dict) -> dict:
        return self._envelope(self.object, choices, {"usage": counts})

    def chunk(
        self,
        text: str | None = None,
        reason: str | None = None,
        first: bool = False,
        index: int = 0,
        logprobs: dict | None = None,
    ) -> dict:
        if self.gen.kind == "chat":
            delta = {"role": "assistant", "content": ""} if first else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
            return self._envelope("chat.completion.chunk", [choice])
        choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": reason}
        return self._envelope("text_completion", [choice])

    def usage_chunk(self, counts: dict) -> dict:
        obj = "chat.completion.chunk" if self.gen.kind == "chat" else "text_completion"
        return self._envelope(obj, [], {"usage": counts})

    def logprobs(self, tokenizer, entries: list, index: int = 0) -> dict | None:
        """`engine.logprobs` entries (`[token, logprob, [[alt, logprob], ...]]`; a prompt's
        first token `[token, None, None]`) in OpenAI's shape: completions' `tokens`,
        `token_logprobs`, `top_logprobs` (the alternatives and the token itself, as vLLM) and
        `text_offset` (into the choice's returned text, as vLLM); chat's `content` list."""
        if self.gen.logprobs is None:
            return None

        def piece(token: int) -> str:
            return tokenizer.decode([token], skip_special_tokens=False)

        if self.gen.kind == "chat":
            content = []
            for token, lp, alts in entries:
                text = piece(token)
                top = [
                    {"token": piece(t), "logprob": v, "bytes": list(piece(t).encode())} for t, v in alts or ()
                ]
                content.append(
                    {"token": text, "logprob": lp, "bytes": list(text.encode()), "top_logprobs": top}
                )
            return {"content": content}
        out: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for token, lp, alts in entries:
            text = piece(token)
            out["text_offset"].append(self._offsets.get(index, 0))
            self._offsets[index] = self._offsets.get(index, 0) + len(text)
            out["tokens"].append(text)
            out["token_logprobs"].append(lp)
            if lp is None:
                out["top_logprobs"].append(None)
            else:
                top = {piece(t): v for t, v in alts}
                top.setdefault(text, lp)
                out["top_logprobs"].append(top)
        return out


def sse(data: dict | str) -> bytes:
    """One server-sent event: `data: <json>` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


SSE_DONE = sse("[DONE]")
