"""GPT-2 generation with the KV cache and in-flight batching, for the Triton Python model.

Only numpy, onnxruntime and tokenizers: this file is copied into the model repository next
to `model.py` and runs in NVIDIA's Triton container as well as in the embedded server.

Batching: all active sequences share one cache per layer, `(2, B, nh, L, hs)`, each row
left-padded and masked through the raw attention mask, so every decode step is one ONNX
Runtime call for the whole batch. A sequence joins after its own prefill and leaves when
it finishes; columns that are padding for every remaining row are trimmed.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

SAMPLING_KEYS = ("max_tokens", "temperature", "top_k", "top_p", "seed", "stop", "ignore_eos")
DEFAULT_MAX_TOKENS = 64
_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class RequestError(ValueError):
    """A request field is out of range; the message names the field."""


@dataclass
class SamplingParams:
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0  # 0 = greedy, as in vLLM and TensorRT-LLM
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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
    if not isinstance(data, dict):
        raise RequestError("sampling_parameters: must be a JSON object")
    unknown = sorted(set(data) - set(SAMPLING_KEYS))
    if unknown:
        raise RequestError(
            f"sampling_parameters: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(SAMPLING_KEYS)}"
        )
    p = SamplingParams()
    if "max_tokens" in data:
        v = data["max_tokens"]
        if not _is_int(v) or not 1 <= v <= max_tokens_limit:
            raise RequestError(f"max_tokens must be an integer in 1..{max_tokens_limit}, got {v!r}")
        p.max_tokens = v
    if "temperature" in data:
        v = data["temperature"]
        if (
            not isinstance(v, (int, float))
            or isinstance(v, bool)
            or not math.isfinite(v)
            or not 0 <= v <= 100
        ):
            raise RequestError(f"temperature must be a number in [0, 100] (0 = greedy), got {v!r}")
        p.temperature = float(v)
    if "top_k" in data:
        v = data["top_k"]
        if not _is_int(v) or v < 0:
            raise RequestError(f"top_k must be an integer >= 0 (0 = off), got {v!r}")
        p.top_k = v
    if "top_p" in data:
        v = data["top_p"]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 1:
            raise RequestError(f"top_p must be a number in (0, 1], got {v!r}")
        p.top_p = float(v)
    if "seed" in data and data["seed"] is not None:
        v = data["seed"]
        if not _is_int(v) or not 0 <= v < 2**63:
            raise RequestError(f"seed must be an integer in 0..2^63-1, got {v!r}")
        p.seed = v
    if "stop" in data and data["stop"] is not None:
        v = data["stop"]
        v = [v] if isinstance(v, str) else v
        if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v) or len(v) > 16:
            raise RequestError("stop must be a non-empty string or a list of up to 16 non-empty strings")
        p.stop = v
    if "ignore_eos" in data:
        v = data["ignore_eos"]
        if not isinstance(v, bool):
            raise RequestError(f"ignore_eos must be true or false, got {v!r}")
        p.ignore_eos = v
    return p


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
    """Incremental decoding that only ever emits complete UTF-8 text.

    Byte-level BPE splits multi-byte characters across tokens; while the decoded tail is
    an incomplete sequence (U+FFFD) it is held back. Text that could be the start of a stop
    string is held back too, and the output ends before a stop string.
    """

    def __init__(self, tokenizer, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""
        self.stop = stop or []
        self.stopped = False

    def push(self, token: int) -> str:
        self.ids.append(token)
        return self._advance(final=False)

    def flush(self) -> str:
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self.stopped:
            return ""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):
            return ""
        for s in self.stop:
            at = text.find(s, max(0, len(self.emitted) - len(s) + 1))
            if at != -1:
                self.stopped = True
                text = text[:at]
        end = len(text)
        if not final and not self.stopped:
            for s in self.stop:  # hold back a tail that may grow into a stop string
                for k in range(min(len(s) - 1, len(text)), 0, -1):
                    if text.endswith(s[:k]):
                        end = min(end, len(text) - k)
                        break
        if end <= len(self.emitted):
            return ""
        delta = text[len(self.emitted) : end]
        self.emitted = text[:end]
        return delta


@dataclass
class Sequence:
    """One request being generated. `length` counts its real (unpadded) positions."""

    request_id: object
    prompt_ids: list[int]
    params: SamplingParams
    detok: Detokenizer
    rng: np.random.Generator | None
    generated: int = 0
    length: int = 0
    next_token: int = -1
    finished: bool = False
    finish_reason: str = ""


class Gpt2Engine:
    """Loads `model.onnx`, `tokenizer.json` and `model_info.json` from `model_dir`."""

    def __init__(self, model_dir: str, intra_op_threads: int = 0, providers: list[str] | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        with open(os.path.join(model_dir, "model_info.json")) as f:
            self.info = json.load(f)
        self.tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        available = ort.get_available_providers()
        providers = providers or [
            p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available
        ]
        self.session = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), opts, providers=providers)
        self.n_layer = int(self.info["n_layer"])
        self.n_head = int(self.info["n_head"])
        self.head_size = int(self.info["head_size"])
        self.n_positions = int(self.info["n_positions"])
        self.eos_token_id = self.info.get("eos_token_id")
        past = {i.name: i.type for i in self.session.get_inputs() if i.name.startswith("past_")}
        self.past_dtype = _NP_TYPES[past["past_0"]]
        outputs = [o.name for o in self.session.get_outputs()]
        # Ask only for the last position's logits when the graph has them: ONNX Runtime then
        # skips the vocabulary projection of the other prompt positions.
        self._logits_name = "last_logits" if "last_logits" in outputs else "logits"
        self.output_names = [self._logits_name] + [n for n in outputs if n.startswith("present_")]
        # Batch state: (2, B, nh, L, hs) per layer, mask (B, L), rows in `self.active` order.
        self.active: list[Sequence] = []
        self.cache: list[np.ndarray] = []
        self.mask = np.zeros((0, 0), np.int32)

    # -- requests -----------------------------------------------------------------------
    def encode_prompt(
        self, prompt: str, params: SamplingParams, max_prompt_tokens: int | None = None
    ) -> list[int]:
        if not prompt:
            raise RequestError("text_input must be a non-empty string")
        ids = self.tokenizer.encode(prompt).ids
        limit = min(max_prompt_tokens or self.n_positions - 1, self.n_positions - 1)
        if not ids:
            raise RequestError("text_input encodes to no tokens")
        if len(ids) > limit:
            raise RequestError(
                f"text_input has {len(ids)} tokens; the limit is {limit} (context window {self.n_positions})"
            )
        if len(ids) + params.max_tokens > self.n_positions:
            raise RequestError(
                f"max_tokens {params.max_tokens} + {len(ids)} prompt tokens exceed the context window of "
                f"{self.n_positions}; max_tokens must be <= {self.n_positions - len(ids)} for this prompt"
            )
        return ids

    def new_sequence(self, request_id, prompt_ids: list[int], params: SamplingParams) -> Sequence:
        rng = None if params.greedy else np.random.Generator(np.random.PCG64(params.seed))
        return Sequence(request_id, prompt_ids, params, Detokenizer(self.tokenizer, params.stop), rng)

    # -- model calls --------------------------------------------------------------------
    def _run(self, ids: np.ndarray, pos: np.ndarray, mask: np.ndarray, past: list[np.ndarray]):
        feeds = {"input_ids": ids, "position_ids": pos, "attention_mask": mask}
        for i, p in enumerate(past):
            feeds[f"past_{i}"] = p
        logits, *presents = self.session.run(self.output_names, feeds)
        if logits.ndim == 3:  # (B, T, V) -> last position (B, V)
            logits = logits[:, -1]
        return logits, presents

    def prefill(self, seqs: list[Sequence]) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """Run several prompts in one call, left-padded to the longest.

        Returns last-position logits (k, V), their cache (2, k, nh, T, hs) per layer and the
        mask (k, T) with zeros on the padding. Padding is masked out of attention, so each
        row computes what its prompt computes alone.
        """
        width = max(len(s.prompt_ids) for s in seqs)
        ids = np.zeros((len(seqs), width), np.int64)
        pos = np.zeros((len(seqs), width), np.int64)
        mask = np.zeros((len(seqs), width), np.int32)
        for row, seq in enumerate(seqs):
            n = len(seq.prompt_ids)
            ids[row, width - n :] = seq.prompt_ids
            pos[row, width - n :] = np.arange(n)
            mask[row, width - n :] = 1
            seq.length = n
        empty = np.zeros((2, len(seqs), self.n_head, 0, self.head_size), self.past_dtype)
        logits, presents = self._run(ids, pos, mask, [empty] * self.n_layer)
        return logits, presents, mask

    def add(self, seq: Sequence) -> int:
        """Prefill `seq`, pick its first token and let it join the batch. Returns the token."""
        return self.add_many([seq])[0]

    def add_many(self, seqs: list[Sequence]) -> list[int]:
        """Prefill requests that arrived together in one call, pick each one's first token
        and let the unfinished ones join the batch at the next step."""
        logits, presents, mask = self.prefill(seqs)
        tokens = [self._choose(seq, logits[row]) for row, seq in enumerate(seqs)]
        keep = [row for row, seq in enumerate(seqs) if not seq.finished]
        if not keep:
            return tokens
        if len(keep) < len(seqs):
            idx = np.asarray(keep)
            presents, mask = [p[:, idx] for p in presents], mask[idx]
        width = max(self.mask.shape[1], mask.shape[1])
        if self.active:
            self.cache = [
                np.concatenate([_left_pad(c, width), _left_pad(p, width)], axis=1)
                for c, p in zip(self.cache, presents, strict=True)
            ]
            self.mask = np.concatenate([_left_pad_mask(self.mask, width), _left_pad_mask(mask, width)])
        else:
            self.cache, self.mask = presents, mask
        self.active.extend(seqs[row] for row in keep)
        return tokens

    def step(self) -> list[tuple[Sequence, int]]:
        """One decode step for every active sequence; returns (sequence, new token) pairs."""
        if not self.active:
            return []
        ids = np.asarray([[s.next_token] for s in self.active], np.int64)
        pos = np.asarray([[s.length] for s in self.active], np.int64)
        mask = np.concatenate([self.mask, np.ones((len(self.active), 1), np.int32)], axis=1)
        logits, self.cache = self._run(ids, pos, mask, self.cache)
        self.mask = mask
        out = []
        for row, seq in enumerate(self.active):
            seq.length += 1
            out.append((seq, self._choose(seq, logits[row])))
        return out

    def _choose(self, seq: Sequence, logits: np.ndarray) -> int:
        token = sample_token(logits, seq.params, seq.rng)
        seq.generated += 1
        seq.next_token = token
        if token == self.eos_token_id and not seq.params.ignore_eos:
            seq.finished, seq.finish_reason = True, "stop"
        elif seq.generated >= seq.params.max_tokens:
            seq.finished, seq.finish_reason = True, "length"
        return token

    def text_delta(self, seq: Sequence, token: int) -> str:
        """The new text after `token` (EOS adds none); stop strings end the sequence."""
        if token == self.eos_token_id and not seq.params.ignore_eos:
            delta = seq.detok.flush()
        else:
            delta = seq.detok.push(token)
            if seq.finished:
                delta += seq.detok.flush()
        if seq.detok.stopped and not seq.finished:
            seq.finished, seq.finish_reason = True, "stop"
        return delta

    def remove(self, seqs: list[Sequence]) -> None:
        """Drop finished or cancelled sequences from the batch and trim shared padding."""
        if not seqs:
            return
        gone = {id(s) for s in seqs}
        keep = [i for i, s in enumerate(self.active) if id(s) not in gone]
        if len(keep) == len(self.active):
            return
        self.active = [self.active[i] for i in keep]
        if not keep:
            self.cache, self.mask = [], np.zeros((0, 0), np.int32)
            return
        idx = np.asarray(keep)
        mask = self.mask[idx]
        start = int(np.argmax(mask.any(axis=0)))  # leading columns that are padding for all rows
        self.mask = np.ascontiguousarray(mask[:, start:])
        self.cache = [np.ascontiguousarray(c[:, idx, :, start:, :]) for c in self.cache]

    # -- single-request convenience (tests, offline use) ----------------------------------
    def generate(self, prompt: str, params: SamplingParams):
        """Yield the text deltas of one request, decoded alone."""
        seq = self.new_sequence(None, self.encode_prompt(prompt, params), params)
        token = self.add(seq)
        yield from _nonempty(self.text_delta(seq, token))
        while not seq.finished:
            ((_, token),) = self.step()
            yield from _nonempty(self.text_delta(seq, token))
        self.remove([seq])

    def generate_ids(self, prompt_ids: list[int], params: SamplingParams) -> list[int]:
        seq = self.new_sequence(None, list(prompt_ids), params)
        out = [self.add(seq)]
        while not seq.finished:
            ((_, token),) = self.step()
            out.append(token)
        self.remove([seq])
        return out


def _nonempty(text: str):
    if text:
        yield text


def _left_pad(cache: np.ndarray, width: int) -> np.ndarray:
    """(2, B, nh, L, hs) -> (2, B, nh, width, hs) with zeros before."""
    pad = width - cache.shape[3]
    if pad == 0:
        return cache
    return np.pad(cache, ((0, 0), (0, 0), (0, 0), (pad, 0), (0, 0)))


def _left_pad_mask(mask: np.ndarray, width: int) -> np.ndarray:
    pad = width - mask.shape[1]
    return mask if pad == 0 else np.pad(mask, ((0, 0), (pad, 0)))
