"""The clients' and baselines' timing on fakes: streamed tokens, their gaps during a long
prefill, and the memory bandwidth."""

from __future__ import annotations

import time

import pytest

from aigc.errors import BenchmarkError
from benchmarks import measure


def test_mixed_gaps_are_split_by_the_long_prefill_windows():
    runs = [measure.stream_timing(0.0, [0.1, 0.2, 0.3, 0.4, 0.5], 0.5, tokens=5)]
    during, other = measure.split_gaps(runs, [(0.25, 0.35)])
    # (0.2, 0.3) and (0.3, 0.4) overlap the window; (0.1, 0.2) and (0.4, 0.5) do not
    assert during == pytest.approx([100.0, 100.0]) and other == pytest.approx([100.0, 100.0])
    assert measure.split_gaps(runs, []) == ([], pytest.approx([100.0] * 4))


def test_bandwidth_is_a_median_in_gb_per_s():
    r = measure.read_bandwidth(8 * 2**20, threads=2, repeats=3)
    assert r["bytes"] == 8 * 2**20 and r["threads"] == 2
    assert r["gb_per_s"] == pytest.approx(r["bytes"] / r["ms"] / 1e6, rel=0.01) and r["gb_per_s"] > 0.1


def _fake_generate(delay_s: float, produced: int | None = None):
    def generate(n, streamer):
        streamer.put("prompt")
        for _ in range(produced if produced is not None else n):
            time.sleep(delay_s)
            streamer.put("token")
        streamer.end()

    return generate


def test_baseline_timing_from_the_streamer():
    r = measure.generate_baseline(_fake_generate(0.002), new_tokens=5, repeats=3)
    assert r["ttft_ms"]["n"] == 3 and r["itl_ms"]["n"] == 12  # 4 gaps x 3 runs
    assert 1.5 <= r["itl_ms"]["p50"] < 50 and 1.5 <= r["ttft_ms"]["p50"] < 50
    assert 5 / 0.25 < r["tokens_per_s"] <= 5 / 0.01
    with pytest.raises(BenchmarkError, match="generated 3 tokens, expected 5"):
        measure.generate_baseline(_fake_generate(0.0, produced=3), new_tokens=5, repeats=1)


def test_stream_summary_counts_tokens_not_deltas():
    runs = [measure.stream_timing(0.0, [0.01, 0.02, 0.03], 0.04, tokens=4) for _ in range(2)]
    s = measure.summarise_streams(runs, wall_s=0.08)
    assert s["aggregate_tokens_per_s"] == pytest.approx(100.0)
    assert s["per_stream_tokens_per_s"] == pytest.approx(100.0)
    assert s["ttft_ms"]["p50"] == pytest.approx(10.0) and s["itl_ms"]["n"] == 4
    assert s["deltas_per_request"] == [3] and s["responses_per_token"] == 0.75  # 6 deltas, 8 tokens
    # each request's own inter-token latency: 20 ms from its first response to its last,
    # over the 3 tokens after the first
    assert s["request_itl_ms"]["p50"] == pytest.approx(20.0 / 3, abs=1e-3) and s["request_itl_ms"]["n"] == 2


def test_a_requests_own_inter_token_latency_holds_where_responses_arrive_bunched():
    """Two responses read back to back, then a long wait: the gaps' p50 is the bunching,
    the request's own ITL is its tokens' pace."""
    run = measure.stream_timing(0.0, [0.010, 0.0101, 0.0102, 0.040, 0.0401, 0.0402, 0.070], 0.07, tokens=7)
    s = measure.summarise_streams([run])
    assert s["itl_ms"]["p50"] < 1.0
    assert s["request_itl_ms"]["p50"] == pytest.approx(10.0)
