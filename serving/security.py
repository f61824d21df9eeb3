"""What keeps a served repository from being taken over when its ports leave loopback.

Triton's model-repository API loads and unloads models (and, with uploaded files, models
nobody built here); the served models are Python-backend models, so whoever may load one
may run code in the server. Triton checks a header on the APIs it is told to restrict
(`--grpc-restricted-protocol` / `--http-restricted-api`): `aigc serve` restricts the
control APIs (`RESTRICTED`) with a key whenever Triton binds beyond loopback, and whenever a
key is given. Inference, health and metadata stay open to whoever reaches the port.

The key is read from a file (`--triton-key-file`) or the `AIGC_TRITON_KEY` environment
variable; where Triton binds beyond loopback and neither is given, `aigc serve` makes one
and writes it, readable by its owner only, beside Triton's log. `aigc build --url`,
`aigc rollback --url` and the OpenAI frontend send it.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
from pathlib import Path

from aigc.errors import ConfigError

logger = logging.getLogger(__name__)

TRITON_KEY_ENV = "AIGC_TRITON_KEY"
TRITON_KEY_HEADER = "aigc-triton-key"  # the HTTP header; gRPC metadata keys are lower case
# Triton's gRPC server looks for the restricted key under this prefix
GRPC_KEY_HEADER = "triton-grpc-protocol-" + TRITON_KEY_HEADER
# Triton's APIs that change or reveal the deployment; not health, metadata or inference
RESTRICTED = ("model-repository", "model-config", "shared-memory", "statistics", "trace", "logging")
OPENAI_KEY_ENV = "AIGC_OPENAI_API_KEY"

EMBEDDED_WARNING = (
    "the embedded Triton (from the nvidia-pytriton wheel, Triton 2.51) predates the fixes of "
    "Triton 25.07 (CVE-2025-23310/23311 in its HTTP stack, CVE-2025-23319/23320/23334 in the "
    "Python backend): it is fit for loopback and trusted networks, not for exposure. Deploy "
    "the container in deploy/ (Triton 25.10) for that; see docs/SECURITY.md"
)


def is_loopback(host: str) -> bool:
    """Whether `host` binds loopback only ('localhost', 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def read_key(path: Path | None, env: str = TRITON_KEY_ENV, what: str = "--triton-key-file") -> str | None:
    """The key in `path` (stripped), else in the environment variable `env`, else None."""
    if path is not None:
        try:
            key = Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{what} {path}: cannot read it ({exc.strerror})") from None
        if not key:
            raise ConfigError(f"{what} {path}: the file is empty")
        return _checked(key, what)
    key = os.environ.get(env, "").strip()
    return _checked(key, f"${env}") if key else None


def _checked(key: str, what: str) -> str:
    if len(key) < 16 or any(c.isspace() or not c.isprintable() or c in ",:=" for c in key):
        raise ConfigError(
            f"{what}: a key must be at least 16 printable characters without spaces, ',', ':' or '='"
        )
    return key


def serve_key(host: str, key: str | None, folder: Path) -> str | None:
    """The key Triton's control APIs get: `key`, or where Triton binds beyond loopback
    without one, a new key written to `folder/triton.key` (mode 0600)."""
    if key or is_loopback(host):
        return key
    key = secrets.token_urlsafe(32)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "triton.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.chmod(path, 0o600)
    logger.warning(
        "Triton binds %s: its control APIs (%s) need the key in %s (aigc build/rollback --url: "
        "--triton-key-file %s, or $%s)",
        host,
        ", ".join(RESTRICTED),
        path,
        path,
        TRITON_KEY_ENV,
    )
    return key


def triton_args(key: str | None) -> list[str]:
    """Triton's flags that restrict its control APIs to requests carrying `key`."""
    if not key:
        return []
    apis = ",".join(RESTRICTED)
    return [
        f"--grpc-restricted-protocol={apis}:{TRITON_KEY_HEADER}={key}",
        f"--http-restricted-api={apis}:{TRITON_KEY_HEADER}={key}",
    ]


def key_headers(key: str | None, protocol: str = "grpc") -> dict[str, str] | None:
    """The gRPC metadata (or HTTP headers) that carry `key` to Triton (None without one)."""
    if not key:
        return None
    return {GRPC_KEY_HEADER if protocol == "grpc" else TRITON_KEY_HEADER: key}


def same_key(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented key."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
