"""The embedded server: the real Triton Inference Server binary from the nvidia-pytriton wheel.

It runs as a subprocess bound to loopback with the project's repository. The Python-backend
stub embeds the system's libpython of the running Python version and imports from the
environment it inherits, so it is handed this interpreter's site-packages explicitly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import site
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from aigc.errors import ServerError
from serving import security

logger = logging.getLogger(__name__)

CACHE = Path(os.environ.get("AIGC_CACHE", Path.home() / ".cache" / "aigc-serve"))


def find_tritonserver() -> tuple[Path, Path]:
    """(tritonserver binary, its shared-library folder) from the nvidia-pytriton wheel."""
    root = _pytriton_root()
    binary = root / "tritonserver" / "bin" / "tritonserver"
    if not binary.is_file():
        raise ServerError(f"{binary}: the Triton binary is missing from the nvidia-pytriton wheel")
    return binary, root.parent / "nvidia_pytriton.libs"


def _pytriton_root() -> Path:
    """The installed pytriton package folder, found without importing it (only its server
    binary is used; its Python side pins dependencies this project does not need)."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(
            "nvidia-pytriton is not installed: `pip install nvidia-pytriton` (it carries tritonserver)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _pytriton_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nvidia-pytriton")
    except PackageNotFoundError:
        return "x"


def prepare_backends() -> Path:
    """A backend folder with the Python backend and the stub for this interpreter's version."""
    root = _pytriton_root() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (root / "python_backend_stubs").iterdir())
        raise ServerError(
            f"no Triton Python-backend stub for Python {version} (the wheel has {', '.join(have)})"
        )
    dest = CACHE / f"backends-{_pytriton_version()}-py{version}"
    python = dest / "python"
    if not (python / "triton_python_backend_stub").is_file():
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(root / "backends" / "python", tmp / "python")
        shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    return dest


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_port(host: str, port: int, what: str) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise ServerError(
                f"port {port} ({what}) on {host} is already in use; stop what holds it or pass --{what.lower()}-port"
            ) from None


def server_env() -> dict[str, str]:
    """The environment of the Triton process: its libraries, and this Python's packages."""
    _, libs = find_tritonserver()
    env = os.environ.copy()
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libs), env.get("LD_LIBRARY_PATH")]))
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    paths = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
    # An explicit PYTHONPATH comes first (e.g. onnxruntime-gpu unpacked beside a CPU build).
    env["PYTHONPATH"] = os.pathsep.join(([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []) + paths)
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
    return env


_LOAD_FAILURE = re.compile(
    r"(failed to load '[^']+'.*|Internal: .*|Invalid argument: .*|error: creating server: .*)"
)


class EmbeddedTritonServer:
    """Context manager running `tritonserver` on loopback; ports 0 pick free ones."""

    def __init__(
        self,
        repository: Path,
        host: str = "127.0.0.1",
        grpc_port: int = 8001,
        http_port: int = 8000,
        metrics_port: int = 8002,
        log_file: Path | None = None,
        startup_timeout_s: float = 180.0,
        exit_timeout_s: int = 5,
        model_control: str = "explicit",
        extra_args: list[str] | None = None,
        control_key: str | None = None,
    ):
        """`control_key`: Triton's control APIs (`serving.security.RESTRICTED`) answer only
        requests that carry it."""
        self.repository = Path(repository).absolute()
        self.host = host
        self.grpc_port = grpc_port or free_port(host)
        self.http_port = http_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.log_file = Path(log_file) if log_file else self.repository.parent / "runs" / "triton.log"
        self.startup_timeout_s = startup_timeout_s
        self.exit_timeout_s = exit_timeout_s
        self.model_control = model_control
        self.extra_args = list(extra_args or [])
        self.control_key = control_key
        self.process: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        """Prometheus text of the server's metrics (Triton's and the models' own)."""
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    def command(self) -> list[str]:
        binary, _ = find_tritonserver()
        cmd = [
            str(binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={prepare_backends()}",
            f"--grpc-address={self.host}",
            f"--http-address={self.host}",
            f"--metrics-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            "--disable-auto-complete-config",
            "--allow-gpu-metrics=false",
            f"--model-control-mode={self.model_control}",
        ]
        if self.model_control == "explicit":
            cmd.append("--load-model=*")
        return cmd + security.triton_args(self.control_key) + self.extra_args

    def start(self) -> EmbeddedTritonServer:
        if not self.repository.is_dir() or not any(self.repository.iterdir()):
            raise ServerError(f"--repository {self.repository}: empty or missing; run `aigc build` first")
        for port, what in (
            (self.grpc_port, "gRPC"),
            (self.http_port, "HTTP"),
            (self.metrics_port, "Metrics"),
        ):
            _check_port(self.host, port, what)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "w")  # noqa: SIM115 - owned by the process for its lifetime
        shown = " ".join(self.command())
        logger.debug("starting %s", shown.replace(self.control_key, "***") if self.control_key else shown)
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=server_env(), start_new_session=True
        )
        log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        logger.info("Triton ready: gRPC %s, HTTP %s (log %s)", self.grpc_url, self.http_url, self.log_file)
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"Triton exited with status {self.process.returncode}: {self.failure_reason()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise ServerError(f"Triton not ready after {self.startup_timeout_s:.0f} s: {self.failure_reason()}")

    def failure_reason(self) -> str:
        """Triton's own words on what failed, from its log."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return f"no log at {self.log_file}"
        reasons = [m.group(1).strip() for line in text.splitlines() if (m := _LOAD_FAILURE.search(line))]
        if reasons:
            return "; ".join(dict.fromkeys(reasons))
        tail = [line for line in text.splitlines() if line.strip()][-5:]
        return " | ".join(tail) + f" (log: {self.log_file})"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=self.exit_timeout_s + 5)
        except subprocess.TimeoutExpired:
            logger.warning("Triton did not exit in %d s; killing it", self.exit_timeout_s + 5)
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        # Triton gone, a Python-backend stub still busy when its exit timeout cut it would be
        # left behind holding its model's memory: nothing can reach it now
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def __enter__(self) -> EmbeddedTritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
