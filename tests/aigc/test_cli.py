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
