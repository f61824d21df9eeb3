"""The embedded server and the client without a running model: an empty repository refused, and
the client's retries naming the address it could not reach."""

from __future__ import annotations

import pytest

from aigc.errors import ServerError
from serving.server import EmbeddedTritonServer


def test_empty_repository_is_refused(tmp_path):
    (tmp_path / "repo").mkdir()
    with pytest.raises(ServerError, match="aigc build"):
        EmbeddedTritonServer(tmp_path / "repo").start()


def test_client_retries_unavailable_then_names_the_address(tmp_path):
    import time

    from aigc.errors import ClientError
    from serving.client import AigcClient
    from serving.server import free_port

    port = free_port()
    with AigcClient(f"127.0.0.1:{port}", timeout_s=2, retry_deadline_s=1.5) as c:
        t0 = time.monotonic()
        with pytest.raises(ClientError, match=str(port)):
            c.generate_images("dcgan", n=1)
        # Retried with backoff (0.1 + 0.2 + 0.4 s) inside the 1.5 s deadline, then gave up.
        assert 0.6 <= time.monotonic() - t0 < 10
