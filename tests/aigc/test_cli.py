"""The aigc command line: every command listed in the help, and a build error exiting 2."""

from __future__ import annotations

import pytest

from aigc.cli import build_parser
from aigc.cli import main as aigc_main


def test_cli_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    listed = {line.split()[0] for line in text.splitlines() if line.startswith("    ") and line.split()}
    assert {
        "train",
        "export",
        "build",
        "serve",
        "rollback",
        "generate",
        "bench",
        "create-gpt2",
        "results",
        "demo",
    } <= listed


def test_cli_build_error_exits_2(tmp_path, capsys):
    assert (
        aigc_main(["build", "--exports", str(tmp_path / "nothing"), "--repository", str(tmp_path / "r")]) == 2
    )
    assert "export_report.json" in capsys.readouterr().err


def test_the_demo_runs_a_short_bench_and_prints_a_headline(tmp_path):
    from aigc.demo import headline, short_bench

    opts = short_bench(tmp_path, [tmp_path / "e"])
    assert opts.peer_names() == () and opts.baselines == ("eager",) and not opts.engine_probe
    assert opts.long_prompt_tokens == 0 and opts.many_users == 0 and opts.concurrency == (1, 4)
    assert opts.peer_rounds == opts.scaling_rounds == 1  # each concurrency once: the demo is short
    results = {
        "gpt2": {"served": {"1": {"per_stream_tokens_per_s": 1957.2}}},
        "ratios": {"gpt2_tokens_per_s_vs_eager": 3.14},
        "images": {"dcgan": {"served_ms": {"p50": 1.04}}},
    }
    assert headline(results) == "gpt2 1957 tok/s at 1 stream, 3.1x PyTorch eager, dcgan 1.04 ms p50 served"
    assert headline({}) == "no figures"
