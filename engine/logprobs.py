"""Log-probabilities of tokens, from the served variant's own logits.

An entry is `[token, logprob, [[alternative, logprob], ...]]`: the token's log-probability
under the model's raw distribution (before temperature, penalties or truncation, as vLLM's
default `raw_logprobs`), with the `top` most likely tokens of that position, most likely
first. Computed only for the requests that ask (`SamplingParams.logprobs` and
`prompt_logprobs`); the others never copy their logits out of the runner.
"""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log-softmax of one position's logits, in float64."""
    x = np.asarray(logits, np.float64)
    shifted = x - x.max()
    return shifted - np.log(np.exp(shifted).sum())


def entry(logits: np.ndarray, token: int, top: int) -> list:
    """The entry of `token` at a position with these `logits`."""
    lp = log_softmax(logits)
    alternatives = []
    if top:
        best = np.argpartition(-lp, top - 1)[:top]
        best = best[np.argsort(-lp[best], kind="stable")]
        alternatives = [[int(t), float(lp[t])] for t in best]
    return [int(token), float(lp[token]), alternatives]


def prompt_entries(logits: np.ndarray, ids, first: int, prompt_len: int, top: int) -> list:
    """Entries of the prompt tokens that positions `first..first+len(logits)-1` predict:
    position p's logits give token p+1's log-probability (the last prompt position predicts
    the first generated token, which is not a prompt token)."""
    out = []
    for j, row in enumerate(logits):
        nxt = first + j + 1
        if nxt >= prompt_len:
            break
        out.append(entry(row, ids[nxt], top))
    return out
