"""A request's per-token path after a runner call: choose the token (the graph's arg-max when
that is the answer, else the sampler), record its timing, detokenize, and decide whether the
request ends here."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engine import logprobs
from engine.metrics import EngineStats
from engine.sampler import sample_token
from engine.types import FinishReason, Request


class OutputProcessor:
    def __init__(self, tokenizer, stats: EngineStats, clock: Callable[[], float], max_len: int):
        self.tokenizer, self.stats, self.clock, self.max_len = tokenizer, stats, clock, max_len

    def bad_word_ids(self, words: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
        """Each bad word's token ids, spelt with and without a leading space (as vLLM bans
        them at the start of the text and after a word)."""
        seqs = {}
        for word in words:
            for text in (word.lstrip(), " " + word.lstrip()):
                ids = tuple(self.tokenizer.encode(text).ids)
                if ids:
                    seqs[ids] = None
        return tuple(seqs)

    @staticmethod
    def banned(req: Request) -> list[int]:
        """Tokens `req` may not produce next: its end tokens before `min_tokens` (vLLM's
        min_tokens, transformers' MinNewTokensLength), and the last token of a bad word whose
        other tokens the output ends with."""
        p = req.params
        banned = []
        if req.generated < p.min_tokens:
            if not p.ignore_eos and req.eos is not None:
                banned.append(req.eos)
            banned.extend(p.stop_token_ids)
        for seq in req.bad_ids:
            k = len(seq) - 1
            if k == 0 or (len(req.tokens) >= k and tuple(req.tokens[-k:]) == seq[:-1]):
                banned.append(seq[-1])
        return banned

    def next_token(self, req: Request, greedy_token: int, logits: Callable[[], np.ndarray]) -> int:
        """The graph's arg-max when it is the answer (greedy, no penalty, not banned); else
        the sampler over the row's logits."""
        banned = self.banned(req) if req.bad_ids or req.generated < req.params.min_tokens else ()
        if req.grammar is not None:  # the tokens the grammar forbids are out before choosing
            row = np.array(logits(), np.float32, copy=True)
            allowed = req.grammar.allowed()
            row[: len(allowed)][~allowed] = -np.inf
            row[len(allowed) :] = -np.inf
            return sample_token(row, req.params, req.rng, req.history, banned)
        if req.params.greedy and req.history is None and greedy_token not in banned:
            return greedy_token
        return sample_token(logits(), req.params, req.rng, req.history, banned)

    def advance(
        self, req: Request, greedy_token: int, logits: Callable[[], np.ndarray]
    ) -> tuple[str, FinishReason | None]:
        """Take the next token: the text it releases, and the reason `req` ends (None: on)."""
        if req.params.logprobs is not None:  # the raw distribution, before the sampler's changes
            row = np.array(logits(), copy=True)
            token = self.next_token(req, greedy_token, lambda: row.copy())
            req.logprobs.append(logprobs.entry(row, token, req.params.logprobs))
        else:
            token = self.next_token(req, greedy_token, logits)
        complete = req.grammar is not None and req.grammar.take(token)
        now = self.clock()
        if req.first_token_at is None:
            req.first_token_at = now
            self.stats.ttft.append(now - req.arrived)
        else:
            self.stats.itl.append(now - req.last_token_at)
        req.last_token_at = now
        self.stats.generation_tokens += 1
        req.generated += 1
        req.next_token = token
        req.tokens.append(token)
        if req.history is not None:
            req.history.add(token)
        if token == req.eos and not req.params.ignore_eos:
            return req.detok.flush(), FinishReason.EOS
        text = req.detok.push(token)
        if req.detok.stopped:
            return text, FinishReason.STOP
        if token in req.params.stop_token_ids or complete:  # complete: the grammar admits no more
            return text + req.detok.flush(), FinishReason.STOP
        # the next token would be written at `filled`: none fits past the slot's end
        if req.generated >= req.params.max_tokens or req.filled >= self.max_len:
            text += req.detok.flush()
            return text, FinishReason.STOP if req.detok.stopped else FinishReason.LENGTH
        return text, None
