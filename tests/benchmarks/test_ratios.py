"""The ratios `aigc bench` reports and gates: served figures over the baselines, the
offline decode profile, the read floors and the fastest peer."""

from __future__ import annotations

import pytest
from bench_samples import KV_PER_TOKEN, sample_profile, sample_results, sample_results_with_peers

from benchmarks import ratios, tables


def test_ratios_are_measured_side_by_side():
    r = sample_results()["ratios"]
    assert r["gpt2_tokens_per_s_vs_eager"] == pytest.approx(118.0 / 20.0, rel=1e-3)
    assert r["gpt2_tokens_per_s_vs_optimum"] == pytest.approx(118.0 / 30.0, rel=1e-3)
    assert r["gpt2_ttft_speedup_vs_eager"] == pytest.approx(90.0 / 25.0, rel=1e-3)
    assert r["gpt2_itl_speedup_vs_optimum"] == pytest.approx(45.0 / 8.0, rel=1e-3)
    assert r["gpt2_aggregate_c4_vs_c1"] == pytest.approx(200.0 / 120.0, rel=1e-3)
    assert r["gpt2_aggregate_c8_vs_eager"] == pytest.approx(360.0 / 20.0, rel=1e-3)
    assert r["dcgan_served_minus_inprocess_p50_ms"] == pytest.approx(0.7)
    assert r["dcgan_served_speedup_vs_eager_p50"] == pytest.approx(1.2)
    assert r["dcgan_images_per_s_b8_vs_inprocess"] == pytest.approx(0.5)
    assert r["dcgan_latency_p50_over_mean_c1"] == pytest.approx(1.2 / 1.25, rel=1e-3)
    # the profile at the short requests' mean cache length: 16 + 64 / 2 = 48 tokens
    assert r["gpt2_step_ceiling_c4_vs_c1"] == pytest.approx(4 * 7.5 / 12.0, rel=1e-3)
    assert r["gpt2_step_ceiling_c8_vs_c1"] == pytest.approx(8 * 7.5 / 17.0, rel=1e-3)
    assert "gpt2_step_ceiling_c2_vs_c1" not in r  # only for the concurrencies served


def test_ratios_against_the_offline_profile():
    r = sample_results()["ratios"]
    # served gain at 8 streams over the gain the batch-8 step allows
    assert r["gpt2_aggregate_c8_vs_step_ceiling"] == pytest.approx(
        (360.0 / 120.0) / (8 * 7.5 / 17.0), rel=1e-3
    )
    assert r["gpt2_step_long_vs_short_b8"] == pytest.approx(1.5, rel=1e-3)
    assert r["gpt2_step_long_vs_short_b1"] == pytest.approx(1.5, rel=1e-3)
    assert r["gpt2_ttft_minus_prefill_ms"] == pytest.approx(25.0 - 19.0)
    # the server's part of each token at one stream, and responses a token under load
    assert r["gpt2_itl_minus_step_ms"] == pytest.approx(8.0 - 7.5)
    assert r["gpt2_responses_per_token_c4"] == 1.0 and r["gpt2_responses_per_token_c8"] == 0.75
    assert r["gpt2_step_b1_vs_read_floor"] == pytest.approx(
        7.5 / ((124e6 + KV_PER_TOKEN * 48) / 25e6), rel=1e-3
    )
    assert r["gpt2_long_aggregate_c8_vs_c1"] == pytest.approx(160.0 / 70.0, rel=1e-3)
    assert r["gpt2_mixed_itl_p99_during_long_vs_other"] == pytest.approx(2.0)


def test_batching_gain_is_the_median_of_rounds_in_turns():
    results = sample_results()
    g = results["gpt2"]  # the pass (360 / 120 = 3.0) and two more rounds of 1 and 8 streams
    g["scaling_rounds"] = {
        "concurrency": 8,
        "rounds": [{"c1": 120.0, "c8": 360.0}, {"c1": 100.0, "c8": 200.0}, {"c1": 150.0, "c8": 375.0}],
    }
    r = ratios.ratios(results)
    ceiling = 8 * 7.5 / 17.0
    assert r["gpt2_aggregate_c8_vs_c1"] == pytest.approx(2.5)  # median of 3.0, 2.0, 2.5
    assert r["gpt2_aggregate_c8_vs_step_ceiling"] == pytest.approx(2.5 / ceiling, rel=1e-3)
    assert r["gpt2_aggregate_c8_vs_step_ceiling_min"] == pytest.approx(2.0 / ceiling, rel=1e-3)
    assert r["gpt2_aggregate_c8_vs_step_ceiling_max"] == pytest.approx(3.0 / ceiling, rel=1e-3)
    # 4 streams ran once: their gain is the pass's
    assert r["gpt2_aggregate_c4_vs_c1"] == pytest.approx(200.0 / 120.0, rel=1e-3)
    assert "gpt2_aggregate_c4_vs_step_ceiling_min" not in r
    # one round only (--scaling-rounds 1): the pass alone, no spread
    g["scaling_rounds"]["rounds"] = g["scaling_rounds"]["rounds"][:1]
    r = ratios.ratios(results)
    assert r["gpt2_aggregate_c8_vs_c1"] == pytest.approx(3.0)
    assert "gpt2_aggregate_c8_vs_step_ceiling_min" not in r


def test_each_rounds_gain_is_set_against_the_ceiling_timed_beside_it():
    """Rounds that carry their own offline steps: each gain over its own round's ceiling (a
    slow minute moves both), the reported ceiling their median, the profile's beside."""
    results = sample_results()
    g = results["gpt2"]
    g["scaling_rounds"] = {
        "concurrency": 8,
        "rounds": [
            {"c1": 120.0, "c8": 360.0, "step1_ms": 7.5, "step8_ms": 17.0},  # ceiling 3.53: 0.85
            {"c1": 100.0, "c8": 200.0, "step1_ms": 7.5, "step8_ms": 25.0},  # a slow minute: 2.4, 0.833
            {"c1": 150.0, "c8": 375.0, "step1_ms": 6.0, "step8_ms": 16.0},  # 3.0: 0.833
        ],
    }
    r = ratios.ratios(results)
    shares = sorted([3.0 / (8 * 7.5 / 17.0), 2.0 / (8 * 7.5 / 25.0), 2.5 / (8 * 6.0 / 16.0)])
    assert r["gpt2_aggregate_c8_vs_step_ceiling"] == pytest.approx(shares[1], rel=1e-3)
    assert r["gpt2_aggregate_c8_vs_step_ceiling_min"] == pytest.approx(shares[0], rel=1e-3)
    assert r["gpt2_aggregate_c8_vs_step_ceiling_max"] == pytest.approx(shares[2], rel=1e-3)
    assert r["gpt2_step_ceiling_c8_vs_c1"] == pytest.approx(3.0, rel=1e-3)  # median of 3.53, 2.4, 3.0
    assert r["gpt2_profile_step_ceiling_c8_vs_c1"] == pytest.approx(8 * 7.5 / 17.0, rel=1e-3)
    # against the profile's one ceiling, the slow round's gain would read 0.57 of it
    assert 2.0 / (8 * 7.5 / 17.0) < 0.6 < shares[0]
    # a round without its steps: the profile's ceiling for every round, as before
    del g["scaling_rounds"]["rounds"][1]["step8_ms"]
    r = ratios.ratios(results)
    assert r["gpt2_aggregate_c8_vs_step_ceiling"] == pytest.approx(2.5 / (8 * 7.5 / 17.0), rel=1e-3)
    assert "gpt2_profile_step_ceiling_c8_vs_c1" not in r


def test_the_long_over_short_gap_is_taken_per_pair_run_back_to_back():
    """Rounds of 8 long streams and 8 short ones run back to back: each pair's ratio, their
    median (the short pass of the run's start, minutes away, no longer decides)."""
    results = sample_results()
    g = results["gpt2"]
    g["long"]["rounds"] = {
        "concurrency": 8,
        "itl_p50_ms": [
            {"long": 13.0, "short": 10.5},
            {"long": 14.0, "short": 7.5},
            {"long": 12.7, "short": 10.0},
        ],
    }
    r = ratios.ratios(results)
    assert r["gpt2_long_itl_p50_c8_vs_short_c8"] == pytest.approx(
        12.7 / 10.0, abs=1e-3
    )  # of 1.24, 1.87, 1.27
    assert r["gpt2_long_itl_p50_c8_vs_short_c8_min"] == pytest.approx(13.0 / 10.5, abs=1e-3)
    assert r["gpt2_long_itl_p50_c8_vs_short_c8_max"] == pytest.approx(14.0 / 7.5, abs=1e-3)
    # rounds at another concurrency: the passes, as before
    g["long"]["rounds"]["concurrency"] = 4
    assert ratios.ratios(results)["gpt2_long_itl_p50_c8_vs_short_c8"] == pytest.approx(12.0 / 8.0)


def test_the_long_over_short_ratio_takes_each_requests_own_inter_token_latency():
    """Where the rounds hold each request's own inter-token latency (first token to last),
    the ratio is of those; the gaps between responses, which collapse where the client
    reads queued responses back to back, give `gpt2_long_gap_p50_c8_vs_short_c8` beside."""
    results = sample_results()
    results["gpt2"]["long"]["rounds"] = {
        "concurrency": 8,
        "itl_p50_ms": [
            {"long": 46.0, "short": 15.4},
            {"long": 36.0, "short": 9.7},
            {"long": 31.0, "short": 4.1},
        ],
        "request_itl_p50_ms": [
            {"long": 46.5, "short": 12.9},
            {"long": 36.2, "short": 12.1},
            {"long": 31.4, "short": 12.4},
        ],
    }
    r = ratios.ratios(results)
    assert r["gpt2_long_itl_p50_c8_vs_short_c8"] == pytest.approx(36.2 / 12.1, abs=1e-3)
    assert r["gpt2_long_itl_p50_c8_vs_short_c8_max"] == pytest.approx(46.5 / 12.9, abs=1e-3)
    assert r["gpt2_long_gap_p50_c8_vs_short_c8"] == pytest.approx(36.0 / 9.7, abs=1e-3)
    assert r["gpt2_long_gap_p50_c8_vs_short_c8_max"] == pytest.approx(31.0 / 4.1, abs=1e-3)


def test_many_streams_over_8_is_taken_per_pair_run_back_to_back():
    results = sample_results()
    g = results["gpt2"]
    g["many_users"]["rounds"] = [
        {"many": 1000.0, "c8": 700.0},
        {"many": 1100.0, "c8": 900.0},
        {"many": 950.0, "c8": 700.0},
    ]
    r = ratios.ratios(results)
    assert r["gpt2_aggregate_c64_vs_c8"] == pytest.approx(950.0 / 700.0, abs=1e-3)  # of 1.43, 1.22, 1.36
    assert r["gpt2_aggregate_c64_vs_c8_min"] == pytest.approx(1100.0 / 900.0, abs=1e-3)
    assert r["gpt2_aggregate_c64_vs_c8_max"] == pytest.approx(1000.0 / 700.0, abs=1e-3)


def test_the_openai_frontend_is_set_against_grpc_per_round_run_back_to_back():
    results = sample_results()
    assert not any(k.startswith("gpt2_openai") for k in ratios.ratios(results))  # not measured: none
    results["gpt2"]["openai"] = {
        "concurrency": 8,
        "rounds": [
            {"grpc_c1": 200.0, "openai_c1": 190.0, "grpc_c8": 800.0, "openai_c8": 600.0},
            {"grpc_c1": 100.0, "openai_c1": 98.0, "grpc_c8": 400.0, "openai_c8": 360.0},
            {"grpc_c1": 150.0, "openai_c1": 120.0, "grpc_c8": 500.0, "openai_c8": 400.0},
        ],
    }
    for r, (grpc, openai) in zip(
        results["gpt2"]["openai"]["rounds"], [(9.0, 11.0), (10.0, 15.0), (8.0, 9.0)]
    ):
        r.update(grpc_ttft_ms=grpc, openai_ttft_ms=openai)
    r = ratios.ratios(results)
    assert r["gpt2_openai_vs_grpc_c8_tokens_per_s"] == pytest.approx(0.8)  # of 0.75, 0.9, 0.8
    assert (r["gpt2_openai_vs_grpc_c8_tokens_per_s_min"], r["gpt2_openai_vs_grpc_c8_tokens_per_s_max"]) == (
        0.75,
        0.9,
    )
    assert r["gpt2_openai_vs_grpc_c1_tokens_per_s"] == pytest.approx(0.95)  # of 0.95, 0.98, 0.8
    assert r["gpt2_openai_minus_grpc_ttft_ms"] == pytest.approx(2.0)  # of 2, 5, 1
    assert r["gpt2_openai_minus_grpc_ttft_ms_max"] == pytest.approx(5.0)


def test_many_users_ratios():
    r = sample_results()["ratios"]
    assert r["gpt2_long_itl_p50_c8_vs_short_c8"] == pytest.approx(12.0 / 8.0)
    assert r["gpt2_aggregate_c64_vs_c8"] == pytest.approx(450.0 / 360.0, rel=1e-3)
    assert r["gpt2_engine_blocks_vs_slots_c64_tokens_per_s"] == pytest.approx(403.0 / 260.0, rel=1e-3)
    assert r["gpt2_engine_prefix_second_vs_first_ttft"] == 0.093
    assert r["gpt2_engine_shared_prefix_ttft_on_vs_off"] == 0.2
    assert r["gpt2_served_runner_prefix_second_vs_first_ttft"] == 0.033
    assert r["gpt2_served_runner_shared_prefix_ttft_on_vs_off"] == 0.1
    assert r["gpt2_served_runner_moves_on_vs_off_tokens_per_s"] == 1.5
    assert r["gpt2_engine_mixed_call_vs_two_calls"] == 0.844
    assert r["gpt2_f32_cache_step_long_vs_short_b8"] == pytest.approx(35.0 / 27.0, rel=1e-3)
    assert r["gpt2_u8_cache_step_long_vs_short_b8"] == pytest.approx(30.0 / 26.5, rel=1e-3)
    assert (
        r["gpt2_engine_structured_b1_vs_plain"] == 0.988 and r["gpt2_engine_structured_b8_vs_plain"] == 1.04
    )


def test_profile_ratios_follow_the_prompt_length():
    results = sample_results()
    results["config"].update(prompt_tokens=128, new_tokens=64)  # cache 160 on average, 128-token prefill
    r = ratios.ratios(results)
    step1, step8 = 7.5 * (1 + 0.5 * (160 - 48) / 448), 17.0 * (1 + 0.5 * (160 - 48) / 448)
    assert r["gpt2_step_ceiling_c8_vs_c1"] == pytest.approx(8 * step1 / step8, rel=1e-3)
    assert r["gpt2_ttft_minus_prefill_ms"] == pytest.approx(25.0 - 150.0)


def test_profile_ratios_skip_an_old_flat_profile():
    results = sample_results()
    results["gpt2"]["decode_profile"] = {"step_ms": {"1": 7.5, "8": 17.0}, "prefill_ms": {"16": 19.0}}
    r = ratios.ratios(results)
    assert not {
        "gpt2_step_ceiling_c8_vs_c1",
        "gpt2_aggregate_c8_vs_step_ceiling",
        "gpt2_step_long_vs_short_b8",
    } & set(r)
    assert r["gpt2_aggregate_c8_vs_c1"] == pytest.approx(3.0)


def test_read_floor_arithmetic():
    profile = sample_profile(8.0, 12.0, 20.0, 1.5)
    floors = ratios.read_floors(profile, 100_000_000, KV_PER_TOKEN, {"1gib": 25.0, "model": 50.0})
    assert floors["kv_bytes_per_token"] == KV_PER_TOKEN == 73_728  # 2 x 12 layers x 12 heads x 64 x fp32
    rows = {(r["batch"], r["past"]): r for r in floors["rows"]}
    assert set(rows) == {(b, p) for b in (1, 4, 8) for p in (48, 496)}
    r = rows[(8, 496)]
    assert r["bytes"] == 100_000_000 + 73_728 * 496 * 8  # the weights once, every row's cache
    assert r["floor_ms"]["1gib"] == pytest.approx(r["bytes"] / 25e9 * 1e3, rel=1e-3)
    assert r["floor_ms"]["model"] == pytest.approx(r["bytes"] / 50e9 * 1e3, rel=1e-3)
    assert r["step_over_floor"]["1gib"] == pytest.approx(30.0 / r["floor_ms"]["1gib"], rel=1e-3)
    r = rows[(1, 48)]
    assert r["bytes"] == 100_000_000 + 73_728 * 48
    assert r["step_over_floor"]["model"] == pytest.approx(8.0 / (r["bytes"] / 50e6), rel=1e-3)


def test_peer_ratios_are_against_the_fastest_peer():
    r = sample_results_with_peers()["ratios"]
    # served c=1: 118 tok/s per stream, TTFT 25 ms; 8 streams 360 tok/s; the best peer 300 tok/s, 9 ms
    assert r["gpt2_tokens_per_s_vs_best_peer"] == pytest.approx(118.0 / 300.0, rel=1e-3)
    assert r["gpt2_ttft_minus_best_peer_ms"] == pytest.approx(25.0 - 9.0)
    assert r["gpt2_aggregate_c8_vs_best_peer"] == pytest.approx(360.0 / 300.0, rel=1e-3)
    # long: served 70 tok/s, TTFT 700 ms at one stream
    assert r["gpt2_long_tokens_per_s_vs_best_peer"] == pytest.approx(70.0 / 150.0, rel=1e-3)
    assert r["gpt2_long_ttft_minus_best_peer_ms"] == pytest.approx(700.0 - 120.0)
    # the old ratios are untouched; without peers there is no peer ratio
    assert r["gpt2_tokens_per_s_vs_eager"] == pytest.approx(118.0 / 20.0, rel=1e-3)
    assert not any("peer" in k for k in sample_results()["ratios"])


def test_the_peer_ratio_is_the_median_of_rounds_taken_in_turns_with_its_spread():
    """Served and peer measured in alternating rounds: a slow minute on one side of one round
    moves that round's ratio, not the median (the first round is 118 / 300)."""
    results = sample_results_with_peers()
    results["gpt2"]["peer_rounds"] = {
        "peer": "openvino_int4",
        "rounds": [
            {"served": 118.0, "peer": 300.0},
            {"served": 150.0, "peer": 100.0},  # the peer's turn met other load
            {"served": 120.0, "peer": 290.0},
        ],
    }
    r = ratios.ratios(results)
    assert r["gpt2_tokens_per_s_vs_best_peer"] == pytest.approx(120.0 / 290.0, abs=1e-3)
    assert r["gpt2_tokens_per_s_vs_best_peer_min"] == pytest.approx(118.0 / 300.0, abs=1e-3)
    assert r["gpt2_tokens_per_s_vs_best_peer_max"] == pytest.approx(1.5)
    assert r["gpt2_ttft_minus_best_peer_ms"] == pytest.approx(
        25.0 - 9.0
    )  # rounds without TTFTs: the first pass
    row = next(line for line in tables.markdown(results).splitlines() if "served vs best peer" in line)
    assert "0.41× (0.39–1.50, 3 rounds)" in row and "| +16.0 |" in row
    # rounds that carry both TTFTs: the difference is taken per round too, its median and spread
    for rnd, (a, b) in zip(
        results["gpt2"]["peer_rounds"]["rounds"], [(25.0, 9.0), (30.0, 29.0), (11.0, 10.0)], strict=True
    ):
        rnd.update(served_ttft_ms=a, peer_ttft_ms=b)
    r = ratios.ratios(results)
    assert r["gpt2_ttft_minus_best_peer_ms"] == pytest.approx(1.0)  # median of 16, 1, 1
    assert (
        r["gpt2_ttft_minus_best_peer_ms_min"] == pytest.approx(1.0)
        and r["gpt2_ttft_minus_best_peer_ms_max"] == 16.0
    )
    row = next(line for line in tables.markdown(results).splitlines() if "served vs best peer" in line)
    assert "| +1.0 (+1.0 to +16.0) |" in row


def test_every_peer_skipped_gives_no_peer_ratio():
    results = sample_results()
    results["gpt2"]["peers"] = {"openvino_int4": {"skipped": "conversion failed: no disk"}}
    assert not any("peer" in k for k in ratios.ratios(results))
    assert "| OpenVINO GenAI `LLMPipeline` int4: skipped (conversion failed: no disk) |" in tables.markdown(
        dict(results, ratios=ratios.ratios(results))
    )
