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
