"""The token sampler: vLLM's penalties over what a request has seen, banned tokens masked,
then arg-max (greedy) or temperature / top-k / top-p / min-p over one row of logits."""

from __future__ import annotations

import numpy as np

from engine.request_schema import SamplingParams


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
