"""The report: results.md's tables (served, baselines, peers, decode profile, read floors,
long and mixed workloads), results.json, the plots and the README section."""

from __future__ import annotations

import json

import pytest
from bench_samples import KV_PER_TOKEN, sample_results, sample_results_with_peers

from aigc.errors import ConfigError
from benchmarks import ratios, report, tables


def test_table_and_plots_are_written(tmp_path):
    results = sample_results()
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
    # many users served, and the engine offline
    assert "**Many users**: 64 streams at once, one request each: 450.0 tok/s aggregate" in md
    assert "resident memory 900.0 MiB before, 905.0 MiB after" in md
    assert "| 64 requests of 16 → 64 tokens, 64 sequences, same MiB (576 MiB) | 403.0 tok/s" in md
    assert (
        "| batch-8 step, u8 KV cache (21888 B a position), 48 / 496 cached tokens | 26.50 / 30.00 ms (served"
        in md
    )
    assert (
        "| 32 requests sharing a 256-token prefix: the later ones' TTFT p50, prefix caching on / off | 1000.0 / 5000.0 ms"
        in md
    )
    assert (
        "| a 512-token prompt three times, prefix caching on: TTFT ms | 659.1 / 61.4 / 62.2 (identical" in md
    )
    assert (
        "| 32 requests sharing a 256-token prefix (int4, the served runtime's slots): the later ones' TTFT p50, "
        "prefix caching on / off | 600.0 / 6000.0 ms" in md
    )
    assert json.loads((tmp_path / "results.json").read_text())["ratios"] == results["ratios"]
    for png in ("gpt2.png", "gpt2-workloads.png", "images.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_table_without_long_workload_says_why(tmp_path):
    results = sample_results()
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
    results = sample_results()
    out = tmp_path / "bench"
    report.write(results, out)
    (tmp_path / "docs").mkdir()
    readme = tmp_path / "docs" / "BENCHMARKS.md"
    readme.write_text("# title\n<!-- bench:start -->\nold table\n<!-- bench:end -->\nafter\n")
    report.write_readme(results, out, readme)
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# title\n") and text.endswith("after\n")
    # the plots beside the document, linked relative to it
    assert "| gpt2_tokens_per_s_vs_eager |" in text and "](images/bench-gpt2.png)" in text
    assert (tmp_path / "docs" / "images" / "bench-gpt2.png").is_file()
    readme.write_text("no markers")
    with pytest.raises(ConfigError, match="--write-readme"):
        report.check_readme(readme)


def test_peer_rows_and_plots(tmp_path):
    results = sample_results_with_peers()
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
