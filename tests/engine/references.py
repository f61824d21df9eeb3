"""Helpers the engine's tests share: a recording sink and vLLM's penalty formula written
out over the whole vocabulary (the reference the sampler is compared with)."""

from __future__ import annotations

import numpy as np

from engine.types import Sink


class Recorder(Sink):
    def __init__(self):
        self.text, self.finished = {}, []

    def on_text(self, request, text):
        assert text, "the engine delivers only non-empty text"
        self.text.setdefault(id(request), []).append(text)

    def on_finish(self, request):
        self.finished.append(request)


def vllm_penalize(logits, prompt, output, presence, frequency, repetition):
    """vLLM's apply_penalties on (V,) logits, written over the whole vocabulary: repetition
    over prompt and output tokens, then frequency x count and presence over the output."""
    x = logits.astype(np.float64).copy()
    counts = np.bincount(np.asarray(output, np.int64), minlength=x.size)[: x.size]
    seen = (np.bincount(np.asarray(prompt, np.int64), minlength=x.size)[: x.size] > 0) | (counts > 0)
    x = np.where(seen, np.where(x > 0, x / repetition, x * repetition), x)
    x -= frequency * counts
    x -= presence * (counts > 0)
    return x
