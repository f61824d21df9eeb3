"""The engine probes (benchmarks/engine_probe.py) on the tiny export's OpenVINO variant: each
runs and reports what its record in benchmarks/many-users.md reads."""

from __future__ import annotations

import json

import pytest

from benchmarks import engine_probe


def test_block_probes_on_a_slot_variant_are_refused_naming_the_flag(exports, capsys):
    with pytest.raises(SystemExit):
        engine_probe.main(["--export", str(exports["gpt2"]), "--variant", "fp32", "--probes", "prefix,users"])
    assert "--variant fp32: its runtime has no block cache, which the users probes" in capsys.readouterr().err


@pytest.mark.slow
def test_the_prefix_probes_run_on_an_onnxruntime_variant(exports, capsys):
    """ONNX Runtime's slots: a repeated prompt is read from its free slot, later requests
    sharing a prefix copy it from the first one's slot; the tokens are those computed whole."""
    args = ["--export", str(exports["gpt2"]), "--variant", "fp32", "--threads", "1"]
    assert engine_probe.main(args) == 0  # what a slot runner can run: not users
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"variant", "mixed", "prefix", "shared_prefix", "structured", "moves"}
    # the mixed graph's one call beside a prefill call and a decode call (timed, not judged)
    for m in out["mixed"].values():
        assert m["one_mixed_call_ms"] > 0 and m["two_calls_ms"] > 0
    assert out["prefix"]["identical_tokens"] and out["prefix"]["prefix_caching on"]["hit_tokens"] > 0
    shared = out["shared_prefix"]
    assert shared["prefix_caching on"]["hit_tokens"] >= (shared["requests"] - 1) * shared["shared_tokens"]
    assert shared["prefix_caching off"]["hit_tokens"] == 0
    # rows moved down into the slots that emptied: the decode calls compute fewer padding rows
    moves = out["moves"]
    assert moves["on"]["rows_moved"] > 0 and moves["off"]["rows_moved"] == 0
    assert moves["on"]["padding_share"] < moves["off"]["padding_share"]


def test_the_slot_probe_on_a_block_variant_is_refused_naming_the_flag(exports, capsys):
    with pytest.raises(SystemExit):
        engine_probe.main(["--export", str(exports["gpt2"]), "--variant", "ov-fp32", "--probes", "moves"])
    assert "--variant ov-fp32: its runtime's rows are blocks, not slots" in capsys.readouterr().err


@pytest.mark.slow
def test_the_probes_run_on_an_openvino_variant(exports, capsys):
    assert (
        engine_probe.main(["--export", str(exports["gpt2"]), "--variant", "ov-fp32", "--threads", "1"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert set(out["mixed"]) == {"4 decode rows + 16-token chunk", "4 decode rows + 64-token chunk"}
    assert all(m["one_mixed_call_ms"] > 0 and m["two_calls_ms"] > 0 for m in out["mixed"].values())
    many, few = out["users"]["64 sequences, same MiB"], out["users"]["8 slots"]
    assert many["kv_mib"] == few["kv_mib"] and many["tokens_per_s"] > 0 and few["preemptions"] == 0
    # the tiny model's 4-block window: 64 requests of 80 positions overflow its 32 blocks, so
    # the newest are preempted and recomputed, and every one still completes
    assert many["preemptions"] > 0 and many["finished"] == few["finished"] == ["length"]
    assert out["prefix"]["identical_tokens"] and out["prefix"]["prefix_caching on"]["hit_tokens"] > 0
    shared = out["shared_prefix"]
    # the 31 later requests read the shared prefix's full blocks from the cache
    blocks = shared["shared_tokens"] // 32 * 32
    assert shared["prefix_caching on"]["hit_tokens"] >= (shared["requests"] - 1) * blocks > 0
    assert shared["prefix_caching off"]["hit_tokens"] == 0
    assert set(out["structured"]) == {"1", "8"}
    for m in out["structured"].values():  # the median of the rounds' own ratios
        assert len(m["ratios"]) == 5 and m["ratio"] == pytest.approx(sorted(m["ratios"])[2], abs=1e-3)


def test_an_unknown_probe_is_named(exports, capsys):
    with pytest.raises(SystemExit):
        engine_probe.main(
            ["--export", str(exports["gpt2"]), "--variant", "ov-fp32", "--probes", "users,speed"]
        )
    assert (
        "--probes: speed unknown; choose from mixed, users, prefix, shared_prefix" in capsys.readouterr().err
    )
