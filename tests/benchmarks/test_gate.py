"""The CI gate: thresholds on the ratios, the committed `thresholds.json` on a synthetic run
and the regressions it catches, bad thresholds named by their flag."""

from __future__ import annotations

import pytest
from bench_samples import sample_peer, sample_profile, sample_results

from aigc.errors import BenchmarkError, ConfigError
from benchmarks import gate, ratios


def test_gate_fails_above_and_passes_below_what_was_measured():
    results = sample_results()
    measured = results["ratios"]["gpt2_tokens_per_s_vs_eager"]
    gate.gate(results, {"gpt2_tokens_per_s_vs_eager": {"min": measured - 0.5}})
    gate.gate(results, {"gpt2_tokens_per_s_vs_eager": measured - 0.5})  # a bare number is a minimum
    with pytest.raises(BenchmarkError, match="gpt2_tokens_per_s_vs_eager = .* below the threshold"):
        gate.gate(results, {"gpt2_tokens_per_s_vs_eager": {"min": measured + 0.5}})
    with pytest.raises(BenchmarkError, match="above the threshold"):
        gate.gate(results, {"dcgan_served_minus_inprocess_p50_ms": {"max": 0.5}})
    with pytest.raises(BenchmarkError, match="not measured"):
        gate.gate(results, {"no_such_ratio": {"min": 1}})


def test_gate_lists_every_failing_ratio():
    results = sample_results()
    too_high = {k: {"min": v * 2} for k, v in results["ratios"].items() if v > 0}
    with pytest.raises(BenchmarkError) as info:
        gate.gate(results, too_high)
    assert all(name in str(info.value) for name in too_high)


def _gated_results() -> dict:
    """The synthetic run with the one peer CI installs that is quickest to convert."""
    results = sample_results()
    results["gpt2"]["peers"] = {"ctranslate2_int8": sample_peer(85.0, 25.0, 11.5, "ctranslate2_int8")}
    results["ratios"] = ratios.ratios(results)
    return results


def test_committed_thresholds_parse_and_name_measured_ratios():
    thresholds = gate.load_thresholds()
    names = [k for k in thresholds if not k.startswith("_")]
    assert names and set(names) <= set(_gated_results()["ratios"])
    # the committed bounds hold on the synthetic run (well above every lower bound)
    assert gate.check_gate(_gated_results()["ratios"], thresholds) == []
    # ...and catch requests stalling in Triton's queue: a few 500 ms waits pull the mean up
    stalled = _gated_results()
    stalled["images"]["dcgan"]["throughput_vs_concurrency"]["1"]["latency_ms"]["mean"] = 6.0
    failures = gate.check_gate(ratios.ratios(stalled), thresholds)
    assert [f.split(" = ")[0] for f in failures] == ["dcgan_latency_p50_over_mean_c1"]


@pytest.mark.parametrize(
    "change, failing",
    [
        # the step at a long cache costs far more than at a short one (a cache copy per step)
        (
            lambda g: g["decode_profile"].update(sample_profile(7.5, 12.0, 17.0, 4.0)),
            "gpt2_step_long_vs_short_b8",
        ),
        # 8 streams get no more than 1 does, though the batch-8 step allows 3.5x
        (
            lambda g: g["served"]["8"].update(aggregate_tokens_per_s=120.0),
            "gpt2_aggregate_c8_vs_step_ceiling",
        ),
        # the first token comes 80 ms after the prompt's 19 ms prefill (still 3x eager's TTFT)
        (
            lambda g: (g["served"]["1"]["ttft_ms"].update(p50=99.0), g["eager"]["ttft_ms"].update(p50=300.0)),
            "gpt2_ttft_minus_prefill_ms",
        ),
        # one stream at 0.4 of the best peer's tokens/s (a served path that lost its speed)
        (
            lambda g: g["peers"]["ctranslate2_int8"].update(tokens_per_s=290.0),
            "gpt2_tokens_per_s_vs_best_peer",
        ),
    ],
)
def test_committed_profile_gates_catch_regressions(change, failing):
    thresholds = gate.load_thresholds()
    results = _gated_results()
    change(results["gpt2"])
    failures = gate.check_gate(ratios.ratios(results), thresholds)
    assert [f.split(" = ")[0] for f in failures] == [failing]


def test_bad_thresholds_name_the_flag(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text('{"gpt2_tokens_per_s_vs_eager": {"at_least": 2}}')
    with pytest.raises(ConfigError, match="--gate"):
        gate.load_thresholds(bad)
    with pytest.raises(ConfigError, match="--gate"):
        gate.load_thresholds(tmp_path / "missing.json")
