"""Benchmark reporting, the CI gate, flag validation and the timing loops on fakes.

The measurements themselves run in `aigc bench`; one live quick run against the shared
test server (tiny models) checks that the whole path holds together.
"""

from __future__ import annotations

import json
import time

import pytest

from aigc.errors import BenchmarkError, ConfigError
from benchmarks import measure, report
from benchmarks.api import BenchOptions, build_prompt


def _served(ttft: float, agg: float, per: float, c: int) -> dict:
    return {
        "concurrency": c,
        "requests": 4,
        "ttft_ms": {"p50": ttft, "p90": ttft, "p99": ttft},
        "itl_ms": {"p50": 8.0, "p90": 9.0, "p99": 12.0},
        "aggregate_tokens_per_s": agg,
        "per_stream_tokens_per_s": per,
    }


def _results() -> dict:
    base = {"ttft_ms": {"p50": 90.0}, "itl_ms": {"p50": 45.0, "p90": 50.0, "p99": 60.0}, "tokens_per_s": 20.0}
    results = {
        "env": {"cpu": "test cpu", "cores": 2, "threads": 2, "gpu": False, "gpus": [], "packages": {}},
        "config": {"prompt_tokens": 16, "new_tokens": 64, "threads": 2, "quick": True, "repeats": 3},
        "gpt2": {
            "model": "runs/bench-cache/gpt2-124m",
            "variant": "int8",
            "served": {"1": _served(40.0, 120.0, 118.0, 1), "4": _served(90.0, 200.0, 50.0, 4)},
            "decode_profile": {
                "past_len": 48,
                "step_ms": {"1": 7.5, "4": 12.0, "8": 17.0},
                "prefill_ms": {"16": 19.0},
            },
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
    results["ratios"] = report.ratios(results)
    return results


def test_ratios_are_measured_side_by_side():
    r = _results()["ratios"]
    assert r["gpt2_tokens_per_s_vs_eager"] == pytest.approx(118.0 / 20.0, rel=1e-3)
    assert r["gpt2_tokens_per_s_vs_optimum"] == pytest.approx(118.0 / 30.0, rel=1e-3)
    assert r["gpt2_ttft_speedup_vs_eager"] == pytest.approx(90.0 / 40.0, rel=1e-3)
    assert r["gpt2_itl_speedup_vs_optimum"] == pytest.approx(45.0 / 8.0, rel=1e-3)
    assert r["gpt2_aggregate_c4_vs_c1"] == pytest.approx(200.0 / 120.0, rel=1e-3)
    assert r["gpt2_aggregate_c4_vs_eager"] == pytest.approx(200.0 / 20.0, rel=1e-3)
    assert r["dcgan_served_minus_inprocess_p50_ms"] == pytest.approx(0.7)
    assert r["dcgan_served_speedup_vs_eager_p50"] == pytest.approx(1.2)
    assert r["dcgan_images_per_s_b8_vs_inprocess"] == pytest.approx(0.5)
    assert r["dcgan_latency_p50_over_mean_c1"] == pytest.approx(1.2 / 1.25, rel=1e-3)
    assert r["gpt2_step_ceiling_c4_vs_c1"] == pytest.approx(4 * 7.5 / 12.0, rel=1e-3)
    assert "gpt2_step_ceiling_c8_vs_c1" not in r  # only for the concurrencies served


def test_gate_fails_above_and_passes_below_what_was_measured():
    results = _results()
    measured = results["ratios"]["gpt2_tokens_per_s_vs_eager"]
    report.gate(results, {"gpt2_tokens_per_s_vs_eager": {"min": measured - 0.5}})
    report.gate(results, {"gpt2_tokens_per_s_vs_eager": measured - 0.5})  # a bare number is a minimum
    with pytest.raises(BenchmarkError, match="gpt2_tokens_per_s_vs_eager = .* below the threshold"):
        report.gate(results, {"gpt2_tokens_per_s_vs_eager": {"min": measured + 0.5}})
    with pytest.raises(BenchmarkError, match="above the threshold"):
        report.gate(results, {"dcgan_served_minus_inprocess_p50_ms": {"max": 0.5}})
    with pytest.raises(BenchmarkError, match="not measured"):
        report.gate(results, {"no_such_ratio": {"min": 1}})


def test_gate_lists_every_failing_ratio():
    results = _results()
    too_high = {k: {"min": v * 2} for k, v in results["ratios"].items() if v > 0}
    with pytest.raises(BenchmarkError) as info:
        report.gate(results, too_high)
    assert all(name in str(info.value) for name in too_high)


def test_committed_thresholds_parse_and_name_measured_ratios():
    thresholds = report.load_thresholds()
    names = [k for k in thresholds if not k.startswith("_")]
    assert names and set(names) <= set(_results()["ratios"])
    # the committed bounds hold on the synthetic run (well above every lower bound)
    assert report.check_gate(_results()["ratios"], thresholds) == []
    # ...and catch requests stalling in Triton's queue: a few 500 ms waits pull the mean up
    stalled = _results()
    stalled["images"]["dcgan"]["throughput_vs_concurrency"]["1"]["latency_ms"]["mean"] = 6.0
    failures = report.check_gate(report.ratios(stalled), thresholds)
    assert [f.split(" = ")[0] for f in failures] == ["dcgan_latency_p50_over_mean_c1"]


def test_bad_thresholds_name_the_flag(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text('{"gpt2_tokens_per_s_vs_eager": {"at_least": 2}}')
    with pytest.raises(ConfigError, match="--gate"):
        report.load_thresholds(bad)
    with pytest.raises(ConfigError, match="--gate"):
        report.load_thresholds(tmp_path / "missing.json")


def test_table_and_plots_are_written(tmp_path):
    results = _results()
    report.write(results, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "| served (Triton gRPC stream) | 1 | 118.0 | 120.0 | 6.00 | 4.00 | 40.0 |" in md
    assert "PyTorch eager" in md and "Optimum" in md and "| dcgan | ONNX Runtime in-process | fp32 |" in md
    assert "| gpt2_tokens_per_s_vs_eager | 5.9 |" in md
    assert "decode step 7.50 / 12.00 / 17.00 ms at batch 1 / 4 / 8; 16-token prefill 19.0 ms" in md
    assert json.loads((tmp_path / "results.json").read_text())["ratios"] == results["ratios"]
    for png in ("gpt2.png", "images.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


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
    ],
)
def test_bad_flags_are_named(field, value, flag):
    opts = BenchOptions()
    setattr(opts, field, value)
    with pytest.raises(ConfigError, match=flag):
        opts.validate()


def test_url_needs_the_checkpoint_for_the_baselines(tmp_path):
    from benchmarks.api import subjects

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
    for n in (1, 5, 16, 100):
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
    assert opts.concurrency == (1, 4) and opts.batch_sizes == (1, 8) and opts.repeats <= 3


@pytest.mark.server
@pytest.mark.slow
def test_live_quick_run_against_the_server(server, exports, tmp_path):
    """A tiny quick run through the real server: served streams, both baselines, dcgan."""
    from benchmarks.api import run_benchmark

    t0 = time.perf_counter()
    results = run_benchmark(
        BenchOptions(
            url=server.grpc_url,
            exports=(exports["gpt2"], exports["dcgan"]),
            image_variant="fp32",  # what the test server serves
            prompt_tokens=8,
            new_tokens=8,
            concurrency=(1, 2),
            batch_sizes=(1, 4),
            repeats=2,
            image_requests=20,
            throughput_seconds=0.3,
            out=tmp_path / "out",
            cache=tmp_path / "cache",
            progress=False,
        )
    )
    g = results["gpt2"]
    assert g["served"]["2"]["requests"] == 4 and g["served"]["1"]["itl_ms"]["n"] >= 2 * 7
    assert g["eager"]["tokens_per_s"] > 0 and g["optimum"]["tokens_per_s"] > 0
    assert {"gpt2_tokens_per_s_vs_eager", "gpt2_tokens_per_s_vs_optimum"} <= set(results["ratios"])
    assert "dcgan_served_minus_inprocess_p50_ms" in results["ratios"]
    assert (tmp_path / "out" / "results.md").is_file() and (tmp_path / "out" / "gpt2.png").is_file()
    assert time.perf_counter() - t0 < 120
