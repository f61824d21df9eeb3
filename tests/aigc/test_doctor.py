"""`aigc doctor` on this machine, and what it says when the Triton binary is not there."""

from __future__ import annotations

import stat
import subprocess
import sys

from aigc import doctor


def _doctor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aigc.cli", "doctor", *args], capture_output=True, text=True, timeout=120
    )


def test_this_machine_is_ready():
    run = _doctor()
    assert run.returncode == 0, run.stdout + run.stderr
    names = [line.split()[1] for line in run.stdout.splitlines()[:-1] if not line.lstrip().startswith("->")]
    assert names[:5] == ["platform", "python", "glibc", "libpython", "triton"]
    assert "tritonserver starts" in run.stdout and run.stdout.rstrip().endswith("ready")


def test_a_triton_binary_that_is_missing_or_does_not_start_fails_with_what_to_do(tmp_path):
    missing = _doctor("--triton-binary", str(tmp_path / "tritonserver"))
    assert missing.returncode == 1
    assert "FAIL  triton" in missing.stdout and "does not start" in missing.stdout
    assert "-> reinstall the wheel (pip install --force-reinstall nvidia-pytriton)" in missing.stdout
    assert missing.stdout.rstrip().endswith("1 check(s) failed: triton")
    broken = tmp_path / "broken"
    broken.write_text(
        "#!/bin/sh\necho 'error while loading shared libraries: libpython3.11.so.1.0' >&2\nexit 127\n"
    )
    broken.chmod(broken.stat().st_mode | stat.S_IXUSR)
    run = _doctor("--triton-binary", str(broken))
    assert run.returncode == 1 and "error while loading shared libraries: libpython3.11.so.1.0" in run.stdout


def test_the_report_shows_the_fix_of_each_warning_and_failure():
    text = doctor.report(
        [
            doctor.Check("python", doctor.OK, "Python 3.11"),
            doctor.Check("ports", doctor.WARN, "in use: 8001", "pass --grpc-port 0"),
            doctor.Check("glibc", doctor.FAIL, "glibc 2.31", "use glibc >= 2.35"),
        ]
    )
    assert text.splitlines() == [
        "  ok  python       Python 3.11",
        "warn  ports        in use: 8001",
        "                   -> pass --grpc-port 0",
        "FAIL  glibc        glibc 2.31",
        "                   -> use glibc >= 2.35",
        "1 check(s) failed: glibc",
    ]
