"""Synthetic `aigc bench` results for the tests of what reads them (ratios, the gate, the
tables and plots, the genai-perf rows): the figures a quick run on a 2-core CPU writes, with
a decode profile, read floors, long and mixed workloads, dcgan and, optionally, peers."""

from __future__ import annotations

from benchmarks import ratios


def _served(ttft: float, agg: float, per: float, c: int) -> dict:
    return {
        "concurrency": c,
        "requests": 4,
        "ttft_ms": {"p50": ttft, "p90": ttft, "p99": ttft},
        "itl_ms": {"p50": 8.0, "p90": 9.0, "p99": 12.0},
        "aggregate_tokens_per_s": agg,
        "per_stream_tokens_per_s": per,
        "responses_per_token": 1.0 if c < 8 else 0.75,
    }


def sample_profile(b1: float, b4: float, b8: float, growth: float) -> dict:
    """A decode profile as `aigc export` writes it: batch -> cached tokens -> ms."""
    return {
        "past_lens": [48, 496],
        "step_ms": {
            str(b): {"48": ms, "496": round(ms * growth, 3)} for b, ms in ((1, b1), (4, b4), (8, b8))
        },
        "prefill_ms": {"16": 19.0, "128": 150.0},
        "threads": 2,
    }


# what `_read_floors` gives for a variant: weights 124 MB, the 124M model's fp32 cache
KV_PER_TOKEN = 2 * 12 * 12 * 64 * 4


def _mixed() -> dict:
    return {
        "short_prompt_tokens": 16,
        "short_new_tokens": 128,
        "long_prompt_tokens": 512,
        "long_new_tokens": 4,
        "streams": 4,
        "arrivals": 5,
        "period_s": 3.0,
        "short": {"requests": 12, "aggregate_tokens_per_s": 150.0, "per_stream_tokens_per_s": 38.0},
        "short_itl_during_long_prefill_ms": {"p50": 40.0, "p90": 48.0, "p99": 60.0, "n": 300},
        "short_itl_other_ms": {"p50": 20.0, "p90": 24.0, "p99": 30.0, "n": 900},
        "long_ttft_ms": {"p50": 1500.0, "p90": 1700.0, "p99": 1800.0, "n": 5},
        "long_requests": 5,
    }


def _engine_probe() -> dict:
    """What `benchmarks.engine_probe.probe_export` and the export's `kv_cache` give."""
    users = {
        "tokens_per_s": 260.0,
        "ttft_p50_s": 7.2,
        "kv_mib": 576,
        "preemptions": 0,
        "finished": ["length"],
    }
    return {
        "variant": "ov-int4",
        "mixed": {
            "4 decode rows + 16-token chunk": {
                "two_calls_ms": 45.0,
                "one_mixed_call_ms": 38.0,
                "ratio": 0.844,
            }
        },
        "users": {
            "8 slots": users,
            "64 sequences, same MiB": dict(users, tokens_per_s=403.0, ttft_p50_s=0.75),
        },
        "prefix": {
            "prefix_caching off": {"ttft_ms": [636.7, 632.1, 618.0], "hit_tokens": 0},
            "prefix_caching on": {"ttft_ms": [659.1, 61.4, 62.2], "hit_tokens": 960},
            "second_vs_first_ttft_on": 0.093,
            "identical_tokens": True,
        },
        "shared_prefix": {
            "prefix_caching off": {"others_ttft_p50_ms": 5000.0, "tokens_per_s": 100.0},
            "prefix_caching on": {"others_ttft_p50_ms": 1000.0, "tokens_per_s": 160.0},
            "others_ttft_on_vs_off": 0.2,
            "tokens_per_s_on_vs_off": 1.6,
            "shared_tokens": 256,
            "requests": 32,
        },
        "served": {  # the served slot runner's own prefix probes (ONNX Runtime)
            "variant": "int4",
            "prefix": {
                "prefix_caching off": {"ttft_ms": [900.0, 890.0, 880.0], "hit_tokens": 0},
                "prefix_caching on": {"ttft_ms": [910.0, 30.0, 29.0], "hit_tokens": 1022},
                "second_vs_first_ttft_on": 0.033,
                "identical_tokens": True,
            },
            "shared_prefix": {
                "prefix_caching off": {"others_ttft_p50_ms": 6000.0, "tokens_per_s": 90.0},
                "prefix_caching on": {"others_ttft_p50_ms": 600.0, "tokens_per_s": 150.0},
                "others_ttft_on_vs_off": 0.1,
                "tokens_per_s_on_vs_off": 1.667,
                "shared_tokens": 256,
                "requests": 32,
            },
            "moves": {
                "requests": 32,
                "new_tokens": 1200,
                "on": {"tokens_per_s": 300.0, "padding_share": 0.05, "rows_moved": 20},
                "off": {"tokens_per_s": 200.0, "padding_share": 0.45, "rows_moved": 0},
            },
        },
        "structured": {
            "1": {"plain_ms_per_token": 8.4, "constrained_ms_per_token": 8.3, "ratio": 0.988},
            "8": {"plain_ms_per_token": 3.5, "constrained_ms_per_token": 3.64, "ratio": 1.04},
        },
        "kv_cache": {
            "choice": "u8",
            "f32": {"step_ms": {"48": 27.0, "496": 35.0}, "bytes_per_token": 73728},
            "u8": {"step_ms": {"48": 26.5, "496": 30.0}, "bytes_per_token": 21888, "passed": True},
        },
    }


def sample_results() -> dict:
    base = {"ttft_ms": {"p50": 90.0}, "itl_ms": {"p50": 45.0, "p90": 50.0, "p99": 60.0}, "tokens_per_s": 20.0}
    int8 = sample_profile(7.5, 12.0, 17.0, 1.5)
    results = {
        "env": {"cpu": "test cpu", "cores": 2, "threads": 2, "gpu": False, "gpus": [], "packages": {}},
        "config": {"prompt_tokens": 16, "new_tokens": 64, "threads": 2, "quick": True, "repeats": 3},
        "gpt2": {
            "model": "runs/bench-cache/gpt2-124m",
            "variant": "int8",
            "served": {
                "1": _served(25.0, 120.0, 118.0, 1),
                "4": _served(90.0, 200.0, 50.0, 4),
                "8": _served(150.0, 360.0, 45.0, 8),
            },
            "decode_profile": int8,
            "decode_profiles": {"int8": int8, "int4": sample_profile(5.8, 12.6, 21.4, 1.3)},
            "memory_bandwidth_1gib": {"bytes": 2**30, "threads": 2, "gb_per_s": 25.0},
            "read_floors": {
                "int8": dict(
                    ratios.read_floors(int8, 124_000_000, KV_PER_TOKEN, {"1gib": 25.0, "model": 40.0}),
                    bandwidth_at_model_size={"bytes": 124_000_000, "threads": 2, "gb_per_s": 40.0},
                )
            },
            "long": {
                "prompt_tokens": 512,
                "new_tokens": 128,
                "served": {
                    "1": _served(700.0, 70.0, 70.0, 1),
                    "8": dict(
                        _served(6000.0, 160.0, 20.0, 8), itl_ms={"p50": 12.0, "p90": 14.0, "p99": 20.0}
                    ),
                },
            },
            "many_users": dict(
                _served(2000.0, 450.0, 7.0, 64), server_rss_mib={"before": 900.0, "after": 905.0}
            ),
            "engine_probe": _engine_probe(),
            "mixed": _mixed(),
            "eager": base,
            "optimum": dict(base, tokens_per_s=30.0),
        },
        "images": {
            "dcgan": {
                "variant": "fp32",
                "inprocess_variant": "fp32",
                "served_ms": {"p50": 1.0, "p90": 1.5, "p99": 2.0},
                "onnxruntime_ms": {"p50": 0.3, "p90": 0.4, "p99": 0.5},
                "eager_ms": {"p50": 1.2, "p90": 1.3, "p99": 1.4},
                "throughput_vs_concurrency": {
                    "1": {"images_per_s": 800.0, "latency_ms": {"p50": 1.2, "mean": 1.25}},
                    "4": {"images_per_s": 1000.0, "latency_ms": {"p50": 3.9}},
                },
                "throughput_vs_batch": {
                    "1": {"images_per_s": 700.0, "latency_ms": {"p50": 1.4}},
                    "8": {"images_per_s": 3000.0, "latency_ms": {"p50": 2.6}},
                },
                "onnxruntime_images_per_s_vs_batch": {"1": 3000.0, "8": 6000.0},
            }
        },
    }
    results["ratios"] = ratios.ratios(results)
    return results


def sample_peer(tokens_per_s: float, ttft: float, itl: float, name: str = "openvino_int4") -> dict:
    from benchmarks.peers import PEERS

    return {
        "runtime": PEERS[name].label,
        "package": PEERS[name].package,
        "version": "1.0",
        "weights": PEERS[name].weights,
        "file_bytes": 80_000_000,
        "conversion": {"equivalent": "optimum-cli export openvino --weight-format int4"},
        "properties": {"INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "f32"},
        "prompt_tokens": 16,
        "new_tokens": 64,
        "ttft_ms": {"p50": ttft, "p90": ttft, "p99": ttft, "n": 3},
        "itl_ms": {"p50": itl, "p90": itl * 1.1, "p99": itl * 1.5, "n": 189},
        "tokens_per_s": tokens_per_s,
        "repeats": 3,
    }


def sample_results_with_peers() -> dict:
    results = sample_results()
    g = results["gpt2"]
    g["peers"] = {
        "openvino_int4": sample_peer(300.0, 9.0, 3.1),
        "llamacpp_q4_0": {"skipped": "llama_cpp is not installed (`pip install -e .[llamacpp]`)"},
        "ctranslate2_int8": sample_peer(85.0, 25.0, 11.5, "ctranslate2_int8"),
    }
    g["long"]["peers"] = {"openvino_int4": sample_peer(150.0, 120.0, 6.0)}
    results["ratios"] = ratios.ratios(results)
    return results
