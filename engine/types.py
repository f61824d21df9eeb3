"""The engine's request and its states, and the sink that receives its results."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np

from engine.detokenizer import Detokenizer
from engine.request_schema import RequestError, SamplingParams
from engine.sampler import TokenHistory


class FinishReason(str, enum.Enum):
    LENGTH = "length"  # max_tokens reached
    STOP = "stop"  # a stop string appeared
    EOS = "eos"  # the model ended the text
    CANCELLED = "cancelled"  # the client went away
    TIMEOUT = "timeout"  # ran past max_request_seconds
    ERROR = "error"  # failed inside the server


class Status(enum.Enum):
    WAITING = "waiting"  # queued for a free slot
    PREFILLING = "prefilling"  # holds a slot; prompt chunks being written
    DECODING = "decoding"  # one token per step
    FINISHED = "finished"


class QueueFullError(RequestError):
    """Every slot is busy and the waiting queue is full."""


@dataclass(eq=False)
class Request:
    """One generation. `filled` counts the positions of its slot holding valid keys/values;
    `next_token` is the token the next decode step feeds (the last one generated)."""

    prompt_ids: list[int]
    params: SamplingParams
    deadline: float = math.inf
    context: object = None  # the adapter's own data (response sender, stream flag, ...)
    status: Status = Status.WAITING
    finish_reason: FinishReason | None = None
    error: str | None = None
    slot: int = -1
    filled: int = 0
    generated: int = 0
    next_token: int = -1
    detok: Detokenizer | None = None
    rng: np.random.Generator | None = None
    arrived: float = 0.0
    first_token_at: float | None = None
    last_token_at: float = 0.0
    tokens: list[int] = field(default_factory=list)
    eos: int | None = None  # the token that ends it: the model's EOS, or the request's end_id
    history: TokenHistory | None = None  # only with penalties
    bad_ids: tuple[tuple[int, ...], ...] = ()  # banned token sequences (bad_words)
    blocks: list[int] = field(default_factory=list)  # its cache blocks, in order (a block runner)
    # After a preemption: the ids to write again (prompt and output but the last token, which
    # the next decode step feeds); None: the prompt is what a prefill writes.
    recompute: list[int] | None = None
    block_hashes: list[int] = field(default_factory=list)  # its prefill's full blocks (prefix caching)
    registered: int = 0  # its leading blocks found in or added to the prefix cache
    # `engine.logprobs` entries of its generated tokens, and of its prompt's (the first prompt
    # token has none: None), where its params ask for them
    logprobs: list | None = None
    prompt_logprobs: list | None = None
    grammar: object = None  # an `engine.structured.Matcher` where its params ask for structured output

    @property
    def wants_prompt_logprobs(self) -> bool:
        """Its prefill must return every position's logits (not after a preemption: they
        were taken the first time)."""
        return self.params.prompt_logprobs is not None and self.recompute is None

    @property
    def prefill_ids(self) -> list[int]:
        """What this request's prefill writes: its prompt, or all it had after a preemption."""
        return self.prompt_ids if self.recompute is None else self.recompute

    @property
    def prompt_left(self) -> int:
        """Prefill tokens not yet in the cache."""
        return len(self.prefill_ids) - self.filled


class Sink:
    """Where the engine delivers results; the Triton adapter sends responses, tests record."""

    def on_text(self, request: Request, text: str) -> None:  # a non-empty piece of output text
        pass

    def on_finish(self, request: Request) -> None:  # finish_reason (and error) are set
        pass
