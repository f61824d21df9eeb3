"""Timed loops: the served models through the gRPC client, and the baselines in-process.

Every function warms up before timing and keeps every sample; `percentiles` turns them into
medians and percentiles (never a single run).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

logger = logging.getLogger(__name__)


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


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _run_together(workers: list[Callable[[threading.Barrier], None]]) -> float:
    """Run each worker in its own thread; each prepares, waits on the barrier, then works.

    Returns the wall time in seconds from the common start to the last worker's end, so
    connection setup and warm-up stay outside the timed span. The first worker error is
    raised after every thread has ended.
    """
    errors: list[BaseException] = []
    start = threading.Barrier(len(workers) + 1)

    def wrap(work):
        try:
            work(start)
        except BaseException as exc:  # noqa: BLE001 - re-raised after the join
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=wrap, args=(w,), daemon=True) for w in workers]
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
    return wall


# -- GPT-2 ---------------------------------------------------------------------------------


def stream_timing(t0: float, stamps: list[float], t_end: float, tokens: int) -> dict:
    """One generation: time to first token, the gaps between tokens, total seconds; `t0` and
    `stamps` (perf_counter seconds) stay so that gaps can be placed against other events."""
    if not stamps:
        return {
            "ttft_ms": None,
            "gaps_ms": [],
            "total_s": t_end - t0,
            "tokens": tokens,
            "deltas": 0,
            "t0": t0,
            "stamps": [],
        }
    return {
        "ttft_ms": (stamps[0] - t0) * 1e3,
        "gaps_ms": [(b - a) * 1e3 for a, b in zip(stamps, stamps[1:], strict=False)],
        "total_s": t_end - t0,
        "tokens": tokens,
        "deltas": len(stamps),
        "t0": t0,
        "stamps": list(stamps),
    }


def served_stream(client, prompt: str, new_tokens: int) -> dict:
    """One streamed greedy request (EOS ignored, so exactly `new_tokens` are generated)."""
    t0 = time.perf_counter()
    stamps = []
    for _ in client.generate_text(prompt, max_tokens=new_tokens, ignore_eos=True, stream=True):
        stamps.append(time.perf_counter())
    return stream_timing(t0, stamps, time.perf_counter(), new_tokens)


class OpenAIStreamer:
    """Streamed completions through an OpenAI-compatible endpoint (`aigc serve --openai-port`)
    on one kept-alive HTTP connection, read as server-sent events: `generate_text` yields
    each chunk's text as `AigcClient.generate_text` yields deltas, so `served_stream` times
    both paths alike."""

    def __init__(self, base_url: str, model: str = "gpt2", timeout_s: float = 300.0):
        host, _, port = base_url.removeprefix("http://").rstrip("/").partition(":")
        self.model = model
        self.conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout_s)

    def generate_text(self, prompt: str, max_tokens: int, ignore_eos: bool = True, stream: bool = True):
        body = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": ignore_eos,
            "stream": True,
        }
        self.conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"/v1/completions answered {resp.status}: {resp.read()[:300]!r}")
        while True:
            line = resp.readline()
            if not line:
                raise RuntimeError("/v1/completions: the stream ended before data: [DONE]")
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                resp.read()  # the body's end: the connection is kept for the next request
                return
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"/v1/completions: {chunk['error'].get('message')}")
            text = chunk["choices"][0].get("text") if chunk.get("choices") else None
            if text:
                yield text

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> OpenAIStreamer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def request_itl_ms(run: dict) -> float | None:
    """A request's inter-token latency: its first token to its last over the tokens after
    the first (None before two responses)."""
    stamps = run["stamps"]
    if len(stamps) < 2 or run["tokens"] < 2:
        return None
    return (stamps[-1] - stamps[0]) * 1e3 / (run["tokens"] - 1)


def summarise_streams(runs: list[dict], wall_s: float | None = None) -> dict:
    """TTFT and inter-token percentiles over every run; tokens/s per stream (median) and in all."""
    tokens = sum(r["tokens"] for r in runs)
    per_stream = [r["tokens"] / r["total_s"] for r in runs]
    out = {
        "requests": len(runs),
        "ttft_ms": percentiles([r["ttft_ms"] for r in runs if r["ttft_ms"] is not None]),
        "itl_ms": percentiles([g for r in runs for g in r["gaps_ms"]]),
        # each request's own: from its first token to its last, over the tokens after the
        # first (genai-perf's and AIPerf's inter-token latency); unlike the gaps between
        # responses it holds where the client reads responses that queued up back to back
        "request_itl_ms": percentiles([x for x in map(request_itl_ms, runs) if x is not None]),
        "per_stream_tokens_per_s": round(statistics.median(per_stream), 2),
        # responses (deltas) the client got over the tokens generated: 1 is a response a token
        "responses_per_token": round(sum(r["deltas"] for r in runs) / tokens, 3) if tokens else None,
    }
    if wall_s is not None:
        out["aggregate_tokens_per_s"] = round(tokens / wall_s, 2)
    short = [r["deltas"] for r in runs if r["deltas"] != r["tokens"]]
    if short:
        # A delta can hold more than one token (bytes of one character held back): ITL is then
        # per delta, tokens/s stays exact.
        out["deltas_per_request"] = sorted(set(short))
    return out


def served_concurrency(
    url: str,
    prompt: str,
    new_tokens: int,
    concurrency: int,
    requests_per_stream: int,
    warmup_tokens: int | None = None,
    openai: bool = False,
) -> dict:
    """`concurrency` streams at once, each on its own connection sending requests back to back.

    Each connection first sends one untimed request of `warmup_tokens` new tokens (default
    `new_tokens`) with the same prompt. `openai`: `url` is an OpenAI-compatible endpoint's
    (`http://host:port`), called with streamed completions (`OpenAIStreamer`); else Triton's
    gRPC address, called with `AigcClient`."""
    from serving.client import AigcClient

    runs: list[dict] = []
    lock = threading.Lock()

    def connect():
        return OpenAIStreamer(url) if openai else AigcClient(url, timeout_s=300)

    def worker(start: threading.Barrier) -> None:
        with connect() as client:
            served_stream(client, prompt, warmup_tokens or new_tokens)  # warm-up of this connection
            start.wait()
            for _ in range(requests_per_stream):
                r = served_stream(client, prompt, new_tokens)
                with lock:
                    runs.append(r)

    wall = _run_together([worker] * concurrency)
    return {"concurrency": concurrency, **summarise_streams(runs, wall)}


def process_tree_rss_mib(pid: int) -> float | None:
    """Resident memory of `pid` and every process under it (Triton and its Python-backend
    stubs), read from /proc; None where /proc or the process is gone."""
    try:
        with open("/proc/self/status"):
            pass
    except OSError:
        return None
    todo, total = [pid], 0
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            if p == pid:
                return None
    return round(total / 1024, 1)


def split_gaps(runs: list[dict], windows: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Every inter-token gap of `runs` (ms), split into those that overlap one of the
    `windows` (start, end in perf_counter seconds) and the others."""
    during: list[float] = []
    other: list[float] = []
    for r in runs:
        stamps = r["stamps"]
        for a, b in zip(stamps, stamps[1:], strict=False):
            hit = any(a < end and b > start for start, end in windows)
            (during if hit else other).append((b - a) * 1e3)
    return during, other


def served_mixed(
    url: str,
    short_prompt: str,
    short_new: int,
    streams: int,
    long_prompts: list[str],
    long_new: int,
    arrivals: int,
    period_s: float,
) -> dict:
    """Short streams running back to back while long prompts arrive every `period_s`
    (arrival k sends `long_prompts[k % len(long_prompts)]`).

    `streams` connections each send `short_prompt` requests of `short_new` tokens until the
    last long request has ended; long request k (its own connection) is sent at
    (k + 0.5) x `period_s` after the common start, so the short streams are decoding when
    it arrives. The short streams' gaps between tokens are split into those that overlap a
    long request's prefill (its arrival to its first token) and the others: what a long
    prompt costs the users already being served. The long requests give their TTFT.
    """
    from serving.client import AigcClient

    short_runs: list[dict] = []
    long_runs: list[dict] = []
    lock = threading.Lock()
    done = threading.Event()
    left = [arrivals]

    def short_worker(start: threading.Barrier) -> None:
        with AigcClient(url, timeout_s=300) as client:
            served_stream(client, short_prompt, min(short_new, 8))  # warm-up of this connection
            start.wait()
            while not done.is_set():
                r = served_stream(client, short_prompt, short_new)
                with lock:
                    short_runs.append(r)

    def long_worker(k: int) -> Callable[[threading.Barrier], None]:
        def work(start: threading.Barrier) -> None:
            try:
                with AigcClient(url, timeout_s=300) as client:
                    client.is_ready("gpt2")  # connected before the common start
                    start.wait()
                    time.sleep(period_s * (k + 0.5))
                    r = served_stream(client, long_prompts[k % len(long_prompts)], long_new)
                    with lock:
                        long_runs.append(r)
            finally:
                # the short streams stop once every long request has ended, failed or not
                with lock:
                    left[0] -= 1
                    if left[0] == 0:
                        done.set()

        return work

    wall = _run_together([short_worker] * streams + [long_worker(k) for k in range(arrivals)])
    windows = [(r["t0"], r["stamps"][0]) for r in long_runs if r["stamps"]]
    during, other = split_gaps(short_runs, windows)
    return {
        "streams": streams,
        "arrivals": arrivals,
        "period_s": period_s,
        "short": summarise_streams(short_runs, wall),
        "short_itl_during_long_prefill_ms": percentiles(during),
        "short_itl_other_ms": percentiles(other),
        "long_ttft_ms": percentiles([r["ttft_ms"] for r in long_runs if r["ttft_ms"] is not None]),
        "long_requests": len(long_runs),
    }


class TokenTimer:
    """A `transformers` streamer that stamps every new token (the first `put` is the prompt)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if self._prompt_seen:
            self.stamps.append(time.perf_counter())
        else:
            self._prompt_seen = True

    def end(self) -> None:
        pass


def generate_baseline(generate: Callable[[int, TokenTimer], object], new_tokens: int, repeats: int) -> dict:
    """A `generate(n, streamer)` baseline: TTFT and inter-token gaps from the streamer's stamps.

    Same figures as the served stream: TTFT from the call to the first new token, the gaps
    between tokens, tokens/s as `new_tokens` over the whole call (median over `repeats`).
    """
    generate(new_tokens, TokenTimer())  # warm-up
    runs = []
    for _ in range(repeats):
        timer = TokenTimer()
        t0 = time.perf_counter()
        generate(new_tokens, timer)
        r = stream_timing(t0, timer.stamps, time.perf_counter(), new_tokens)
        if r["deltas"] != new_tokens:
            from aigc.errors import BenchmarkError

            raise BenchmarkError(f"baseline generated {r['deltas']} tokens, expected {new_tokens}")
        runs.append(r)
    s = summarise_streams(runs)
    return {
        "ttft_ms": s["ttft_ms"],
        "itl_ms": s["itl_ms"],
        "tokens_per_s": round(new_tokens / statistics.median(r["total_s"] for r in runs), 2),
        "repeats": repeats,
    }


def hf_generate_fn(model, input_ids, eos_token_id: int):
    """Greedy `generate` with exactly `n` new tokens (EOS cannot end it early)."""
    import torch

    mask = torch.ones_like(input_ids)

    def run(n: int, streamer=None):
        with torch.no_grad():
            return model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=n,
                min_new_tokens=n,
                pad_token_id=eos_token_id,
                streamer=streamer,
            )

    return run


# -- memory --------------------------------------------------------------------------------


def read_bandwidth(nbytes: int, threads: int = 2, repeats: int = 7) -> dict:
    """Memory read bandwidth: `threads` threads each summing its share of one float32 array
    of `nbytes` (numpy leaves the GIL during the reduction), median of `repeats` after a
    warm-up. What a decode step that reads `nbytes` of weights can get at best."""
    a = np.ones(max(int(nbytes) // 4, threads * 1024), np.float32)  # ones: every page touched
    parts = np.array_split(a, threads)
    with ThreadPoolExecutor(threads) as pool:

        def once():
            list(pool.map(np.sum, parts))

        times = latency_samples(once, repeats, warmup=1)
    ms = statistics.median(times)
    return {
        "bytes": int(a.nbytes),
        "threads": threads,
        "repeats": repeats,
        "ms": round(ms, 3),
        "gb_per_s": round(a.nbytes / ms / 1e6, 2),
    }


# -- images --------------------------------------------------------------------------------


def latency_samples(fn: Callable[[], object], repeats: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    return [_timed(fn) for _ in range(repeats)]


def served_image_throughput(
    url: str, model: str, z: np.ndarray, concurrency: int, seconds: float, warmup: int = 3
) -> dict:
    """Images/s and request latency with `concurrency` clients each sending the batch `z`
    back to back for `seconds` (a time window, so one stall cannot decide a short count).

    Every client connects and warms up before the common start; only requests are timed.
    """
    from serving.client import AigcClient

    samples: list[float] = []
    lock = threading.Lock()

    def worker(start: threading.Barrier) -> None:
        with AigcClient(url, timeout_s=120) as client:
            for _ in range(warmup):
                client.decode(z, model=model)
            start.wait()
            mine = _for_seconds(lambda: client.decode(z, model=model), seconds)
            with lock:
                samples.extend(mine)

    wall = _run_together([worker] * concurrency)
    return {
        "images_per_s": round(len(samples) * z.shape[0] / wall, 1),
        "latency_ms": percentiles(samples),
    }


def inprocess_throughput(fn: Callable[[], object], batch: int, seconds: float, warmup: int = 3) -> float:
    """Images/s of an in-process call on a batch of `batch`, over a window of `seconds`."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    n = len(_for_seconds(fn, seconds))
    return round(n * batch / (time.perf_counter() - t0), 1)


def _for_seconds(fn: Callable[[], object], seconds: float) -> list[float]:
    """Call `fn` back to back until `seconds` have passed (at least once); the times in ms."""
    deadline = time.perf_counter() + seconds
    samples = [_timed(fn)]
    while time.perf_counter() < deadline:
        samples.append(_timed(fn))
    return samples
