"""`aigc` commands print only the project's own lines: no third-party warnings (Python
`warnings`, transformers' or torch's loggers, prints) reach the user of a cheap train and export.

The CLI runs in a child process exactly as `aigc` runs, except that the root logger is set up
first with the logger's name in front of each line (the CLI's own set-up is then a no-op). A
project line so starts with its package; a line from a library's own handler (transformers,
torch), a Python warning or a print does not."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

PROJECT = ("aigc", "training", "export", "serving", "benchmarks")
LINE = re.compile(r"^(?P<name>[\w.]+)\|(?P<level>[A-Z]+)\| ")
RUN_CLI = (
    "import logging, sys\n"
    "logging.basicConfig(level=logging.INFO, format='%(name)s|%(levelname)s| %(message)s')\n"
    "from aigc.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def aigc(*args: str, cwd) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "TORCH_LOGS")}
    result = subprocess.run(
        [sys.executable, "-c", RUN_CLI, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout
    return result.stdout.splitlines()


def not_ours(lines: list[str]) -> list[str]:
    bad = []
    for line in lines:
        m = LINE.match(line)
        if not m or m["name"].split(".")[0] not in PROJECT or re.search(r"warn", line, re.IGNORECASE):
            bad.append(line)
    return bad


def test_the_check_sees_third_party_lines():
    lines = [
        "export.api|INFO| export of gpt2 written to out",
        "W1128 21:33:55.634000 11843 torch/onnx/_internal/exporter/_registration.py:107] torchvision ...",
        "`loss_type=None` was set in the config but it is unrecognized.",
        "x.py:3: FutureWarning: `torch_dtype` is deprecated! Use `dtype` instead!",
        "transformers.generation|WARNING| Setting `pad_token_id` to `eos_token_id`",
    ]
    assert not_ours(lines) == lines[1:]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gpt2", "dcgan"])
def test_train_and_export_print_only_the_projects_lines(model, tmp_path):
    lines = aigc("train", model, "--steps", "2", "--out", "ckpt", cwd=tmp_path)
    lines += aigc(
        "export",
        model,
        "--checkpoint",
        "ckpt",
        "--out",
        "exp",
        "--variants",
        "fp32",
        "--seed",
        "0",
        cwd=tmp_path,
    )
    assert not_ours(lines) == [], "\n".join(lines)
    assert any(line.endswith("export written to exp") for line in lines), lines
