"""Sampling parameters, the token sampler and incremental detokenizing for text generation.

One validated `SamplingParams` object for the client and the server, reached through either of
the two request schemas of Triton's LLM backends:

- vLLM's: the `sampling_parameters` JSON (`parse_sampling_parameters`); numbers and booleans may
  come as JSON strings (`"max_tokens": "64"`, `"ignore_eos": "true"`), as genai-perf sends them;
- TensorRT-LLM's: optional input tensors (`TENSOR_INPUTS`: `max_tokens` INT32, `temperature`
  FP32, `random_seed` UINT64, `stop_words` BYTES, ...), merged into the same fields by
  `params_from_request`; a field given both ways is an error.

The client checks what it sends with `SamplingParams.from_dict(..., max_tokens_limit=None)`,
the server checks what it receives with its configured limit. Only the standard library and
numpy: this file is copied into the model repository beside `model.py`.
"""

from __future__ import annotations

import json
import math
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
    "n",
    "best_of",
)
DEFAULT_MAX_TOKENS = 64
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
        """Check every field; RequestError names the first bad one and its allowed range.
        `max_tokens_limit` None: only the server knows its limit, the client checks >= 1.
        `strings`: numbers and booleans may be JSON strings (vLLM's schema). `names`: what to
        call a field in messages (the input tensor it came from)."""
        if not isinstance(data, dict):
            raise RequestError("sampling_parameters: must be a JSON object")
        unknown = sorted(set(data) - set(SAMPLING_KEYS))
        if unknown:
            raise RequestError(
                f"sampling_parameters: unknown field(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(SAMPLING_KEYS)}"
            )
        names = names or {}

        def get(key: str, kind: str, ok, allowed: str):
            raw = data[key]
            v = _from_string(raw, kind, strings)
            good = {"int": _is_int, "float": _is_number, "bool": lambda x: isinstance(x, bool)}[kind](v)
            if not good or not ok(v):
                raise RequestError(f"{names.get(key, key)} must be {allowed}, got {raw!r}")
            return float(v) if kind == "float" else v

        kw = {}
        if "max_tokens" in data:
            top = max_tokens_limit if max_tokens_limit is not None else math.inf
            allowed = f"1..{max_tokens_limit}" if max_tokens_limit is not None else ">= 1"
            kw["max_tokens"] = get("max_tokens", "int", lambda v: 1 <= v <= top, f"an integer in {allowed}")
        if "min_tokens" in data:
            most = kw.get("max_tokens", DEFAULT_MAX_TOKENS)
            kw["min_tokens"] = get(
                "min_tokens", "int", lambda v: 0 <= v <= most, f"an integer in 0..max_tokens ({most})"
            )
        if "temperature" in data:
            kw["temperature"] = get(
                "temperature", "float", lambda v: 0 <= v <= 100, "a number in [0, 100] (0 = greedy)"
            )
        if "top_k" in data:
            # vLLM's -1 and 0 both mean off
            kw["top_k"] = max(0, get("top_k", "int", lambda v: v >= -1, "an integer >= -1 (0 or -1 = off)"))
        if "top_p" in data:
            kw["top_p"] = get("top_p", "float", lambda v: 0 < v <= 1, "a number in (0, 1]")
        if "min_p" in data:
            kw["min_p"] = get("min_p", "float", lambda v: 0 <= v <= 1, "a number in [0, 1] (0 = off)")
        if data.get("seed") is not None:
            kw["seed"] = get("seed", "int", lambda v: 0 <= v < 2**64, "an integer in 0..2^64-1")
        if data.get("stop") is not None:
            v = data["stop"]
            v = [v] if isinstance(v, str) else v
            if (
                not isinstance(v, (list, tuple))
                or not all(isinstance(s, str) and s for s in v)
                or len(v) > MAX_STOP_STRINGS
            ):
                raise RequestError(
                    f"{names.get('stop', 'stop')} must be a non-empty string or a list of up to "
                    f"{MAX_STOP_STRINGS} non-empty strings"
                )
            kw["stop"] = tuple(v)
        if data.get("stop_token_ids") is not None:
            v = data["stop_token_ids"]
            if (
                not isinstance(v, (list, tuple))
                or len(v) > MAX_WORDS
                or not all(_is_int(t) and t >= 0 for t in v)
            ):
                raise RequestError(f"stop_token_ids must be a list of up to {MAX_WORDS} token ids >= 0")
            kw["stop_token_ids"] = tuple(v)
        if data.get("bad_words") is not None:
            v = data["bad_words"]
            v = [v] if isinstance(v, str) else v
            if (
                not isinstance(v, (list, tuple))
                or not all(isinstance(s, str) and s.strip() for s in v)
                or len(v) > MAX_WORDS
            ):
                raise RequestError(
                    f"{names.get('bad_words', 'bad_words')} must be a list of up to {MAX_WORDS} non-blank strings"
                )
            kw["bad_words"] = tuple(v)
        if "ignore_eos" in data:
            kw["ignore_eos"] = get("ignore_eos", "bool", lambda v: True, "true or false")
        for key in ("presence_penalty", "frequency_penalty"):
            if key in data:
                kw[key] = get(
                    key,
                    "float",
                    lambda v: -PENALTY_LIMIT <= v <= PENALTY_LIMIT,
                    "a number in [-2, 2] (0 = off)",
                )
        if "repetition_penalty" in data:
            kw["repetition_penalty"] = get(
                "repetition_penalty",
                "float",
                lambda v: 0 < v <= REPETITION_LIMIT,
                f"a number in (0, {REPETITION_LIMIT:g}] (1 = off)",
            )
        if data.get("n") is not None:
            get("n", "int", lambda v: v == 1, "1 (one sequence per request on this server)")
        if data.get("best_of") is not None:
            get("best_of", "int", lambda v: v == 1, "1 (one sequence per request on this server)")
        return cls(**kw)

    def to_dict(self) -> dict:
        """The JSON fields that differ from the defaults (what goes over the wire)."""
        default = SamplingParams()
        out = {}
        for k, v in asdict(self).items():
            if k in SAMPLING_KEYS and (v != getattr(default, k) or k == "max_tokens"):
                out[k] = list(v) if isinstance(v, tuple) else v
        return out


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


class TokenHistory:
    """What a request has seen, for vLLM's penalties: every distinct token of the prompt and
    the output (repetition) and each output token's count (presence, frequency). Adding a
    token is O(1); applying costs O(distinct tokens), never a rescan of the sequence."""

    def __init__(self, prompt_ids):
        self.seen = dict.fromkeys(int(t) for t in prompt_ids)  # prompt + output, insertion-ordered
        self.counts: dict[int, int] = {}  # output token -> times generated

    def add(self, token: int) -> None:
        self.counts[token] = self.counts.get(token, 0) + 1
        self.seen.setdefault(token)

    def apply(self, x: np.ndarray, params: SamplingParams) -> None:
        """Penalize (V,) logits `x` in place, in vLLM's order and formula: repetition (divide a
        positive logit, multiply a negative one) over prompt and output, then frequency x count
        and presence over the output."""
        r = params.repetition_penalty
        if r != 1.0 and self.seen:
            ids = np.fromiter(self.seen, np.int64, len(self.seen))
            v = x[ids]
            x[ids] = np.where(v > 0, v / r, v * r)
        if self.counts and (params.frequency_penalty or params.presence_penalty):
            ids = np.fromiter(self.counts, np.int64, len(self.counts))
            counts = np.fromiter(self.counts.values(), np.float64, len(self.counts))
            x[ids] -= params.frequency_penalty * counts
            x[ids] -= params.presence_penalty


def sample_token(
    logits: np.ndarray,
    params: SamplingParams,
    rng: np.random.Generator | None,
    history: TokenHistory | None = None,
    banned=(),
) -> int:
    """One token from (V,) logits: penalties (`history`), banned tokens masked, then argmax
    when greedy, else temperature / top-k / top-p / min-p."""
    penalize = history is not None and params.penalized
    if params.greedy and not penalize and not banned:
        return int(np.argmax(logits))
    x = logits.astype(np.float64)  # (V,) a copy: the model's buffer is shared by the batch
    if penalize:
        history.apply(x, params)
    if banned:
        x[np.fromiter(banned, np.int64, len(banned))] = -np.inf
    if params.greedy:
        return int(np.argmax(x))
    x /= params.temperature
    if params.top_k and params.top_k < x.size:
        kth = np.partition(x, -params.top_k)[-params.top_k]
        x = np.where(x < kth, -np.inf, x)
    x -= x.max()
    probs = np.exp(x)
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cum, params.top_p) + 1)]
        masked = np.zeros_like(probs)
        masked[keep] = probs[keep]
        probs = masked / masked.sum()
    if params.min_p > 0.0:
        probs = np.where(probs < params.min_p * probs.max(), 0.0, probs)
        probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))


class Detokenizer:
    """Incremental decoding that only ever emits complete UTF-8 text, in O(1) per token.

    Each token decodes a short window of ids (from `prefix` to the end) and emits what the
    window adds past the text already read: byte-level BPE splits multi-byte characters
    across tokens, and a window ending in an incomplete one (U+FFFD) waits for more ids.
    Text that could be the start of a stop string is held back; the output ends before a
    stop string. Stop strings are looked for from the `min_tokens`-th token on (vLLM's
    `min_tokens`: text before it is released as it comes, and cannot end the output).
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] | list[str] = (), min_tokens: int = 0):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.min_tokens = min_tokens
        self.ids: list[int] = []
        self.prefix = 0  # window start: ids before it are fully emitted
        self.read = 0  # ids[prefix:read] decode to text already released or held
        self.held = ""  # released by the tokenizer, withheld as a possible stop-string start
        self.stopped = False

    def push(self, token: int) -> str:
        self.ids.append(token)
        return self._advance(final=False)

    def flush(self) -> str:
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self.stopped:
            return ""
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        text = decode(self.ids[self.prefix :], skip_special_tokens=True)
        delta = ""
        if len(text) > len(before) and (final or not text.endswith("\ufffd")):
            delta = text[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)
        return self._release(self.held + delta, final)

    def _release(self, text: str, final: bool) -> str:
        if len(self.ids) < self.min_tokens:
            self.held = ""
            return text
        cuts = [at for at in (text.find(s) for s in self.stop) if at != -1]
        if cuts:
            self.stopped, self.held = True, ""
            return text[: min(cuts)]
        keep = 0
        if not final:  # the longest tail that may still grow into a stop string
            for s in self.stop:
                for k in range(min(len(s) - 1, len(text)), keep, -1):
                    if text.endswith(s[:k]):
                        keep = k
                        break
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]
