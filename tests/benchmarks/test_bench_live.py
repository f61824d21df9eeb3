"""`aigc bench` through the real server: a tiny run with served streams, both baselines, a peer,
the long and mixed workloads, read floors and dcgan, its ratios, table and plot."""

from __future__ import annotations

import pytest

from benchmarks.options import BenchOptions


@pytest.mark.server
@pytest.mark.slow
def test_live_quick_run_against_the_server(server, exports, tmp_path):
    """A tiny quick run through the real server: served streams, both baselines, a peer, dcgan."""
    from benchmarks.api import run_benchmark

    results = run_benchmark(
        BenchOptions(
            url=server.grpc_url,
            exports=(exports["gpt2"], exports["dcgan"]),
            gpt2_variant="fp32",  # what the test server serves
            image_variant="fp32",
            prompt_tokens=8,
            new_tokens=8,
            concurrency=(1, 2),
            # the tiny model's window is 128 tokens: a "long" prompt of 64
            long_prompt_tokens=64,
            long_new_tokens=8,
            long_concurrency=(1, 2),
            mixed_streams=2,
            mixed_new_tokens=16,
            mixed_arrivals=2,
            mixed_period_s=0.3,
            many_users=4,
            batch_sizes=(1, 4),
            repeats=2,
            image_requests=20,
            throughput_seconds=0.3,
            peers=("ctranslate2_int8",),  # the quickest conversion of the peers
            peer_rounds=2,
            scaling_rounds=2,
            out=tmp_path / "out",
            cache=tmp_path / "cache",
            progress=False,
        )
    )
    g = results["gpt2"]
    # a gap between responses, a response a token unless the server's sender fell behind and
    # sent a stream's tokens together (the tiny model steps faster than responses go out)
    assert g["served"]["2"]["requests"] == 4 and 2 <= g["served"]["1"]["itl_ms"]["n"] <= 2 * 7
    assert g["eager"]["tokens_per_s"] > 0 and g["optimum"]["tokens_per_s"] > 0
    assert {"gpt2_tokens_per_s_vs_eager", "gpt2_tokens_per_s_vs_optimum"} <= set(results["ratios"])
    assert "dcgan_served_minus_inprocess_p50_ms" in results["ratios"]
    from benchmarks.peers import PEERS

    peer = g["peers"]["ctranslate2_int8"]
    if PEERS["ctranslate2_int8"].missing() is None:  # installed: the same ids, then the long prompt
        assert "skipped" not in peer, peer["skipped"]
        assert peer["itl_ms"]["n"] == 2 * 7 and peer["prompt_tokens"] == 8
        assert g["long"]["peers"]["ctranslate2_int8"]["prompt_tokens"] == 64
        assert "gpt2_tokens_per_s_vs_best_peer" in results["ratios"]
        # served and peer again in a second round: the ratio is their median, with its spread
        assert len(g["peer_rounds"]["rounds"]) == 2 and g["peer_rounds"]["peer"] == "ctranslate2_int8"
        assert all(x["served_ttft_ms"] > 0 and x["peer_ttft_ms"] > 0 for x in g["peer_rounds"]["rounds"])
        r = results["ratios"]
        assert r["gpt2_tokens_per_s_vs_best_peer_min"] <= r["gpt2_tokens_per_s_vs_best_peer"]
        assert r["gpt2_tokens_per_s_vs_best_peer"] <= r["gpt2_tokens_per_s_vs_best_peer_max"]
    # one stream and two again, in turns: the batching gain is their rounds' median
    scaling = g["scaling_rounds"]
    assert scaling["concurrency"] == 2 and len(scaling["rounds"]) == 2
    assert all(r["c1"] > 0 and r["c2"] > 0 for r in scaling["rounds"])
    gains = sorted(r["c2"] / r["c1"] for r in scaling["rounds"])
    assert results["ratios"]["gpt2_aggregate_c2_vs_c1"] == pytest.approx(sum(gains) / 2, abs=2e-3)
    # each round timed the served graph's offline steps at batch 1 and 2 right after it
    assert all(r["step1_ms"] > 0 and r["step2_ms"] > 0 for r in scaling["rounds"])
    shares = sorted((r["c2"] / r["c1"]) / (2 * r["step1_ms"] / r["step2_ms"]) for r in scaling["rounds"])
    assert results["ratios"]["gpt2_aggregate_c2_vs_step_ceiling"] == pytest.approx(sum(shares) / 2, abs=2e-3)
    # one stream and two through the OpenAI frontend (a process of its own) and over gRPC, in turns
    openai = g["openai"]
    assert openai["concurrency"] == 2 and len(openai["rounds"]) == 2
    assert all(r[f"{p}_c{c}"] > 0 for r in openai["rounds"] for p in ("grpc", "openai") for c in (1, 2))
    assert all(r["openai_ttft_ms"] > 0 and r["grpc_ttft_ms"] > 0 for r in openai["rounds"])
    assert {"gpt2_openai_vs_grpc_c2_tokens_per_s", "gpt2_openai_minus_grpc_ttft_ms"} <= set(results["ratios"])
    long, mixed = g["long"], g["mixed"]
    assert long["prompt_tokens"] == 64 and long["served"]["2"]["requests"] == 4
    # long and short streams at 2, back to back, twice (--scaling-rounds 2)
    assert long["rounds"]["concurrency"] == 2 and len(long["rounds"]["itl_p50_ms"]) == 2
    assert all(x["long"] > 0 and x["short"] > 0 for x in long["rounds"]["itl_p50_ms"])
    assert mixed["long_requests"] == 2 and mixed["long_ttft_ms"]["n"] == 2 and mixed["short"]["requests"] >= 2
    assert mixed["short_itl_other_ms"]["n"] + mixed["short_itl_during_long_prefill_ms"]["n"] >= 2
    # many users at once (no resident memory with --url: the server is not this process's),
    # and the engine probes on the export's OpenVINO variant, with its KV-cache measurement
    many = g["many_users"]
    assert many["requests"] == 4 and many["server_rss_mib"] == {"before": None, "after": None}
    probe = g["engine_probe"]
    assert probe["variant"] == "ov-fp32" and probe["kv_cache"]["choice"] in ("f32", "u8")
    assert probe["shared_prefix"]["prefix_caching on"]["hit_tokens"] > 0
    # the served variant is ONNX Runtime's: its slots' prefix reuse probed on their own
    served = probe["served"]
    assert served["variant"] == "fp32" and served["prefix"]["identical_tokens"]
    # rows moved down into emptied slots: fewer padding rows computed than without
    moves = served["moves"]
    assert moves["on"]["rows_moved"] > 0 and moves["off"]["rows_moved"] == 0
    assert moves["on"]["padding_share"] < moves["off"]["padding_share"]
    assert (
        served["shared_prefix"]["prefix_caching on"]["hit_tokens"]
        >= 31 * served["shared_prefix"]["shared_tokens"]
    )
    engine_ratios = {
        "gpt2_engine_blocks_vs_slots_c64_tokens_per_s",
        "gpt2_engine_prefix_second_vs_first_ttft",
        "gpt2_engine_shared_prefix_ttft_on_vs_off",
        "gpt2_engine_mixed_call_vs_two_calls",
        "gpt2_u8_cache_step_long_vs_short_b8",
        "gpt2_engine_structured_b8_vs_plain",
        "gpt2_served_runner_shared_prefix_ttft_on_vs_off",
    }
    assert engine_ratios <= set(results["ratios"])
    # both exported variants against their read floors (served figures need not be fast)
    assert set(g["read_floors"]) == {"fp32", "int8"} and g["memory_bandwidth_1gib"]["gb_per_s"] > 0
    assert all(r["step_over_floor"]["1gib"] > 0 for f in g["read_floors"].values() for r in f["rows"])
    assert (tmp_path / "out" / "results.md").is_file() and (tmp_path / "out" / "gpt2.png").is_file()
