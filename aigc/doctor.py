"""`aigc doctor`: what this machine needs for the long steps, checked in seconds.

Each check says ok, warn (works, but slower or with a limit) or FAIL, and for the last two
what to do. The embedded server's needs come first (Linux, glibc, a Python with a shared
libpython and a Python-backend stub for its version, the Triton binary starting), then the
runtimes, the CPU's features (which decide the fastest variants), the GPU when asked, free
ports and disk. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

OK, WARN, FAIL = "ok", "warn", "FAIL"
GLIBC_MIN = (2, 35)  # what the nvidia-pytriton wheel's Triton binary is built against
PYTHONS = ((3, 10), (3, 12))  # numpy < 2 (the PyTriton wheel's pin) and its backend stubs
DISK_GIB = 5.0  # the demo's checkpoints, exports and bench cache


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def _python() -> Check:
    v = sys.version_info[:2]
    name = f"Python {v[0]}.{v[1]}"
    if not PYTHONS[0] <= v <= PYTHONS[1]:
        return Check(
            "python", FAIL, name, "use Python 3.10-3.12 (numpy < 2, the embedded Triton's Python backend)"
        )
    return Check("python", OK, f"{name} ({sys.executable})")


def _platform() -> Check:
    system, machine = platform.system(), platform.machine()
    if system != "Linux" or machine not in ("x86_64", "AMD64"):
        return Check(
            "platform",
            FAIL,
            f"{system} {machine}",
            "the embedded Triton runs on Linux x86_64; elsewhere serve with the container (deploy/docker)",
        )
    return Check("platform", OK, f"{system} {machine}")


def _glibc() -> Check:
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        text = ""
    try:
        version = tuple(int(x) for x in text.split()[1].split(".")[:2])
    except (IndexError, ValueError):
        return Check(
            "glibc", WARN, f"unknown C library ({text or 'none'})", "the embedded Triton needs glibc >= 2.35"
        )
    if version < GLIBC_MIN:
        return Check(
            "glibc",
            FAIL,
            text,
            "the embedded Triton needs glibc >= 2.35 (Ubuntu 22.04, Debian 12); or serve with the container",
        )
    return Check("glibc", OK, text)


def _libpython() -> Check:
    name = sysconfig.get_config_var("LDLIBRARY") or ""
    libdir = Path(sysconfig.get_config_var("LIBDIR") or "")
    shared = bool(sysconfig.get_config_var("Py_ENABLE_SHARED")) and name.endswith(".so")
    if not shared or not (libdir / name).exists():
        return Check(
            "libpython",
            FAIL,
            f"this Python has no shared libpython ({name or 'static build'})",
            "the Python backend stub loads libpython: use a Python built with --enable-shared "
            "(the distribution's python3, or pyenv with PYTHON_CONFIGURE_OPTS=--enable-shared)",
        )
    return Check("libpython", OK, str(libdir / name))


def _triton(binary: Path | None) -> Check:
    try:
        from serving.server import find_tritonserver, prepare_backends, server_env

        found, _ = find_tritonserver()
        binary = Path(binary) if binary else found
        env = server_env()
        prepare_backends()  # the Python-backend stub for this interpreter
    except Exception as exc:  # noqa: BLE001 - any reason is reported with its fix
        return Check(
            "triton",
            FAIL,
            str(exc),
            'pip install ".[server,cpu]" (nvidia-pytriton carries the Triton binary)',
        )
    try:
        run = subprocess.run([str(binary), "--help"], env=env, capture_output=True, text=True, timeout=60)
        output = run.stdout + run.stderr
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("triton", FAIL, f"{binary} does not start: {exc}", _triton_fix())
    if "Usage: tritonserver" not in output:
        tail = output.strip().splitlines()[-1:] or [f"exit status {run.returncode}"]
        return Check("triton", FAIL, f"{binary} does not start: {tail[0]}", _triton_fix())
    return Check("triton", OK, f"{binary} starts")


def _triton_fix() -> str:
    return (
        "reinstall the wheel (pip install --force-reinstall nvidia-pytriton); a missing shared "
        "library points at glibc or libpython above"
    )


def _packages() -> list[Check]:
    out = []
    try:
        numpy_version = metadata.version("numpy")
    except metadata.PackageNotFoundError:
        numpy_version = "missing"
    major = numpy_version.split(".")[0]
    out.append(
        Check("numpy", OK, numpy_version)
        if major == "1"
        else Check(
            "numpy", FAIL, numpy_version, 'pip install "numpy<2" (the PyTriton wheel and its backend need it)'
        )
    )
    installed = [d for d in ("onnxruntime", "onnxruntime-gpu") if _has(d)]
    if len(installed) > 1:
        out.append(
            Check(
                "onnxruntime",
                FAIL,
                "both onnxruntime and onnxruntime-gpu installed (one import name)",
                "pip uninstall -y onnxruntime onnxruntime-gpu, then install the one you need",
            )
        )
    elif installed:
        import onnxruntime as ort

        out.append(
            Check(
                "onnxruntime",
                OK,
                f"{installed[0]} {ort.__version__}: {', '.join(ort.get_available_providers())}",
            )
        )
    else:
        out.append(
            Check("onnxruntime", FAIL, "not installed", 'pip install ".[cpu]" (".[gpu]" on a GPU host)')
        )
    try:
        import openvino as ov

        out.append(Check("openvino", OK, ov.get_version().split("-")[0]))
    except ImportError:
        out.append(
            Check("openvino", WARN, "not installed", "pip install -e . (the ov-* variants and their runner)")
        )
    return out


def _has(dist: str) -> bool:
    try:
        metadata.version(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu() -> Check:
    flags = cpu_flags()
    named = {
        "AVX2": "avx2",
        "AVX-512": "avx512f",
        "AVX-512 VNNI": "avx512_vnni",
        "AVX-VNNI": "avx_vnni",
        "BF16": "avx512_bf16",
        "AMX": "amx_tile",
    }
    have = [n for n, f in named.items() if f in flags]
    detail = f"{os.cpu_count()} cores; {', '.join(have) or 'none of AVX2, AVX-512, VNNI, BF16, AMX'}"
    if "avx2" not in flags:
        return Check(
            "cpu", WARN, detail, "without AVX2 the int8/int4 kernels are slow: prefer the fp32 variant"
        )
    return Check("cpu", OK, detail + " (aigc build --variant auto picks by measuring on this CPU)")


def _gpu() -> Check:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return Check(
            "gpu",
            FAIL,
            "no nvidia-smi: no NVIDIA driver",
            "install the NVIDIA driver, or build for --target cpu",
        )
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    except ImportError:
        providers = []
    if "CUDAExecutionProvider" not in providers:
        return Check(
            "gpu",
            FAIL,
            f"onnxruntime providers: {providers}",
            "pip uninstall -y onnxruntime && pip install onnxruntime-gpu (built for your CUDA)",
        )
    return Check("gpu", OK, "CUDAExecutionProvider available")


def _ports(host: str, ports: list[int]) -> Check:
    taken = []
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                taken.append(port)
    if taken:
        return Check(
            "ports",
            WARN,
            f"in use on {host}: {', '.join(map(str, taken))}",
            "stop what holds them, or pass --grpc-port/--http-port/--metrics-port/--openai-port (0 = any free)",
        )
    return Check("ports", OK, f"{', '.join(map(str, ports))} free on {host}")


def _disk(folder: Path) -> Check:
    free = shutil.disk_usage(folder).free / 2**30
    if free < DISK_GIB:
        return Check(
            "disk",
            WARN,
            f"{free:.1f} GiB free in {folder}",
            f"the demo writes about {DISK_GIB:g} GiB: free some",
        )
    return Check("disk", OK, f"{free:.1f} GiB free in {folder}")


def checks(
    gpu: bool = False, triton_binary: Path | None = None, ports=(8000, 8001, 8002, 9000)
) -> list[Check]:
    out = [_platform(), _python(), _glibc(), _libpython(), _triton(triton_binary)]
    out += _packages()
    out.append(_cpu())
    if gpu:
        out.append(_gpu())
    out += [_ports("127.0.0.1", list(ports)), _disk(Path.cwd())]
    return out


def report(results: list[Check]) -> str:
    lines = []
    for c in results:
        lines.append(f"{c.status:>4}  {c.name:<12} {c.detail}")
        if c.fix and c.status != OK:
            lines.append(f"      {'':<12} -> {c.fix}")
    failed = [c.name for c in results if c.status == FAIL]
    lines.append(f"{len(failed)} check(s) failed: {', '.join(failed)}" if failed else "ready")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gpu", action="store_true", help="also check the NVIDIA driver and onnxruntime's CUDA provider"
    )
    parser.add_argument(
        "--triton-binary", type=Path, help="check this tritonserver instead of the nvidia-pytriton wheel's"
    )


def run(args: argparse.Namespace) -> int:
    results = checks(gpu=args.gpu, triton_binary=args.triton_binary)
    print(report(results))  # noqa: T201 - the command's output
    return 1 if any(c.status == FAIL for c in results) else 0
