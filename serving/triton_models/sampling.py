"""Sampling parameters, the token sampler and incremental detokenizing for text generation.

One validated `SamplingParams` object for the client and the server: the client checks what
it sends with `SamplingParams.from_dict(..., max_tokens_limit=None)`, the server checks what
it receives with its configured limit. Only the standard library and numpy: this file is
copied into the model repository beside `model.py`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

SAMPLING_KEYS = ("max_tokens", "temperature", "top_k", "top_p", "seed", "stop", "ignore_eos")
DEFAULT_MAX_TOKENS = 64
MAX_STOP_STRINGS = 16


class RequestError(ValueError):
    """A request field is out of range; the message names the field and the allowed range."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0  # 0 = greedy, as in vLLM and TensorRT-LLM
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @classmethod
    def from_dict(cls, data: dict, max_tokens_limit: int | None) -> SamplingParams:
        """Check every field; RequestError names the first bad one and its allowed range.
        `max_tokens_limit` None: only the server knows its limit, the client checks >= 1."""
        if not isinstance(data, dict):
            raise RequestError("sampling_parameters: must be a JSON object")
        unknown = sorted(set(data) - set(SAMPLING_KEYS))
        if unknown:
            raise RequestError(
                f"sampling_parameters: unknown field(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(SAMPLING_KEYS)}"
            )
        kw = {}
        if "max_tokens" in data:
            v = data["max_tokens"]
            top = max_tokens_limit if max_tokens_limit is not None else math.inf
            if not _is_int(v) or not 1 <= v <= top:
                allowed = f"1..{max_tokens_limit}" if max_tokens_limit is not None else ">= 1"
                raise RequestError(f"max_tokens must be an integer in {allowed}, got {v!r}")
            kw["max_tokens"] = v
        if "temperature" in data:
            v = data["temperature"]
            if not _is_number(v) or not 0 <= v <= 100:
                raise RequestError(f"temperature must be a number in [0, 100] (0 = greedy), got {v!r}")
            kw["temperature"] = float(v)
        if "top_k" in data:
            v = data["top_k"]
            if not _is_int(v) or v < 0:
                raise RequestError(f"top_k must be an integer >= 0 (0 = off), got {v!r}")
            kw["top_k"] = v
        if "top_p" in data:
            v = data["top_p"]
            if not _is_number(v) or not 0 < v <= 1:
                raise RequestError(f"top_p must be a number in (0, 1], got {v!r}")
            kw["top_p"] = float(v)
        if data.get("seed") is not None:
            v = data["seed"]
            if not _is_int(v) or not 0 <= v < 2**63:
                raise RequestError(f"seed must be an integer in 0..2^63-1, got {v!r}")
            kw["seed"] = v
        if data.get("stop") is not None:
            v = data["stop"]
            v = [v] if isinstance(v, str) else v
            if (
                not isinstance(v, (list, tuple))
                or not all(isinstance(s, str) and s for s in v)
                or len(v) > MAX_STOP_STRINGS
            ):
                raise RequestError(
                    f"stop must be a non-empty string or a list of up to {MAX_STOP_STRINGS} non-empty strings"
                )
            kw["stop"] = tuple(v)
        if "ignore_eos" in data:
            v = data["ignore_eos"]
            if not isinstance(v, bool):
                raise RequestError(f"ignore_eos must be true or false, got {v!r}")
            kw["ignore_eos"] = v
        return cls(**kw)

    def to_dict(self) -> dict:
        """The JSON fields that differ from the defaults (what goes over the wire)."""
        default = SamplingParams()
        out = {}
        for k, v in asdict(self).items():
            if v != getattr(default, k) or k == "max_tokens":
                out[k] = list(v) if isinstance(v, tuple) else v
        return out


def parse_sampling_parameters(text: str | bytes | dict | None, max_tokens_limit: int) -> SamplingParams:
    """Parse and check the `sampling_parameters` JSON; RequestError names the bad field."""
    if text is None or text in ("", b""):
        data = {}
    elif isinstance(text, dict):
        data = text
    else:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(f"sampling_parameters: not valid JSON ({exc})") from None
    return SamplingParams.from_dict(data, max_tokens_limit)


def sample_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator | None) -> int:
    """One token from (V,) logits: argmax when greedy, else temperature / top-k / top-p."""
    if params.greedy:
        return int(np.argmax(logits))
    x = logits.astype(np.float64) / params.temperature
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
    return int(rng.choice(probs.size, p=probs))


class Detokenizer:
    """Incremental decoding that only ever emits complete UTF-8 text, in O(1) per token.

    Each token decodes a short window of ids (from `prefix` to the end) and emits what the
    window adds past the text already read: byte-level BPE splits multi-byte characters
    across tokens, and a window ending in an incomplete one (U+FFFD) waits for more ids.
    Text that could be the start of a stop string is held back; the output ends before a
    stop string.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] | list[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
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
