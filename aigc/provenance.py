"""Where a generated figure came from: the commit of the code that made it, when, and on
which machine (stamped into export reports, benchmark results and the tables made of them)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]


def source_commit() -> str:
    """`git describe --always --dirty` of the checkout this code runs from (`-dirty`: with
    uncommitted changes), else the installed package's version."""
    try:
        res = subprocess.run(
            ["git", "-C", str(_ROOT), "describe", "--always", "--dirty", "--abbrev=7"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if res.returncode == 0 and res.stdout.strip():
            return res.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"aigc-serve {version('aigc-serve')}"
    except PackageNotFoundError:
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """The CPU model and its core count, as the tables name a machine."""
    return f"{cpu_model()}, {os.cpu_count()} cores"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
