"""Fidelity and speed figures of GPT-2 ONNX variants: perplexity, top-1 and greedy agreement.

Only ONNX Runtime and numpy: every variant is measured the same way, fp32 included, so the
gates compare like with like.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.ortutil import median_ms

_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def empty_past(session: ort.InferenceSession, batch: int) -> dict[str, np.ndarray]:
    """Zero-length past tensors `[2, B, nh, 0, hs]` in the dtype the model declares."""
    feeds = {}
    for inp in session.get_inputs():
        if inp.name.startswith("past_"):
            _, _, nh, _, hs = inp.shape
            feeds[inp.name] = np.zeros((2, batch, nh, 0, hs), dtype=_NP[inp.type])
    return feeds


def forward(session: ort.InferenceSession, ids: np.ndarray, past: dict | None = None, past_len: int = 0):
    """One call: `ids` (B, T) after `past_len` cached positions; returns (logits, presents)."""
    b, t = ids.shape
    feeds = {
        "input_ids": ids.astype(np.int64),
        "position_ids": np.broadcast_to(np.arange(past_len, past_len + t, dtype=np.int64), (b, t)).copy(),
        "attention_mask": np.ones((b, past_len + t), dtype=np.int32),
        **(past if past is not None else empty_past(session, b)),
    }
    outs = session.run(None, feeds)
    names = [o.name for o in session.get_outputs()]
    logits = outs[names.index("logits")]
    presents = {
        n.replace("present_", "past_"): v
        for n, v in zip(names, outs, strict=True)
        if n.startswith("present_")
    }
    return logits, presents


def token_windows(ids: list[int], window: int, max_windows: int) -> np.ndarray:
    """Non-overlapping windows of the held-out token stream, (W, window)."""
    n = min(len(ids) // window, max_windows)
    return np.asarray(ids[: n * window], dtype=np.int64).reshape(n, window)


def log_probs(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def window_logits(session: ort.InferenceSession, windows: np.ndarray) -> list[np.ndarray]:
    return [forward(session, w[None, :])[0][0] for w in windows]


def perplexity(all_logits: list[np.ndarray], windows: np.ndarray) -> float:
    nll, count = 0.0, 0
    for logits, w in zip(all_logits, windows, strict=True):
        lp = log_probs(logits[:-1])
        nll -= float(lp[np.arange(len(w) - 1), w[1:]].sum())
        count += len(w) - 1
    return math.exp(nll / count)


def greedy(session: ort.InferenceSession, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy tokens after `prompt` (EOS not special-cased: a fixed count for comparison)."""
    logits, past = forward(session, np.asarray([prompt]))
    out = [int(logits[0, -1].argmax())]
    for i in range(new_tokens - 1):
        logits, past = forward(session, np.asarray([[out[-1]]]), past, len(prompt) + i)
        out.append(int(logits[0, -1].argmax()))
    return out


def step_latency_ms(path: Path, past_len: int = 16, threads: int = 2) -> float:
    """Median time of one decode step at batch 1 after `past_len` cached tokens."""
    from export.ortutil import make_session

    session = make_session(path, threads=threads)
    ids = np.arange(past_len, dtype=np.int64)[None, :] % 100
    _, past = forward(session, ids)
    one = np.asarray([[1]])
    return round(median_ms(lambda: forward(session, one, past, past_len), repeat=15), 3)
