"""Timed loops: the served models through the gRPC client, and the baselines in-process.

Every function warms up before timing and returns raw samples; `summary` turns them into
medians and percentiles (never a single run).
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable

import numpy as np


def percentiles(samples_ms: list[float]) -> dict:
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "n": 0}
    return {
        "p50": round(float(np.percentile(a, 50)), 3),
        "p90": round(float(np.percentile(a, 90)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "mean": round(float(a.mean()), 3),
        "n": int(a.size),
    }


# -- GPT-2 ---------------------------------------------------------------------------------


def served_stream(client, prompt: str, new_tokens: int) -> dict:
    """One streamed greedy request: time to first text, gaps between deltas, total."""
    t0 = time.perf_counter()
    stamps = []
    for _ in client.generate_text(prompt, max_tokens=new_tokens, ignore_eos=True, stream=True):
        stamps.append(time.perf_counter())
    gaps = [(b - a) * 1e3 for a, b in zip(stamps, stamps[1:], strict=False)]
    total = stamps[-1] - t0
    return {"ttft_ms": (stamps[0] - t0) * 1e3, "gaps_ms": gaps, "total_s": total, "tokens": new_tokens}


def served_concurrency(
    url: str, prompt: str, new_tokens: int, concurrency: int, requests_per_stream: int
) -> dict:
    """`concurrency` streams at once, each sending requests back to back."""
    runs: list[dict] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    from serving.client import AigcClient

    def worker():
        try:
            with AigcClient(
                url, timeout_s=120
            ) as client:  # one connection per stream, as a real client keeps
                served_stream(client, prompt, new_tokens)  # warm-up of this connection
                start.wait()
                for _ in range(requests_per_stream):
                    r = served_stream(client, prompt, new_tokens)
                    with lock:
                        runs.append(r)
        except BaseException as exc:  # noqa: BLE001 - reported after the join
            errors.append(exc)
            start.abort()

    start = threading.Barrier(concurrency + 1)
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    tokens = sum(r["tokens"] for r in runs)
    per_stream = [r["tokens"] / r["total_s"] for r in runs]
    return {
        "concurrency": concurrency,
        "requests": len(runs),
        "ttft_ms": percentiles([r["ttft_ms"] for r in runs]),
        "itl_ms": percentiles([g for r in runs for g in r["gaps_ms"]]),
        "aggregate_tokens_per_s": round(tokens / wall, 2),
        "per_stream_tokens_per_s": round(statistics.median(per_stream), 2),
    }


def generate_baseline(generate: Callable[[int], object], new_tokens: int, repeats: int) -> dict:
    """A `generate(n)` baseline: TTFT as a 1-token generate, tok/s over `new_tokens`."""
    generate(new_tokens)  # warm-up
    generate(1)
    ttft = [_timed(lambda: generate(1)) for _ in range(repeats)]
    totals = [_timed(lambda: generate(new_tokens)) for _ in range(repeats)]
    med_total, med_ttft = statistics.median(totals), statistics.median(ttft)
    return {
        "ttft_ms": percentiles(ttft),
        "itl_ms": {"p50": round((med_total - med_ttft) / max(1, new_tokens - 1), 3)},
        "tokens_per_s": round(new_tokens / (med_total / 1e3), 2),
        "repeats": repeats,
    }


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def hf_generate_fn(model, input_ids, eos_token_id: int):
    """`transformers` eager greedy generate with a fixed number of new tokens."""
    import torch

    mask = torch.ones_like(input_ids)

    def run(n: int):
        with torch.no_grad():
            return model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=n,
                min_new_tokens=n,
                pad_token_id=eos_token_id,
            )

    return run


# -- images --------------------------------------------------------------------------------


def latency_samples(fn: Callable[[], object], repeats: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    return [_timed(fn) for _ in range(repeats)]


def served_image_throughput(
    url: str, model: str, latent: int, batch: int, concurrency: int, requests: int
) -> float:
    """Images per second with `concurrency` clients sending `batch`-image requests."""
    from serving.client import AigcClient

    def worker(n):
        with AigcClient(url) as client:
            z = np.random.default_rng(0).standard_normal((batch, latent)).astype(np.float32)
            for _ in range(n):
                client.decode(z, model=model)

    worker(2)  # warm-up
    per = max(1, requests // concurrency)
    threads = [threading.Thread(target=worker, args=(per,)) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return round(per * concurrency * batch / (time.perf_counter() - t0), 1)
