"""Benchmark reporting, the CI gate, flag validation and the timing loops on fakes.

The measurements themselves run in `aigc bench`; one live quick run against the shared
test server (tiny models) checks that the whole path holds together.
"""

from __future__ import annotations

import json
import time

import pytest

from aigc.errors import BenchmarkError, ConfigError
from benchmarks import gate, measure, ratios, report, tables
from benchmarks.options import BenchOptions
from benchmarks.text import build_prompt


def _served(ttft: float, agg: float, per: float, c: int) -> dict:
    return {
        "concurrency": c,
        "requests": 4,
        "ttft_ms": {"p50": ttft, "p90": ttft, "p99": ttft},
        "itl_ms": {"p50": 8.0, "p90": 9.0, "p99": 12.0},
        "aggregate_tokens_per_s": agg,
        "per_stream_tokens_per_s": per,
    }


def _profile(b1: float, b4: float, b8: float, growth: float) -> dict:
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


def _results() -> dict:
    base = {"ttft_ms": {"p50": 90.0}, "itl_ms": {"p50": 45.0, "p90": 50.0, "p99": 60.0}, "tokens_per_s": 20.0}
    int8 = _profile(7.5, 12.0, 17.0, 1.5)
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
            "decode_profiles": {"int8": int8, "int4": _profile(5.8, 12.6, 21.4, 1.3)},
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
                "served": {"1": _served(700.0, 70.0, 70.0, 1), "8": _served(6000.0, 160.0, 20.0, 8)},
            },
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


def test_ratios_are_measured_side_by_side():
    r = _results()["ratios"]
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
    r = _results()["ratios"]
    # served gain at 8 streams over the gain the batch-8 step allows
    assert r["gpt2_aggregate_c8_vs_step_ceiling"] == pytest.approx(
        (360.0 / 120.0) / (8 * 7.5 / 17.0), rel=1e-3
    )
    assert r["gpt2_step_long_vs_short_b8"] == pytest.approx(1.5, rel=1e-3)
    assert r["gpt2_step_long_vs_short_b1"] == pytest.approx(1.5, rel=1e-3)
    assert r["gpt2_ttft_minus_prefill_ms"] == pytest.approx(25.0 - 19.0)
    assert r["gpt2_step_b1_vs_read_floor"] == pytest.approx(
        7.5 / ((124e6 + KV_PER_TOKEN * 48) / 25e6), rel=1e-3
    )
    assert r["gpt2_long_aggregate_c8_vs_c1"] == pytest.approx(160.0 / 70.0, rel=1e-3)
    assert r["gpt2_mixed_itl_p99_during_long_vs_other"] == pytest.approx(2.0)


def test_profile_ratios_follow_the_prompt_length():
    results = _results()
    results["config"].update(prompt_tokens=128, new_tokens=64)  # cache 160 on average, 128-token prefill
    r = ratios.ratios(results)
    step1, step8 = 7.5 * (1 + 0.5 * (160 - 48) / 448), 17.0 * (1 + 0.5 * (160 - 48) / 448)
    assert r["gpt2_step_ceiling_c8_vs_c1"] == pytest.approx(8 * step1 / step8, rel=1e-3)
    assert r["gpt2_ttft_minus_prefill_ms"] == pytest.approx(25.0 - 150.0)


def test_profile_ratios_skip_an_old_flat_profile():
    results = _results()
    results["gpt2"]["decode_profile"] = {"step_ms": {"1": 7.5, "8": 17.0}, "prefill_ms": {"16": 19.0}}
    r = ratios.ratios(results)
    assert not {
        "gpt2_step_ceiling_c8_vs_c1",
        "gpt2_aggregate_c8_vs_step_ceiling",
        "gpt2_step_long_vs_short_b8",
    } & set(r)
    assert r["gpt2_aggregate_c8_vs_c1"] == pytest.approx(3.0)


def test_read_floor_arithmetic():
    profile = _profile(8.0, 12.0, 20.0, 1.5)
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


def test_step_read_bytes_leaves_out_gathered_tables(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from benchmarks.text import step_read_bytes

    wte = numpy_helper.from_array(np.zeros((50, 8), np.float32), "wte")  # gathered only: left out
    head = numpy_helper.from_array(np.zeros((8, 50), np.int8), "head")  # read whole by MatMul
    unused = numpy_helper.from_array(np.zeros(1000, np.float32), "unused")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["wte", "input_ids"], ["h"]),
            helper.make_node("Cast", ["head"], ["head_f"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["h", "head_f"], ["logits"]),
            helper.make_node("Identity", ["past_key_0"], ["present_key_0"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 1]),
            helper.make_tensor_value_info("past_key_0", TensorProto.FLOAT16, [1, 2, 4, 4]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 50]),
            helper.make_tensor_value_info("present_key_0", TensorProto.FLOAT16, [1, 2, 4, 4]),
        ],
        [wte, head, unused],
    )
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx")
    assert step_read_bytes(tmp_path / "m.onnx") == (8 * 50, 2)  # int8 head; fp16 cache
    onnx.save(helper.make_model(graph), tmp_path / "ext.onnx", save_as_external_data=True, size_threshold=0)
    assert step_read_bytes(tmp_path / "ext.onnx") == (8 * 50, 2)


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


def test_gate_fails_above_and_passes_below_what_was_measured():
    results = _results()
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
    results = _results()
    too_high = {k: {"min": v * 2} for k, v in results["ratios"].items() if v > 0}
    with pytest.raises(BenchmarkError) as info:
        gate.gate(results, too_high)
    assert all(name in str(info.value) for name in too_high)


def _gated_results() -> dict:
    """The synthetic run with the one peer CI installs that is quickest to convert."""
    results = _results()
    results["gpt2"]["peers"] = {"ctranslate2_int8": _peer(85.0, 25.0, 11.5, "ctranslate2_int8")}
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
        (lambda g: g["decode_profile"].update(_profile(7.5, 12.0, 17.0, 4.0)), "gpt2_step_long_vs_short_b8"),
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


def test_table_and_plots_are_written(tmp_path):
    results = _results()
    report.write(results, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "| served (Triton gRPC stream) | 1 | 118.0 | 120.0 | 6.00 | 4.00 | 25.0 |" in md
    assert "PyTorch eager" in md and "Optimum" in md and "| dcgan | ONNX Runtime in-process | fp32 |" in md
    assert "| gpt2_tokens_per_s_vs_eager | 5.9 |" in md
    # the decode profile: b1 and b8 at both cache lengths, their ratio, the prefills
    assert (
        "| variant | b1 @48 | b1 @496 | b8 @48 | b8 @496 | b8 @496 / @48 | prefill 16 | prefill 128 |" in md
    )
    assert "| int8 (served) | 7.50 | 11.25 | 17.00 | 25.50 | 1.50 | 19.0 | 150.0 |" in md
    assert "| int4 | 5.80 | 7.54 | 21.40 | 27.82 | 1.30 |" in md
    # the read floor at both bandwidths
    floor = (124e6 + KV_PER_TOKEN * 48) / 25e6, (124e6 + KV_PER_TOKEN * 48) / 40e6
    assert (
        f"| int8 | 48 | 127.5 | {floor[0]:.2f} / {floor[1]:.2f} | 7.50 | "
        f"{7.5 / floor[0]:.2f} / {7.5 / floor[1]:.2f} |" in md
    )
    assert "1 GiB 25.0 GB/s; at each variant's size int8 124 MB 40.0 GB/s" in md
    # the long workload and the mixed one
    assert "**Long requests**: 512-token prompt, 128 new tokens" in md
    assert "| served (Triton gRPC stream) | 8 | 20.0 | 160.0 | 6000.0 |" in md
    assert "**Mixed**: 4 streams of 16 → 128 tokens back to back while a 512-token prompt" in md
    assert (
        "| while a long prompt is prefilled (arrival to its first token) | 300 | 40.00 | 48.00 | 60.00 |"
        in md
    )
    assert "| the other gaps | 900 | 20.00 | 24.00 | 30.00 |" in md
    assert "Long requests' TTFT p50 / p90 / p99: 1500.0 / 1700.0 / 1800.0 ms" in md
    assert "| gpt2_step_long_vs_short_b8 | 1.5 |" in md and "| gpt2_ttft_minus_prefill_ms | 6.0 |" in md
    assert json.loads((tmp_path / "results.json").read_text())["ratios"] == results["ratios"]
    for png in ("gpt2.png", "gpt2-workloads.png", "images.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_table_without_long_workload_says_why(tmp_path):
    results = _results()
    g = results["gpt2"]
    for key in ("long", "mixed", "decode_profiles", "read_floors", "decode_profile"):
        del g[key]
    g["long_skipped"] = "long requests need 516 tokens; the context window is 128"
    results["ratios"] = ratios.ratios(results)
    md = tables.markdown(results)
    assert "Long and mixed workloads not measured: long requests need 516 tokens" in md
    assert "**Mixed**" not in md and "Decode profile" not in md
    report.write(results, tmp_path)
    assert not (tmp_path / "gpt2-workloads.png").exists()


def test_readme_section_is_replaced_between_markers(tmp_path):
    results = _results()
    out = tmp_path / "bench"
    report.write(results, out)
    readme = tmp_path / "README.md"
    readme.write_text("# title\n<!-- bench:start -->\nold table\n<!-- bench:end -->\nafter\n")
    report.write_readme(results, out, readme)
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# title\n") and text.endswith("after\n")
    assert "| gpt2_tokens_per_s_vs_eager |" in text and "docs/images/bench-gpt2.png" in text
    assert (tmp_path / "docs" / "images" / "bench-gpt2.png").is_file()
    readme.write_text("no markers")
    with pytest.raises(ConfigError, match="--write-readme"):
        report.check_readme(readme)


@pytest.mark.parametrize(
    "field, value, flag",
    [
        ("new_tokens", 0, "--new-tokens"),
        ("concurrency", (0,), "--concurrency"),
        ("batch_sizes", (100,), "--batch-sizes"),
        ("threads", 0, "--threads"),
        ("repeats", 0, "--repeats"),
        ("image_requests", 0, "--image-requests"),
        ("throughput_seconds", 0, "--throughput-seconds"),
        ("baselines", ("vllm",), "--baselines"),
        ("models", ("bert",), "--models"),
        ("prompt_tokens", 9999, "--prompt-tokens"),
        ("long_prompt_tokens", -1, "--long-prompt-tokens"),
        ("long_new_tokens", 0, "--long-new-tokens"),
        ("long_concurrency", (), "--long-concurrency"),
        ("mixed_streams", 65, "--mixed-streams"),
        ("mixed_new_tokens", 0, "--mixed-new-tokens"),
        ("mixed_arrivals", 0, "--mixed-arrivals"),
        ("mixed_period_s", 0, "--mixed-period"),
    ],
)
def test_bad_flags_are_named(field, value, flag):
    opts = BenchOptions()
    setattr(opts, field, value)
    with pytest.raises(ConfigError, match=flag):
        opts.validate()


def test_url_needs_the_checkpoint_for_the_baselines(tmp_path):
    from benchmarks.subjects import subjects

    opts = BenchOptions(url="127.0.0.1:8001", cache=tmp_path)
    with pytest.raises(ConfigError, match="--gpt2"):
        subjects(opts)


def test_cli_names_the_flag_and_exits_2(capsys, tmp_path):
    from aigc.cli import main

    assert main(["bench", "--new-tokens", "0", "--out", str(tmp_path)]) == 2
    assert "--new-tokens" in capsys.readouterr().err
    assert main(["bench", "--gate", str(tmp_path / "none.json"), "--out", str(tmp_path)]) == 2
    assert "--gate" in capsys.readouterr().err
    assert main(["bench", "--exports", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "--exports" in capsys.readouterr().err


def test_prompt_encodes_to_exactly_n_tokens():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = "The quick brown fox jumps over the lazy dog; naïve café déjà vu. " * 20
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, show_progress=False))
    for n in (1, 5, 16, 100, 512):
        assert len(tok.encode(build_prompt(tok, n, text)).ids) == n


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
    assert s["deltas_per_request"] == [3]


def test_quick_mode_is_small():
    opts = BenchOptions(quick=True).quick_mode()
    assert opts.concurrency == (1, 4, 8) and opts.batch_sizes == (1, 8) and opts.repeats <= 3
    assert opts.long_concurrency == (1,) and opts.mixed_arrivals == 2


# -- peer runtimes -------------------------------------------------------------------------


def _peer(tokens_per_s: float, ttft: float, itl: float, name: str = "openvino_int4") -> dict:
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


def _results_with_peers() -> dict:
    results = _results()
    g = results["gpt2"]
    g["peers"] = {
        "openvino_int4": _peer(300.0, 9.0, 3.1),
        "llamacpp_q4_0": {"skipped": "llama_cpp is not installed (`pip install -e .[llamacpp]`)"},
        "ctranslate2_int8": _peer(85.0, 25.0, 11.5, "ctranslate2_int8"),
    }
    g["long"]["peers"] = {"openvino_int4": _peer(150.0, 120.0, 6.0)}
    results["ratios"] = ratios.ratios(results)
    return results


def test_peer_ratios_are_against_the_fastest_peer():
    r = _results_with_peers()["ratios"]
    # served c=1: 118 tok/s per stream, TTFT 25 ms; 8 streams 360 tok/s; the best peer 300 tok/s, 9 ms
    assert r["gpt2_tokens_per_s_vs_best_peer"] == pytest.approx(118.0 / 300.0, rel=1e-3)
    assert r["gpt2_ttft_minus_best_peer_ms"] == pytest.approx(25.0 - 9.0)
    assert r["gpt2_aggregate_c8_vs_best_peer"] == pytest.approx(360.0 / 300.0, rel=1e-3)
    # long: served 70 tok/s, TTFT 700 ms at one stream
    assert r["gpt2_long_tokens_per_s_vs_best_peer"] == pytest.approx(70.0 / 150.0, rel=1e-3)
    assert r["gpt2_long_ttft_minus_best_peer_ms"] == pytest.approx(700.0 - 120.0)
    # the old ratios are untouched; without peers there is no peer ratio
    assert r["gpt2_tokens_per_s_vs_eager"] == pytest.approx(118.0 / 20.0, rel=1e-3)
    assert not any("peer" in k for k in _results()["ratios"])


def test_every_peer_skipped_gives_no_peer_ratio():
    results = _results()
    results["gpt2"]["peers"] = {"openvino_int4": {"skipped": "conversion failed: no disk"}}
    assert not any("peer" in k for k in ratios.ratios(results))
    assert "| OpenVINO GenAI `LLMPipeline` int4: skipped (conversion failed: no disk) |" in tables.markdown(
        dict(results, ratios=ratios.ratios(results))
    )


def test_peer_rows_and_plots(tmp_path):
    results = _results_with_peers()
    report.write(results, tmp_path)
    md = (tmp_path / "results.md").read_text()
    # beside the baselines: tok/s, x eager (20) and x optimum (30), TTFT, ITL
    assert (
        "| OpenVINO GenAI `LLMPipeline` int4 | 1 | 300.0 | 300.0 | 15.00 | 10.00 | 9.0 | 3.10 / 3.41 / 4.65 |"
        in md
    )
    assert "| CTranslate2 `Generator` int8 | 1 | 85.0 | 85.0 |" in md
    assert "| llama.cpp (llama-cpp-python) q4_0: skipped (llama_cpp is not installed" in md
    assert (
        "| served vs best peer (OpenVINO GenAI `LLMPipeline` int4): served / peer, TTFT served − peer | "
        "1 / 8 | 0.39× | 1.20× (8 streams) | - | - | +16.0 | p50 2.58× |" in md
    )
    assert "| openvino_int4 | openvino-genai 1.0 | int4 asym, groups of 128" in md
    assert "INFERENCE_PRECISION_HINT=f32" in md
    # the long workload's peer row at one stream
    assert "| OpenVINO GenAI `LLMPipeline` int4 | 1 | 150.0 | 150.0 | 120.0 | 6.00 / 6.60 / 9.00 |" in md
    assert "| gpt2_tokens_per_s_vs_best_peer | 0.393 |" in md
    assert (tmp_path / "gpt2.png").read_bytes()[:4] == b"\x89PNG"


def test_peers_flag_resolves_names_and_names_the_allowed_values():
    from benchmarks.peers import PEERS, QUICK, resolve

    assert resolve(None) == tuple(PEERS) and resolve(None, quick=True) == QUICK
    assert resolve(("ctranslate2_int8", "openvino")) == ("openvino_int8", "openvino_int4", "ctranslate2_int8")
    assert resolve(("none",)) == () and resolve(("all",)) == tuple(PEERS)
    with pytest.raises(ConfigError, match=r"--peers: unknown peer 'vllm'; allowed: all, none, openvino.*"):
        resolve(("vllm",))
    with pytest.raises(ConfigError, match="--peers"):
        resolve(("none", "openvino_int4"))
    assert BenchOptions(quick=True).peer_names() == QUICK
    assert BenchOptions(peers=("llamacpp",), quick=True).peer_names() == ("llamacpp_q8_0", "llamacpp_q4_0")
    with pytest.raises(ConfigError, match="--peers"):
        BenchOptions(peers=("openvino_int3",)).validate()


def test_cli_peers_flag(capsys, tmp_path):
    from aigc.cli import main

    assert main(["bench", "--peers", "openvino,vllm", "--out", str(tmp_path)]) == 2
    assert "--peers: unknown peer 'vllm'" in capsys.readouterr().err


def _fake_checkpoint(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "gpt2", "n_positions": 128}')
    (folder / "model.safetensors").write_bytes(b"weights v1")
    (folder / "tokenizer.json").write_text("{}")
    return folder


def _fake_peer(convert, modules=("json",)):
    from benchmarks.peers import Peer

    return Peer(
        name="fake",
        family="fake",
        label="Fake runtime",
        package="fake-runtime",
        modules=modules,
        install="`pip install fake-runtime`",
        weights="int8",
        settings={"quantization": "int8"},
        convert=convert,
        load=lambda folder, checkpoint, threads: None,
        files=("model.bin",),
    )


def test_checkpoint_hash_follows_weights_config_and_tokenizer(tmp_path):
    from benchmarks.peers import checkpoint_hash

    ckpt = _fake_checkpoint(tmp_path / "ckpt")
    first = checkpoint_hash(ckpt)
    assert len(first) == 16 and int(first, 16) >= 0
    (ckpt / "heldout.txt").write_text("not read by a conversion")
    assert checkpoint_hash(ckpt) == first
    (ckpt / "model.safetensors").write_bytes(b"weights v2")
    second = checkpoint_hash(ckpt)
    assert second != first
    (ckpt / "config.json").write_text('{"model_type": "gpt2", "n_positions": 256}')
    assert checkpoint_hash(ckpt) not in (first, second)
    with pytest.raises(ConfigError, match="--gpt2"):
        checkpoint_hash(tmp_path)


def test_conversions_are_cached_by_hash_and_written_atomically(tmp_path):
    from dataclasses import replace

    from benchmarks.peers import cached, peer_folder, prepare

    calls = []

    def convert(checkpoint, out, settings, threads):
        calls.append(out)
        (out / "model.bin").write_bytes(b"converted")
        return {"threads": threads}

    peer = _fake_peer(convert)
    ckpt = _fake_checkpoint(tmp_path / "ckpt")
    folder = peer_folder(tmp_path / "cache", "0123456789abcdef", "fake")
    assert folder == tmp_path / "cache" / "peers" / "0123456789abcdef" / "fake"
    first = prepare(peer, ckpt, folder, threads=1)
    assert first["cached"] is False and first["applied"] == {"threads": 1}
    assert calls[0] != folder and not calls[0].exists()  # converted beside, then renamed
    assert (folder / "model.bin").read_bytes() == b"converted"
    again = prepare(peer, ckpt, folder, threads=1)
    assert again["cached"] is True and len(calls) == 1
    assert again["settings"] == first["settings"] == {"format": 1, "peer": "fake", "quantization": "int8"}
    # other conversion settings: converted again
    other = replace(peer, settings={"quantization": "int4"})
    assert cached(other, folder) is None
    assert prepare(other, ckpt, folder, threads=1)["cached"] is False and len(calls) == 2

    def broken(checkpoint, out, settings, threads):
        (out / "partial.bin").write_bytes(b"half")
        raise RuntimeError("converter crashed")

    broken_folder = folder.with_name("broken")
    with pytest.raises(RuntimeError, match="converter crashed"):
        prepare(_fake_peer(broken), ckpt, broken_folder, threads=1)
    assert not broken_folder.exists() and sorted(p.name for p in folder.parent.iterdir()) == ["fake"]


def test_missing_peer_package_is_reported_as_skipped(tmp_path, caplog):
    from benchmarks import peers

    peer = _fake_peer(lambda *a: {}, modules=("json", "aigc_no_such_runtime"))
    ckpt = _fake_checkpoint(tmp_path / "ckpt")
    work = [{"key": "short", "ids": [1, 2, 3], "new_tokens": 4, "repeats": 1}]
    with caplog.at_level("WARNING", logger="benchmarks.peers"):
        got = peers.bench(("fake",), ckpt, tmp_path / "cache", 1, work, registry={"fake": peer})
    assert got == {"fake": {"skipped": "aigc_no_such_runtime is not installed (`pip install fake-runtime`)"}}
    assert "peer fake skipped: aigc_no_such_runtime is not installed" in caplog.text
    assert not (tmp_path / "cache").exists()  # nothing converted


def test_a_crashed_child_is_a_reason_not_an_error():
    import subprocess

    from benchmarks.peers import _child_reason

    crashed = subprocess.CompletedProcess([], -11, "", "loading model\nggml_amx: illegal instruction\n")
    assert _child_reason(crashed) == "crashed (SIGSEGV): ggml_amx: illegal instruction"
    assert _child_reason(subprocess.CompletedProcess([], 1, "", "")) == "exited with status 1"


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A 2-layer, 64-wide GPT-2 with a 300-token BPE tokenizer; weights drawn wide enough
    (std 0.2) that greedy choices are clear of float rounding."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from training.gpt2 import train_tokenizer

    out = tmp_path_factory.mktemp("peers") / "tiny-gpt2"
    tok = train_tokenizer(
        "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. " * 30, 300
    )
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=128,
        n_embd=64,
        n_layer=2,
        n_head=2,
        initializer_range=0.2,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    GPT2LMHeadModel(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out, tok("The quick brown fox")["input_ids"]


def _hf_greedy(checkpoint, ids: list[int], n: int) -> list[int]:
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    run = measure.hf_generate_fn(model, torch.tensor([ids]), model.config.eos_token_id)
    return run(n)[0, len(ids) :].tolist()


def test_gguf_f32_greedy_tokens_match_transformers(tiny_gpt2, tmp_path):
    pytest.importorskip("gguf")
    llama_cpp = pytest.importorskip("llama_cpp")
    from benchmarks.peers import _LlamaCppRunner, write_gguf

    ckpt, ids = tiny_gpt2
    hparams = write_gguf(ckpt, tmp_path / "model.gguf")
    assert hparams["context_length"] == 128 and hparams["feed_forward_length"] == 256
    runner = _LlamaCppRunner.__new__(_LlamaCppRunner)  # the peer's generate loop on the f32 file
    runner.llm = llama_cpp.Llama(
        model_path=str(tmp_path / "model.gguf"), n_ctx=128, n_threads=1, verbose=False
    )
    timer = measure.TokenTimer()
    got = runner.generate(ids, 12, timer)
    assert got == _hf_greedy(ckpt, ids, 12) and len(timer.stamps) == 12
    assert runner.generate(ids, 12, measure.TokenTimer()) == got  # the cache of the last call is not reused


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["openvino_int8", "openvino_int4", "llamacpp_q8_0", "llamacpp_q4_0", "ctranslate2_int8"]
)
def test_each_installed_peer_generates_exactly_n_tokens(name, tiny_gpt2, tmp_path_factory):
    from benchmarks.peers import PEERS, checkpoint_hash, peer_folder, run_peer

    why = PEERS[name].missing()
    if why:
        pytest.skip(why)
    ckpt, ids = tiny_gpt2
    cache = tmp_path_factory.mktemp(name)
    folder = peer_folder(cache, checkpoint_hash(ckpt), name)
    work = [
        {"key": "short", "ids": ids, "new_tokens": 6, "repeats": 2},
        {"key": "long", "ids": ids * 8, "new_tokens": 3, "repeats": 1},
    ]
    got = run_peer(name, ckpt, folder, 1, work)
    assert "skipped" not in got, got["skipped"]
    # generate_baseline fails a run that stamps any other number of tokens than asked for
    assert got["short"]["itl_ms"]["n"] == 2 * 5 and got["short"]["ttft_ms"]["n"] == 2
    assert got["long"]["prompt_tokens"] == 8 * len(ids) and got["long"]["itl_ms"]["n"] == 2
    assert got["cached"] is False and got["file_bytes"] > 0 and got["version"]
    assert got["conversion"]["peer"] == name and got["conversion"]["versions"]
    if name.startswith("openvino"):
        assert got["properties"]["INFERENCE_PRECISION_HINT"] == "f32"
        assert got["conversion"]["applied"]["nncf_weight_compression"]["mode"].endswith("_asym")
    props = got["properties"]
    assert 1 in (props.get("n_threads"), props.get("INFERENCE_NUM_THREADS"), props.get("intra_threads"))
    again = run_peer(name, ckpt, folder, 1, work[:1])
    assert again["cached"] is True and "long" not in again


def _genai_perf_figures(ttft: float, itl: float, tps: float) -> dict:
    figure = lambda v: {"avg": v, "p50": v, "p99": v}  # noqa: E731
    return {"ttft_ms": figure(ttft), "itl_ms": figure(itl), "output_tokens_per_s": tps}


def test_genai_perf_figures_sit_beside_ours_with_their_ratios(tmp_path):
    from benchmarks import genai_perf

    results = _results()
    ours = results["gpt2"]["served"]["1"]  # TTFT 25 ms, ITL 8 ms, 120 tok/s
    theirs = _genai_perf_figures(27.5, 8.4, 108.0)
    ours["ttft_ms"]["mean"], ours["itl_ms"]["mean"] = 25.0, 8.0
    got = genai_perf.beside_ours(theirs, ours)
    assert got == {"ttft_mean": 1.1, "itl_mean": 1.05, "tokens_per_s": 0.9}
    results["gpt2"]["genai_perf"] = {
        "vllm": {**theirs, "vs_ours": got},
        "tensorrtllm": {"skipped": "BenchmarkError: genai-perf --backend tensorrtllm failed (1): boom"},
    }
    report.write(results, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "| aigc bench client | 25.0 | 8.00 | 120.0 | |" in md
    assert "| genai-perf --backend vllm | 27.5 | 8.40 | 108.0 | 1.1 / 1.05 / 0.9 |" in md
    assert "| genai-perf --backend tensorrtllm | not run: BenchmarkError: genai-perf" in md
    results["gpt2"]["genai_perf"] = {"skipped": "genai-perf or perf_analyzer is not on PATH"}
    assert "genai-perf: not run (genai-perf or perf_analyzer is not on PATH)." in tables.markdown(results)


def test_genai_perf_is_found_or_named(tmp_path, monkeypatch):
    from benchmarks import genai_perf

    assert genai_perf.locate("off") is None
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    assert genai_perf.locate("auto") is None
    with pytest.raises(ConfigError, match="--genai-perf .*not an executable"):
        genai_perf.locate(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="--genai-perf"):
        BenchOptions(genai_perf=str(tmp_path / "missing")).validate()
    # an executable with perf_analyzer beside it: both found, without PATH
    for name in ("genai-perf", "perf_analyzer"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert genai_perf.locate(str(tmp_path / "genai-perf")) == (
        str(tmp_path / "genai-perf"),
        str(tmp_path / "perf_analyzer"),
    )
