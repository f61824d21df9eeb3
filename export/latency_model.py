"""The expected latency of a GPT-2 request under a stated workload, from a decode profile.

The export measures each variant's decode profile through the serving engine's own runner
(`export.gpt2_eval.decode_profiles`); this model turns it into what a user waits for:

    request_ms = streams x prefill(prompt)                  its own prefill and, on average,
                                                            one of each other stream's
               + (new - 1) x step(streams, prompt + new/2)  a batched step at the mean cache length

`prefill` is linear between the measured prompt lengths (the last slope beyond them); `step`
is bilinear in batch size and cache length the same way. `aigc build --variant auto` ranks
GPT-2 variants by it; the export report records it for the default workload.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from aigc.errors import ConfigError


@dataclass(frozen=True)
class Workload:
    """What `auto` optimises for; the default is several users with chat-sized turns."""

    prompt_tokens: int = 128
    new_tokens: int = 128
    streams: int = 4

    def validate(self) -> None:
        if not 1 <= self.streams <= 1024:
            raise ConfigError(f"--streams must be in 1..1024, got {self.streams}")
        if not 1 <= self.prompt_tokens <= 100_000:
            raise ConfigError(f"--prompt-tokens must be in 1..100000, got {self.prompt_tokens}")
        if not 1 <= self.new_tokens <= 100_000:
            raise ConfigError(f"--new-tokens must be in 1..100000, got {self.new_tokens}")

    def as_dict(self) -> dict:
        return asdict(self)


def _interp(points: list[tuple[float, float]], x: float) -> float:
    """Linear between sorted (x, y) points, the nearest slope beyond them."""
    points = sorted(points)
    if len(points) == 1:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):  # noqa: B007 (last pair extrapolates)
        if x <= x1:
            break
    return max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0))


def step_ms_at(profile: dict, streams: int, cached: float) -> float:
    """Decode-step time for `streams` rows at `cached` tokens each, from the profile."""
    by_batch = []
    for batch, by_past in profile["step_ms"].items():
        by_batch.append((int(batch), _interp([(int(p), float(ms)) for p, ms in by_past.items()], cached)))
    if len(by_batch) == 1:  # one measured batch size: assume time grows with the rows
        ((b, ms),) = by_batch
        return ms * streams / b
    return _interp(by_batch, streams)


def prefill_ms_at(profile: dict, tokens: int) -> float:
    return _interp([(int(t), float(ms)) for t, ms in profile["prefill_ms"].items()], tokens)


def expected_request(profile: dict, workload: Workload) -> dict:
    """The latency model above, with its parts (ms) and the tokens/s it implies per stream."""
    prefill = prefill_ms_at(profile, workload.prompt_tokens)
    step = step_ms_at(profile, workload.streams, workload.prompt_tokens + workload.new_tokens / 2)
    return _figures(prefill, step, workload)


def _figures(prefill: float, step: float, workload: Workload) -> dict:
    total = workload.streams * prefill + (workload.new_tokens - 1) * step
    return {
        "prefill_ms": round(prefill, 3),
        "step_ms": round(step, 3),
        "request_ms": round(total, 3),
        "tokens_per_s_per_stream": round(1e3 * workload.new_tokens / total, 2) if total > 0 else None,
    }


def rank(profiles: dict[str, dict], workload: Workload) -> dict:
    """Expected figures per variant and the fastest, for the export report."""
    expected = {name: expected_request(p, workload) for name, p in profiles.items()}
    fastest = min(expected, key=lambda n: (expected[n]["request_ms"], n)) if expected else None
    return {"workload": workload.as_dict(), "expected": expected, "fastest": fastest}


def routing(main: dict, companion: dict, workload: Workload, max_rows: int = 8) -> dict:
    """Which calls a companion graph (same model, other weights, sharing the KV slots) takes
    over from the main one: the prefills when its prefill of the workload's prompt is faster,
    and the decode steps from the smallest row count at and above which its step is faster
    (0 = none), at the workload's mean cache length."""
    cached = workload.prompt_tokens + workload.new_tokens / 2
    from_rows = 0
    for rows in range(max_rows, 0, -1):
        if step_ms_at(companion, rows, cached) < step_ms_at(main, rows, cached):
            from_rows = rows
        else:
            break
    prefill = prefill_ms_at(companion, workload.prompt_tokens) < prefill_ms_at(main, workload.prompt_tokens)
    return {"companion_prefill": prefill, "companion_from_rows": from_rows}


def expected_request_pair(main: dict, companion: dict, workload: Workload, max_rows: int = 8) -> dict:
    """`expected_request` when each call runs on whichever of the two graphs `routing` gives it."""
    route = routing(main, companion, workload, max_rows)
    prefill = prefill_ms_at(companion if route["companion_prefill"] else main, workload.prompt_tokens)
    decoder = (
        companion
        if route["companion_from_rows"] and workload.streams >= route["companion_from_rows"]
        else main
    )
    step = step_ms_at(decoder, workload.streams, workload.prompt_tokens + workload.new_tokens / 2)
    return {**_figures(prefill, step, workload), "routing": route}


def routed_profile(main: dict, companion: dict, route: dict) -> dict:
    """The profile of a pair as it serves: each batch size's steps from the graph that
    `route` gives them, the prefills from the prefilling graph."""
    from_rows = route["companion_from_rows"]
    steps = {
        b: (companion if from_rows and int(b) >= from_rows else main)["step_ms"][b]
        for b in main["step_ms"]
        if b in companion["step_ms"]
    }
    prefill = (companion if route["companion_prefill"] else main)["prefill_ms"]
    return {**main, "step_ms": steps, "prefill_ms": prefill, "routing": route}
