"""The request schema of text generation: the sampling fields, their ranges, both wire forms.

One validated `SamplingParams` object for the client and the server, reached through either of
the two request schemas of Triton's LLM backends:

- vLLM's: the `sampling_parameters` JSON (`parse_sampling_parameters`); numbers and booleans may
  come as JSON strings (`"max_tokens": "64"`, `"ignore_eos": "true"`), as genai-perf sends them;
- TensorRT-LLM's: optional input tensors (`TENSOR_INPUTS`: `max_tokens` INT32, `temperature`
  FP32, `random_seed` UINT64, `stop_words` BYTES, ...), merged into the same fields by
  `params_from_request`; a field given both ways is an error.

Every field is one row of `RULES` (its type, its allowed range in words, and the check);
`SamplingParams.from_dict` walks the table. The client checks what it sends with
`SamplingParams.from_dict(..., max_tokens_limit=None)`, the server checks what it receives
with its configured limit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np

# The `sampling_parameters` JSON fields: vLLM's SamplingParams fields that apply to one
# GPT-2 sequence. `n` and `best_of` are accepted at 1 only.
SAMPLING_KEYS = (
    "max_tokens",
    "min_tokens",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "seed",
    "stop",
    "stop_token_ids",
    "bad_words",
    "ignore_eos",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logprobs",
    "prompt_logprobs",
    "structured_output",
    "n",
    "best_of",
)
DEFAULT_MAX_TOKENS = 64
MAX_LOGPROBS = 20  # alternatives a token's log-probability comes with (OpenAI's top_logprobs)
MAX_STOP_STRINGS = 16
MAX_WORDS = 64  # stop_token_ids, bad_words
PENALTY_LIMIT = 2.0  # presence and frequency penalty in [-2, 2], as vLLM and OpenAI
REPETITION_LIMIT = 100.0

# TensorRT-LLM's optional input tensors (ensemble, BLS and tensorrt_llm models): (name,
# Triton datatype, dims, the sampling field it sets or None for a control checked below).
TENSOR_INPUTS = (
    ("max_tokens", "INT32", (1,), "max_tokens"),
    ("min_length", "INT32", (1,), "min_tokens"),
    ("min_tokens", "INT32", (1,), "min_tokens"),
    ("temperature", "FP32", (1,), "temperature"),
    ("top_k", "INT32", (1,), "top_k"),
    ("runtime_top_k", "INT32", (1,), "top_k"),
    ("top_p", "FP32", (1,), "top_p"),
    ("runtime_top_p", "FP32", (1,), "top_p"),
    ("random_seed", "UINT64", (1,), "seed"),
    ("presence_penalty", "FP32", (1,), "presence_penalty"),
    ("frequency_penalty", "FP32", (1,), "frequency_penalty"),
    ("repetition_penalty", "FP32", (1,), "repetition_penalty"),
    ("stop_words", "BYTES", (-1,), "stop"),
    ("bad_words", "BYTES", (-1,), "bad_words"),
    ("end_id", "INT32", (1,), "end_id"),
    ("pad_id", "INT32", (1,), None),
    ("beam_width", "INT32", (1,), None),
    ("return_log_probs", "BOOL", (1,), None),
    ("return_context_logits", "BOOL", (1,), None),
    ("return_generation_logits", "BOOL", (1,), None),
)
_TENSOR_TYPES = {name: dtype for name, dtype, _, _ in TENSOR_INPUTS}
_TENSOR_FIELDS = {name: f for name, _, _, f in TENSOR_INPUTS}
_LOGIT_OUTPUTS = ("return_log_probs", "return_context_logits", "return_generation_logits")


class RequestError(ValueError):
    """A request field is out of range; the message names the field and the allowed range."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _from_string(v, kind: str, strings: bool):
    """A JSON string holding a number or a boolean, converted the way vLLM's Triton backend
    converts its fields (`int("64")`, `float("0.5")`); anything else unchanged."""
    if not strings or not isinstance(v, str):
        return v
    text = v.strip()
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        return v
    if kind == "bool" and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return v


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = DEFAULT_MAX_TOKENS
    min_tokens: int = 0  # EOS, stop tokens and stop strings cannot end the text before this
    temperature: float = 0.0  # 0 = greedy, as in vLLM and TensorRT-LLM
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0  # 0 = off
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    bad_words: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    end_id: int | None = None  # TensorRT-LLM's `end_id` tensor: the token that ends the text
    # vLLM's: each generated token's log-probability with this many most likely alternatives
    # (0: the chosen token's alone; None: none), and the same for the prompt's tokens
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    # a grammar the output must follow (`engine.structured`), as canonical JSON text:
    # {"json": schema} | {"json_object": true} | {"regex": r} | {"choice": [...]} | {"grammar": lark}
    structured_output: str | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def penalized(self) -> bool:
        """Any penalty that changes the logits (then the graph's arg-max cannot be used)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)

    @classmethod
    def from_dict(
        cls,
        data: dict,
        max_tokens_limit: int | None,
        strings: bool = False,
        names: dict[str, str] | None = None,
    ) -> SamplingParams:
        """Check every field against `RULES`; RequestError names the first bad one and its
        allowed range. `max_tokens_limit` None: only the server knows its limit, the client
        checks >= 1. `strings`: numbers and booleans may be JSON strings (vLLM's schema).
        `names`: what to call a field in messages (the input tensor it came from)."""
        if not isinstance(data, dict):
            raise RequestError("sampling_parameters: must be a JSON object")
        unknown = sorted(set(data) - set(SAMPLING_KEYS))
        if unknown:
            raise RequestError(
                f"sampling_parameters: unknown field(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(SAMPLING_KEYS)}"
            )
        names = names or {}
        kw: dict = {}
        for rule in RULES:
            if rule.key not in data or (rule.optional and data[rule.key] is None):
                continue
            value = rule.parse(data[rule.key], _Context(max_tokens_limit, kw), strings, names.get(rule.key))
            if rule.keep:
                kw[rule.key] = value
        return cls(**kw)

    def to_dict(self) -> dict:
        """The JSON fields that differ from the defaults (what goes over the wire)."""
        default = SamplingParams()
        out = {}
        for k, v in asdict(self).items():
            if k in SAMPLING_KEYS and (v != getattr(default, k) or k == "max_tokens"):
                out[k] = list(v) if isinstance(v, tuple) else v
        return out


@dataclass(frozen=True)
class _Context:
    """What a rule's range may depend on: the server's limit, the fields read before it."""

    max_tokens_limit: int | None
    read: dict

    @property
    def max_tokens(self) -> int:
        return self.read.get("max_tokens", DEFAULT_MAX_TOKENS)


def _scalar(kind: str) -> Callable[[object], bool]:
    return {"int": _is_int, "float": _is_number, "bool": lambda v: isinstance(v, bool)}[kind]


@dataclass(frozen=True)
class Rule:
    """One sampling field: its type (`int`, `float`, `bool`, `texts`: a string or a list of
    strings, `ids`: a list of token ids), the check of a value, the allowed range in words
    (both may read the context), and what is kept."""

    key: str
    kind: str
    ok: Callable[[object, _Context], bool]
    allowed: Callable[[_Context], str]
    optional: bool = False  # null means "not given"
    keep: bool = True  # False: checked, not stored (n and best_of at 1)
    convert: Callable[[object], object] = lambda v: v
    most: int = 0  # list kinds: the most entries

    def parse(self, raw, ctx: _Context, strings: bool, name: str | None):
        name = name or self.key
        if self.kind == "spec":  # an object (or, in vLLM's string-typed schema, its JSON text)
            from engine.structured import check_spec

            value = raw
            if isinstance(raw, str):
                try:
                    value = json.loads(raw)
                except ValueError:
                    value = raw
            why = check_spec(value)
            if why is not None:
                raise RequestError(f"{name} must be {why}")
            return json.dumps(value, sort_keys=True, separators=(",", ":"))
        if self.kind in ("texts", "ids"):
            items = [raw] if self.kind == "texts" and isinstance(raw, str) else raw
            good = isinstance(items, (list, tuple)) and len(items) <= self.most
            good = good and all(self.ok(item, ctx) for item in items)
            if not good:
                raise RequestError(f"{name} must be {self.allowed(ctx)}")
            return tuple(items)
        value = _from_string(raw, self.kind, strings)
        if not _scalar(self.kind)(value) or not self.ok(value, ctx):
            raise RequestError(f"{name} must be {self.allowed(ctx)}, got {raw!r}")
        return self.convert(float(value) if self.kind == "float" else value)


def _in(lo, hi, lo_open=False):
    return lambda v, _ctx: (lo < v if lo_open else lo <= v) and v <= hi


def _max_tokens_range(ctx: _Context) -> str:
    limit = ctx.max_tokens_limit
    return f"an integer in 1..{limit}" if limit is not None else "an integer >= 1"


def _penalty(key: str) -> Rule:
    return Rule(key, "float", _in(-PENALTY_LIMIT, PENALTY_LIMIT), lambda _: "a number in [-2, 2] (0 = off)")


def _one_sequence(key: str) -> Rule:
    return Rule(
        key,
        "int",
        lambda v, _: v == 1,
        lambda _: "1 (one sequence per request on this server)",
        optional=True,
        keep=False,
    )


# The fields in the order they are checked (min_tokens reads max_tokens).
RULES = (
    Rule(
        "max_tokens",
        "int",
        lambda v, c: 1 <= v <= (c.max_tokens_limit if c.max_tokens_limit is not None else math.inf),
        _max_tokens_range,
    ),
    Rule(
        "min_tokens",
        "int",
        lambda v, c: 0 <= v <= c.max_tokens,
        lambda c: f"an integer in 0..max_tokens ({c.max_tokens})",
    ),
    Rule("temperature", "float", _in(0, 100), lambda _: "a number in [0, 100] (0 = greedy)"),
    # vLLM's -1 and 0 both mean off
    Rule(
        "top_k",
        "int",
        lambda v, _: v >= -1,
        lambda _: "an integer >= -1 (0 or -1 = off)",
        convert=lambda v: max(0, v),
    ),
    Rule("top_p", "float", _in(0, 1, lo_open=True), lambda _: "a number in (0, 1]"),
    Rule("min_p", "float", _in(0, 1), lambda _: "a number in [0, 1] (0 = off)"),
    Rule("seed", "int", _in(0, 2**64 - 1), lambda _: "an integer in 0..2^64-1", optional=True),
    Rule(
        "stop",
        "texts",
        lambda s, _: isinstance(s, str) and bool(s),
        lambda _: f"a non-empty string or a list of up to {MAX_STOP_STRINGS} non-empty strings",
        optional=True,
        most=MAX_STOP_STRINGS,
    ),
    Rule(
        "stop_token_ids",
        "ids",
        lambda t, _: _is_int(t) and t >= 0,
        lambda _: f"a list of up to {MAX_WORDS} token ids >= 0",
        optional=True,
        most=MAX_WORDS,
    ),
    Rule(
        "bad_words",
        "texts",
        lambda s, _: isinstance(s, str) and bool(s.strip()),
        lambda _: f"a list of up to {MAX_WORDS} non-blank strings",
        optional=True,
        most=MAX_WORDS,
    ),
    Rule("ignore_eos", "bool", lambda v, _: True, lambda _: "true or false"),
    _penalty("presence_penalty"),
    _penalty("frequency_penalty"),
    Rule(
        "repetition_penalty",
        "float",
        _in(0, REPETITION_LIMIT, lo_open=True),
        lambda _: f"a number in (0, {REPETITION_LIMIT:g}] (1 = off)",
    ),
    Rule(
        "logprobs",
        "int",
        _in(0, MAX_LOGPROBS),
        lambda _: f"an integer in 0..{MAX_LOGPROBS} (alternatives per token; null = none)",
        optional=True,
    ),
    Rule(
        "prompt_logprobs",
        "int",
        _in(0, MAX_LOGPROBS),
        lambda _: f"an integer in 0..{MAX_LOGPROBS} (alternatives per prompt token; null = none)",
        optional=True,
    ),
    Rule(
        "structured_output",
        "spec",
        lambda v, _: True,
        lambda _: "a structured-output object",
        optional=True,
    ),
    _one_sequence("n"),
    _one_sequence("best_of"),
)
assert tuple(r.key for r in RULES) == SAMPLING_KEYS


def _load_json(text: str | bytes | dict | None) -> dict:
    if text is None or text in ("", b""):
        return {}
    if isinstance(text, dict):
        return dict(text)
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"sampling_parameters: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RequestError("sampling_parameters: must be a JSON object")
    return data


def parse_sampling_parameters(text: str | bytes | dict | None, max_tokens_limit: int) -> SamplingParams:
    """Parse and check the `sampling_parameters` JSON (vLLM's schema: numbers and booleans may
    be JSON strings); RequestError names the bad field."""
    return SamplingParams.from_dict(_load_json(text), max_tokens_limit, strings=True)


def _tensor_value(name: str, array: np.ndarray):
    """The Python value of one TensorRT-LLM input: one number or boolean ([1] or [1, 1], as the
    ensemble sends it), or a list of strings (BYTES)."""
    array = np.asarray(array)
    if _TENSOR_TYPES[name] == "BYTES":
        words = []
        for item in array.reshape(-1):
            try:
                word = item.decode("utf-8") if isinstance(item, bytes) else str(item)
            except UnicodeDecodeError:
                raise RequestError(f"{name} must hold UTF-8 strings") from None
            if word:  # an empty entry is no word (what clients send for "none")
                words.append(word)
        return words
    if array.size != 1:
        raise RequestError(f"{name} must hold exactly one value, got shape {list(array.shape)}")
    value = array.reshape(-1)[0]
    if array.dtype == np.bool_:
        return bool(value)
    if np.issubdtype(array.dtype, np.integer):
        return int(value)
    if np.issubdtype(array.dtype, np.floating):
        return float(value)
    raise RequestError(f"{name} must be {_TENSOR_TYPES[name]}, got {array.dtype}")


def params_from_request(
    sampling_parameters: str | bytes | dict | None,
    tensors: dict[str, np.ndarray],
    max_tokens_limit: int,
) -> SamplingParams:
    """The one SamplingParams of a request that may use either schema: the vLLM JSON and the
    TensorRT-LLM input tensors present (`tensors`: name -> array, names from TENSOR_INPUTS).
    A field set both ways is an error naming the tensor and the JSON key."""
    data = _load_json(sampling_parameters)
    names, source, end_id = {}, {}, None
    for name, array in tensors.items():
        target = _TENSOR_FIELDS[name]
        value = _tensor_value(name, array)
        if target is None:
            _check_control(name, value)
            continue
        if target == "end_id":
            if not 0 <= value < 2**31:
                raise RequestError(f"end_id must be a token id >= 0, got {value!r}")
            end_id = value
            continue
        if target in source:
            raise RequestError(
                f"{target} is given twice: by the {source[target]} and {name} input tensors; send one"
            )
        if target in data:
            raise RequestError(
                f"{target} is given twice: as the {name} input tensor and in sampling_parameters; send one"
            )
        if name in ("top_p", "runtime_top_p") and value == 0.0:
            value = 1.0  # TensorRT-LLM's top_p 0 = off
        if target in ("stop", "bad_words") and not value:
            continue
        source[target], names[target], data[target] = name, name, value
    params = SamplingParams.from_dict(data, max_tokens_limit, strings=True, names=names)
    return params if end_id is None else replace(params, end_id=end_id)


def _check_control(name: str, value) -> None:
    if name == "beam_width" and value != 1:
        raise RequestError(f"beam_width must be 1 (this server decodes one beam), got {value!r}")
    if name in _LOGIT_OUTPUTS and value:
        raise RequestError(f"{name} must be false: this server returns text only")
    if name == "pad_id" and not 0 <= value < 2**31:
        raise RequestError(f"pad_id must be a token id >= 0, got {value!r}")
