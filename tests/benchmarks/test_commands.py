"""`aigc bench` on the command line: a bad flag is named and exits 2."""

from __future__ import annotations


def test_cli_names_the_flag_and_exits_2(capsys, tmp_path):
    from aigc.cli import main

    assert main(["bench", "--new-tokens", "0", "--out", str(tmp_path)]) == 2
    assert "--new-tokens" in capsys.readouterr().err
    assert main(["bench", "--gate", str(tmp_path / "none.json"), "--out", str(tmp_path)]) == 2
    assert "--gate" in capsys.readouterr().err
    assert main(["bench", "--exports", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "--exports" in capsys.readouterr().err


def test_cli_peers_flag(capsys, tmp_path):
    from aigc.cli import main

    assert main(["bench", "--peers", "openvino,vllm", "--out", str(tmp_path)]) == 2
    assert "--peers: unknown peer 'vllm'" in capsys.readouterr().err


def test_from_results_writes_the_doc_section_of_an_earlier_run_without_measuring(capsys, tmp_path):
    import json

    from bench_samples import sample_results

    from aigc.cli import main
    from benchmarks import report

    results = sample_results()
    results["env"].update(commit="abc1234", date="2026-12-06T15:00:00+00:00")
    report.write(results, tmp_path / "run")
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("intro\n<!-- bench:start -->\nold\n<!-- bench:end -->\n")
    args = ["bench", "--from-results", str(tmp_path / "run" / "results.json"), "--write-readme", str(doc)]
    assert main(args) == 0
    text = doc.read_text()
    assert "Machine: test cpu, 2 cores; GPU: none. Commit abc1234, 2026-12-06T15:00:00+00:00." in text
    assert "old" not in text and (tmp_path / "images" / "bench-gpt2.png").is_file()
    # nothing to do, or not a results file: named, exit 2
    assert main(["bench", "--from-results", str(tmp_path / "run" / "results.json")]) == 2
    assert "--write-readme and/or --gate" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({"x": 1}))
    assert main(["bench", "--from-results", str(tmp_path / "bad.json"), "--gate"]) == 2
    assert "not an `aigc bench` results.json" in capsys.readouterr().err
