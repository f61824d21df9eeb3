"""Secure defaults without a server: keys and where they come from, loopback, Triton's
restriction flags, the frontend's limits and path redaction. Live: test_security_live.py."""

from __future__ import annotations

import os
import stat

import pytest

from aigc.errors import ConfigError
from serving import security
from serving.openai_api.guard import redact_paths
from serving.openai_api.options import FrontendOptions

KEY = "k" * 8 + "-test-key-0123456789"


def test_loopback_addresses():
    assert all(security.is_loopback(h) for h in ("127.0.0.1", "127.3.2.1", "::1", "localhost"))
    assert not any(security.is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.org", ""))


def test_keys_come_from_a_file_or_the_environment_and_bad_ones_are_named(tmp_path, monkeypatch):
    monkeypatch.delenv(security.TRITON_KEY_ENV, raising=False)
    assert security.read_key(None) is None
    monkeypatch.setenv(security.TRITON_KEY_ENV, KEY)
    assert security.read_key(None) == KEY
    f = tmp_path / "key"
    f.write_text(KEY[::-1] + "\n")
    assert security.read_key(f) == KEY[::-1]  # the file wins over the environment
    for text, words in (("", "the file is empty"), ("short", "at least 16"), ("a" * 20 + ":x", "without")):
        f.write_text(text)
        with pytest.raises(ConfigError, match=words):
            security.read_key(f)
    with pytest.raises(ConfigError, match="--triton-key-file .*missing: cannot read it"):
        security.read_key(tmp_path / "missing")


def test_beyond_loopback_a_key_is_made_readable_by_its_owner_only(tmp_path):
    assert security.serve_key("127.0.0.1", None, tmp_path) is None
    assert security.serve_key("0.0.0.0", KEY, tmp_path) == KEY
    key = security.serve_key("0.0.0.0", None, tmp_path / "runs")
    path = tmp_path / "runs" / "triton.key"
    assert path.read_text().strip() == key and len(key) >= 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    args = security.triton_args(key)
    assert args[0].startswith("--grpc-restricted-protocol=model-repository,model-config,")
    assert args[0].endswith(f":{security.TRITON_KEY_HEADER}={key}") and args[1].startswith(
        "--http-restricted-api="
    )


def test_paths_are_redacted_from_server_messages():
    text = redact_paths("failed to load /opt/models/gpt2/3/model.py: bad; see ./a and http://h:1/x")
    assert text == "failed to load <path>: bad; see ./a and http://h:1/x"


def test_frontend_limits_are_checked():
    with pytest.raises(ConfigError, match="--max-body-bytes must be in 1024"):
        FrontendOptions(max_body_bytes=10).validate()
    with pytest.raises(ConfigError, match="--max-concurrent-requests"):
        FrontendOptions(max_concurrent=0).validate()
    with pytest.raises(ConfigError, match="--cors-origins: 'app.example' is not an origin"):
        FrontendOptions(cors_origins=("app.example",)).validate()
