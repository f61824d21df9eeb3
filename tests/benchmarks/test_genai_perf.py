"""genai-perf beside `aigc bench`: its figures and ratios in results.md, and finding it."""

from __future__ import annotations

import pytest
from bench_samples import sample_results

from aigc.errors import ConfigError
from benchmarks import report, tables
from benchmarks.options import BenchOptions


def _genai_perf_figures(ttft: float, itl: float, tps: float) -> dict:
    figure = lambda v: {"avg": v, "p50": v, "p99": v}  # noqa: E731
    return {"ttft_ms": figure(ttft), "itl_ms": figure(itl), "output_tokens_per_s": tps}


def test_genai_perf_figures_sit_beside_ours_with_their_ratios(tmp_path):
    from benchmarks import genai_perf

    results = sample_results()
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
