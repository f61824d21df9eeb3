"""`aigc soak`: concurrent mixed load against a server for a set time.

Clients send short and long text streams (a share of the long ones cancelled mid-stream by
the client going away), image batches and a share of deliberately bad requests. Bad requests
must fail with their named error; anything else failing is an unexpected error. The server's
memory (resident set of `tritonserver` and its Python-backend stubs) is sampled every second:
the growth is the last quarter's mean over the first quarter's, after a warm-up that has
touched every code path (the KV slots are allocated once at load, so churn should not move
it). Fails on any unexpected error or on growth past a bound.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aigc.errors import BenchmarkError, ClientError, ConfigError

logger = logging.getLogger(__name__)

# (kind, expected words in the error) of the deliberately bad requests.
BAD = [
    ("nan_latent", "NaN"),
    ("unknown_sampling_key", "unknown field"),
    ("max_tokens_zero", "max_tokens"),
    ("empty_prompt", "text_input"),
]


@dataclass
class SoakOptions:
    url: str
    duration_s: float = 60.0
    clients: int = 4
    bad_share: float = 0.1
    max_tokens: int = 32
    server_pids: tuple[int, ...] = ()
    max_growth_mb: float = 200.0
    seed: int = 0

    def validate(self) -> None:
        if not 1 <= self.duration_s <= 86_400:
            raise ConfigError(f"--duration must be in 1..86400 s, got {self.duration_s}")
        if not 1 <= self.clients <= 256:
            raise ConfigError(f"--clients must be in 1..256, got {self.clients}")
        if not 0 <= self.bad_share <= 1:
            raise ConfigError(f"--bad-share must be in [0, 1], got {self.bad_share}")


def process_tree_rss_mb(pids: tuple[int, ...]) -> float:
    """Resident memory of the processes and all their descendants, in MB (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    todo, seen, total = list(pids), set(), 0
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
        todo.extend(children.get(pid, []))
    return total / 1024


def _long_prompt(client) -> str:
    """Words filling about a quarter of the served context (one word is at least one token)."""
    try:
        cfg = client._client.get_model_config("gpt2", as_json=True)["config"]
        limit = int(cfg["parameters"]["max_prompt_tokens"]["string_value"])
    except Exception:  # noqa: BLE001 - an older repository: a modest length
        limit = 128
    return " ".join(["value"] * max(8, limit // 4))


def _one_request(client, kind: str, rng: random.Random, long_prompt: str = "") -> None:
    if kind == "long_text":
        if not "".join(client.generate_text(long_prompt, max_tokens=rng.randint(2, 16), ignore_eos=True)):
            raise ClientError("empty text from a valid request")
    elif kind == "cancelled_text":
        stream = client.generate_text(long_prompt, max_tokens=64, ignore_eos=True)
        for i, _ in enumerate(stream):
            if i == 1:
                break
        stream.close()  # the client goes away mid-stream: the server must free the slot
    elif kind == "text":
        text = "".join(
            client.generate_text(
                "The class",
                max_tokens=rng.randint(4, 32),
                ignore_eos=True,
                temperature=rng.choice([0.0, 0.8]),
                seed=rng.randint(0, 99),
            )
        )
        if not text:
            raise ClientError("empty text from a valid request")
    elif kind == "image":
        n = rng.choice([1, 4, 16])
        images = client.generate_images("dcgan", n=n, seed=rng.randint(0, 99))
        if images.shape[0] != n:
            raise ClientError(f"asked {n} images, got {images.shape[0]}")
    elif kind == "nan_latent":
        client._infer("dcgan", "z", np.full((1, 100), np.nan, np.float32), ["image"])
    elif kind == "unknown_sampling_key":
        list(client._stream("gpt2", "hi", {"beam_width": 2}, True, True, 30))
    elif kind == "max_tokens_zero":
        list(client._stream("gpt2", "hi", {"max_tokens": 0}, True, True, 30))
    elif kind == "empty_prompt":
        list(client._stream("gpt2", "", {}, True, True, 30))


def run_soak(opts: SoakOptions) -> dict:
    from benchmarks.measure import percentiles
    from serving.client import AigcClient

    opts.validate()
    counts: Counter = Counter()
    errors: Counter = Counter()
    unexpected: list[str] = []
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + opts.duration_s
    expected = dict(BAD)

    def worker(i: int) -> None:
        rng = random.Random(opts.seed * 1000 + i)
        with AigcClient(opts.url, timeout_s=60) as client:
            while time.monotonic() < stop_at:
                kind = (
                    rng.choice([k for k, _ in BAD])
                    if rng.random() < opts.bad_share
                    else rng.choice(["text", "text", "long_text", "cancelled_text", "image"])
                )
                t0 = time.perf_counter()
                try:
                    _one_request(client, kind, rng, long_prompt)
                    outcome = "ok" if kind not in expected else f"{kind}: accepted a bad request"
                except ClientError as exc:
                    words = expected.get(kind)
                    outcome = (
                        f"{kind}: rejected as expected" if words and words in str(exc) else f"{kind}: {exc}"
                    )
                except Exception as exc:  # noqa: BLE001 - every other failure is unexpected
                    outcome = f"{kind}: {type(exc).__name__}: {exc}"
                with lock:
                    counts[kind] += 1
                    if kind in ("text", "image") and outcome == "ok":
                        latencies.append((time.perf_counter() - t0) * 1e3)
                    elif outcome != "ok":
                        if "as expected" in outcome:
                            errors[kind] += 1
                        else:
                            unexpected.append(outcome)

    warm = AigcClient(opts.url)
    warm.wait_ready(30)
    long_prompt = _long_prompt(warm)
    for kind in ("text", "long_text", "cancelled_text", "image"):
        _one_request(warm, kind, random.Random(0), long_prompt)
    warm.close()
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while opts.server_pids and not done.wait(1.0):
            samples.append(process_tree_rss_mb(opts.server_pids))

    sampler = threading.Thread(target=sample, daemon=True)
    rss_start = process_tree_rss_mb(opts.server_pids) if opts.server_pids else None
    sampler.start()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(opts.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    sampler.join()
    rss_end = process_tree_rss_mb(opts.server_pids) if opts.server_pids else None
    if rss_end is not None:
        samples.append(rss_end)
    quarter = max(1, len(samples) // 4)
    result = {
        "duration_s": opts.duration_s,
        "clients": opts.clients,
        "requests": dict(counts),
        "total_requests": sum(counts.values()),
        "expected_errors": dict(errors),
        "unexpected_errors": unexpected[:20],
        "unexpected_error_count": len(unexpected),
        "latency_ms": percentiles(latencies),
        "server_rss_mb": {
            "start": rss_start,
            "end": rss_end,
            "max": round(max(samples), 1) if samples else None,
            # last quarter's mean over the first quarter's: churn after the warm-up
            "growth": (
                None
                if not samples
                else round(float(np.mean(samples[-quarter:]) - np.mean(samples[:quarter])), 1)
            ),
            "samples": [round(x, 1) for x in samples],
        },
    }
    return result


def check(result: dict, max_growth_mb: float) -> None:
    problems = []
    if result["unexpected_error_count"]:
        problems.append(
            f"{result['unexpected_error_count']} unexpected errors, e.g. {result['unexpected_errors'][:3]}"
        )
    growth = result["server_rss_mb"]["growth"]
    if growth is not None and growth > max_growth_mb:
        problems.append(f"server memory grew {growth:.0f} MB (bound {max_growth_mb:.0f} MB)")
    if problems:
        raise BenchmarkError("soak failed: " + "; ".join(problems))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", help="gRPC address of a running server (default: build and start the demo's)"
    )
    parser.add_argument(
        "--repository",
        type=Path,
        default=Path("model_repository"),
        help="repository to serve when no --url is given",
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--bad-share", type=float, default=0.1, help="share of deliberately bad requests")
    parser.add_argument("--max-growth-mb", type=float, default=200.0, help="allowed server memory growth")
    parser.add_argument("--out", type=Path, default=Path("runs/soak.json"), help="result JSON")


def run(args: argparse.Namespace) -> int:
    import contextlib

    with contextlib.ExitStack() as stack:
        url, pids = args.url, ()
        if url is None:
            from serving.server import EmbeddedTritonServer

            srv = stack.enter_context(
                EmbeddedTritonServer(args.repository, grpc_port=0, http_port=0, metrics_port=0)
            )
            url, pids = srv.grpc_url, (srv.process.pid,)
        result = run_soak(
            SoakOptions(
                url=url,
                duration_s=args.duration,
                clients=args.clients,
                bad_share=args.bad_share,
                server_pids=pids,
            )
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    logger.info("%s", json.dumps(result, indent=2))
    check(result, args.max_growth_mb)
    return 0
