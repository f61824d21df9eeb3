"""Fidelity and speed figures of GPT-2 ONNX variants: perplexity, top-1 and greedy agreement.

Only ONNX Runtime and numpy: every variant is measured the same way, fp32 included, so the
gates compare like with like.
"""

from __future__ import annotations

import math
import statistics
import time
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


def decode_profiles(
    paths: dict[str, Path],
    n_positions: int,
    batches: dict[str, tuple[int, ...]] | None = None,
    past_len: int = 48,
    prompt_tokens: int = 16,
    threads: int = 2,
    rounds: int = 3,
) -> dict[str, dict]:
    """What generation costs with each file, measured the way the server calls it (only the
    last position's logits asked for): the decode step at each batch size after `past_len`
    cached tokens, and one prefill of `prompt_tokens`.

    The variants are measured in turns, `rounds` times, and each figure is the median of
    its rounds: on a shared machine a variant measured alone can land in a slow minute and
    swap places with another (int4 and int8 differ by ~1 ms a step here). `aigc build
    --streams N` ranks variants by the step at N concurrent sequences."""
    from export.ortutil import make_session

    past_len = max(1, min(past_len, n_positions - 1))
    prompt_tokens = max(1, min(prompt_tokens, n_positions))
    batches = batches or {}
    runs = {}  # name -> list of (key, callable)
    for name, path in paths.items():
        session = make_session(path, threads=threads)
        outputs = [o.name for o in session.get_outputs()]
        wanted = ["last_logits" if "last_logits" in outputs else "logits"] + [
            n for n in outputs if n.startswith("present_")
        ]
        calls = [
            (f"step {b}", _call(session, wanted, _profile_feeds(session, b, 1, past_len)))
            for b in batches.get(name, (1, 4, 8))
        ]
        calls.append(("prefill", _call(session, wanted, _profile_feeds(session, 1, prompt_tokens, 0))))
        runs[name] = calls
    samples: dict[str, dict[str, list[float]]] = {n: {} for n in runs}
    for _ in range(rounds):
        for name, calls in runs.items():
            time.sleep(0.2)  # the previous session's idle threads stop spinning
            for key, fn in calls:
                samples[name].setdefault(key, []).append(median_ms(fn, warmup=2, repeat=5))
    out = {}
    for name, by_key in samples.items():
        med = {k: round(statistics.median(v), 3) for k, v in by_key.items()}
        out[name] = {
            "past_len": past_len,
            "step_ms": {k.split()[1]: v for k, v in med.items() if k.startswith("step ")},
            "prefill_ms": {str(prompt_tokens): med["prefill"]},
        }
    return out


def _call(session: ort.InferenceSession, wanted: list[str], feeds: dict):
    return lambda: session.run(wanted, feeds)


def _profile_feeds(session: ort.InferenceSession, batch: int, t: int, past: int) -> dict:
    f = {
        "input_ids": (np.arange(batch * t, dtype=np.int64).reshape(batch, t) % 100) + 1,
        "position_ids": np.broadcast_to(np.arange(past, past + t, dtype=np.int64), (batch, t)).copy(),
        "attention_mask": np.ones((batch, past + t), dtype=np.int32),
    }
    for inp in session.get_inputs():
        if inp.name.startswith("past_"):
            _, _, nh, _, hs = inp.shape
            f[inp.name] = np.full((2, batch, nh, past, hs), 0.01, dtype=_NP[inp.type])
    return f
