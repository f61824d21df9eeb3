"""Benchmark reporting and the CI gate (the measurements themselves run in `aigc bench`)."""

from __future__ import annotations

import json

import pytest

from aigc.errors import BenchmarkError, ConfigError
from benchmarks import report
from benchmarks.api import BenchOptions


def _results() -> dict:
    served = {
        c: {
            "concurrency": int(c),
            "requests": 4,
            "ttft_ms": {"p50": t, "p90": t, "p99": t},
            "itl_ms": {"p50": 8.0, "p90": 9.0, "p99": 12.0},
            "aggregate_tokens_per_s": agg,
            "per_stream_tokens_per_s": per,
        }
        for c, t, agg, per in (("1", 40.0, 120.0, 118.0), ("4", 90.0, 200.0, 50.0))
    }
    base = {"ttft_ms": {"p50": 90.0}, "itl_ms": {"p50": 45.0}, "tokens_per_s": 20.0}
    results = {
        "env": {"cpu": "test cpu", "cores": 2, "threads": 2, "gpu": False},
        "config": {"prompt_tokens": 16, "new_tokens": 64},
        "gpt2": {
            "model": "m",
            "variant": "int4",
            "served": served,
            "eager": base,
            "optimum": dict(base, tokens_per_s=30.0),
        },
        "images": {
            "dcgan": {
                "served_ms": {"p50": 1.0, "p90": 1.5, "p99": 2.0},
                "onnxruntime_ms": {"p50": 0.3, "p90": 0.4, "p99": 0.5},
                "eager_ms": {"p50": 1.2, "p90": 1.3, "p99": 1.4},
                "throughput_vs_concurrency": {"1": 800.0, "4": 1000.0},
                "throughput_vs_batch": {"1": 700.0, "8": 3000.0},
            }
        },
    }
    results["ratios"] = report.ratios(results)
    return results


def test_ratios_are_measured_side_by_side():
    r = _results()["ratios"]
    assert r["gpt2_tokens_per_s_vs_eager"] == pytest.approx(118.0 / 20.0, rel=1e-3)
    assert r["gpt2_tokens_per_s_vs_optimum"] == pytest.approx(118.0 / 30.0, rel=1e-3)
    assert r["gpt2_aggregate_c4_vs_c1"] == pytest.approx(200.0 / 120.0, rel=1e-3)
    assert r["dcgan_served_minus_inprocess_p50_ms"] == pytest.approx(0.7)


def test_gate_fails_above_and_passes_below_what_was_measured():
    results = _results()
    measured = results["ratios"]["gpt2_tokens_per_s_vs_eager"]
    report.gate(results, {"gpt2_tokens_per_s_vs_eager": {"min": measured - 0.5}})
    with pytest.raises(BenchmarkError, match="gpt2_tokens_per_s_vs_eager .* below the threshold"):
        report.gate(results, {"gpt2_tokens_per_s_vs_eager": {"min": measured + 0.5}})
    with pytest.raises(BenchmarkError, match="above the threshold"):
        report.gate(results, {"dcgan_served_minus_inprocess_p50_ms": {"max": 0.5}})
    with pytest.raises(BenchmarkError, match="not measured"):
        report.gate(results, {"no_such_ratio": {"min": 1}})


def test_committed_thresholds_parse_and_name_measured_ratios():
    thresholds = report.load_thresholds()
    names = [k for k in thresholds if not k.startswith("_")]
    assert names and set(names) <= set(_results()["ratios"])


def test_table_and_plots_are_written(tmp_path):
    results = _results()
    results["env"]["packages"] = {}
    report.write(results, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "| served (Triton gRPC stream) | 1 |" in md and "PyTorch eager" in md and "Optimum" in md
    assert json.loads((tmp_path / "results.json").read_text())["ratios"] == results["ratios"]
    for png in ("gpt2.png", "images.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "field, value, flag",
    [
        ("new_tokens", 0, "--new-tokens"),
        ("concurrency", (0,), "--concurrency"),
        ("threads", 0, "--threads"),
        ("baselines", ("vllm",), "--baselines"),
        ("prompt_tokens", 9999, "--prompt-tokens"),
    ],
)
def test_bad_flags_are_named(field, value, flag):
    opts = BenchOptions()
    setattr(opts, field, value)
    with pytest.raises(ConfigError, match=flag):
        opts.validate()


def test_url_needs_the_checkpoint_for_the_baselines():
    with pytest.raises(ConfigError, match="--gpt2"):
        BenchOptions(url="127.0.0.1:8001").validate()
