"""The real Triton server's lifecycle: a port in use named, a model failing to load reported with
Triton's reason, version switch and rollback, a stream cut by a stop ending with an error, the
drain within the exit timeout, the request timeout from the repository config, a client kept
across a restart."""

from __future__ import annotations

import re
import shutil
import socket
from pathlib import Path

import pytest
from support import start_server

from aigc.errors import ServerError
from engine.config import EngineConfig
from serving.builder import BuildOptions, build_repository
from serving.repository import read_config
from serving.server import EmbeddedTritonServer


@pytest.mark.server
def test_port_in_use_is_named(fp32_repository, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        srv = EmbeddedTritonServer(
            fp32_repository, grpc_port=port, http_port=0, metrics_port=0, log_file=tmp_path / "t.log"
        )
        with pytest.raises(ServerError, match=f"port {port} \\(gRPC\\).*in use"):
            srv.start()


@pytest.mark.server
def test_model_that_fails_to_load_reports_tritons_reason(exports, tmp_path):
    repo = tmp_path / "repo"
    build_repository([exports["dcgan"]], repo, BuildOptions(variant="fp32"))
    (repo / "dcgan" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    with pytest.raises(ServerError, match="dcgan") as err:
        start_server(repo, startup_timeout_s=120)
    assert "failed to load 'dcgan'" in str(err.value)


@pytest.mark.server
def test_new_version_switches_after_load_and_rollback_returns(exports, tmp_path):
    """Build v1, serve it, build v2 and switch the running server to it, then roll back."""
    from serving.control import reload, rollback, served_versions

    repo = tmp_path / "repo"
    build_repository([exports["dcgan"]], repo, BuildOptions(variant="fp32"))
    srv = start_server(repo)
    try:
        assert served_versions(srv.grpc_url, "dcgan") == [1]
        build_repository([exports["dcgan"]], repo, BuildOptions(variant="int8"))
        assert reload(srv.grpc_url, "dcgan") == 2
        assert served_versions(srv.grpc_url, "dcgan") == [2]
        # A broken version 3 fails to load; version 2 keeps serving.
        build_repository([exports["dcgan"]], repo, BuildOptions(variant="fp32"))
        (repo / "dcgan" / "3" / "model.onnx").write_bytes(b"broken")
        with pytest.raises(ServerError, match="previous one keeps serving"):
            reload(srv.grpc_url, "dcgan")
        from serving.client import AigcClient

        with AigcClient(srv.grpc_url) as c:
            assert c.generate_images("dcgan", n=1, seed=0).shape == (1, 32, 32, 1)
        assert rollback(repo, "dcgan", srv.grpc_url) == 2
        assert rollback(repo, "dcgan", srv.grpc_url) == 1
        assert served_versions(srv.grpc_url, "dcgan") == [1]
        assert sorted(p.name.split("-")[0] for p in (tmp_path / "repo.retired" / "dcgan").iterdir()) == [
            "2",
            "3",
        ]
    finally:
        srv.stop()


def _live_in_group(pgid: int) -> list[str]:
    """The processes of process group `pgid` still running (zombies, which only wait for
    their parent to read their status, left out), as `pid command`."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(f"{stat.parent.name} {(stat.parent / 'comm').read_text().strip()}")
    return live


@pytest.mark.server
def test_stream_cut_by_server_stop_ends_with_an_error_not_a_hang(fp32_repository, tmp_path):
    import threading
    import time

    from aigc.errors import ClientError
    from serving.client import AigcClient

    repo = tmp_path / "repo"
    shutil.copytree(fp32_repository, repo)
    srv = start_server(repo, exit_timeout_s=1)
    outcome, details = {}, {}

    def stream():
        try:
            with AigcClient(srv.grpc_url, timeout_s=20) as c:
                for _ in c.generate_text("The class", max_tokens=120, ignore_eos=True, details=details):
                    time.sleep(0.05)  # a slow reader keeps the stream open
            outcome["result"] = "completed"
        except ClientError as exc:
            outcome["result"] = f"error: {exc}"

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    srv.stop()
    t.join(30)
    assert not t.is_alive(), "the client hung after the server stopped"
    assert time.monotonic() - t0 < 30
    # nothing of the server is left running: no Python-backend stub outlives Triton (a
    # process killed takes a moment to go)
    deadline = time.monotonic() + 10
    while _live_in_group(srv.process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _live_in_group(srv.process.pid) == []
    # The tiny model may write all 120 tokens before the stop (the slow reader drains them from
    # the client's buffer): then the text is whole. Otherwise the error says the server went.
    if outcome["result"] == "completed":
        assert details["completion_tokens"] == 120 and details["finish_reason"] == "length"
    else:
        assert re.search(
            r"shutting down|UNAVAILABLE|Socket closed|Stream removed|no response|connect", outcome["result"]
        ), outcome["result"]


@pytest.mark.server
def test_stop_drains_a_stream_in_flight_within_the_exit_timeout(fp32_repository, tmp_path):
    """SIGTERM with a generous exit timeout lets an active stream finish, every token delivered."""
    import threading
    import time

    from serving.client import AigcClient

    repo = tmp_path / "repo"
    shutil.copytree(fp32_repository, repo)
    srv = start_server(repo, exit_timeout_s=30)
    with AigcClient(srv.grpc_url, timeout_s=30) as c:
        solo = c.generate_text("The class", max_tokens=120, ignore_eos=True, stream=False)
    pieces = []

    def stream():
        with AigcClient(srv.grpc_url, timeout_s=30) as c:
            for piece in c.generate_text("The class", max_tokens=120, ignore_eos=True):
                pieces.append(piece)
                time.sleep(0.01)

    t = threading.Thread(target=stream)
    t.start()
    while not pieces and t.is_alive():
        time.sleep(0.01)
    srv.stop()
    t.join(30)
    assert not t.is_alive()
    assert "".join(pieces) == solo


@pytest.mark.server
def test_a_stream_interval_from_the_repository_config_sends_fewer_larger_responses(exports, tmp_path):
    """`--stream-interval 4`: after the first token a response carries at least 4 tokens (the
    last excepted), through the real server; the streamed text is the whole text."""
    from serving.client import AigcClient

    repo = tmp_path / "repo"
    build_repository(
        [exports["gpt2"]], repo, BuildOptions(variant="fp32", engine=EngineConfig(stream_interval=4))
    )
    srv = start_server(repo)
    try:
        with AigcClient(srv.grpc_url) as c:
            pieces = list(c.generate_text("The class", max_tokens=17, ignore_eos=True, stream=True))
            whole = c.generate_text("The class", max_tokens=17, ignore_eos=True, stream=False)
        assert "".join(pieces) == whole
        # the first at once, then 4 tokens or more a response (a busy sender puts more together)
        assert 2 <= len(pieces) <= 1 + 16 // 4 + 1
    finally:
        srv.stop()


@pytest.mark.server
def test_request_timeout_comes_from_the_repository_config(exports, tmp_path):
    """A deadline shorter than any step (a microsecond) ends every request with the named error,
    whatever the machine's speed; the model keeps answering."""
    from aigc.errors import ClientError
    from serving.client import AigcClient

    repo = tmp_path / "repo"
    build_repository(
        [exports["gpt2"]], repo, BuildOptions(variant="fp32", engine=EngineConfig(max_request_seconds=1e-6))
    )
    assert read_config(repo / "gpt2").parameters["max_request_seconds"].string_value == "1e-06"
    srv = start_server(repo)
    try:
        with AigcClient(srv.grpc_url) as c:
            for stream in (True, False):
                with pytest.raises(ClientError, match=r"max_request_seconds \(1e-06 s\)"):
                    out = c.generate_text("The class", max_tokens=120, ignore_eos=True, stream=stream)
                    list(out) if stream else None
            assert c.is_ready("gpt2")
    finally:
        srv.stop()


@pytest.mark.server
def test_a_client_kept_across_a_server_restart_reaches_the_new_server(exports, tmp_path):
    """A client's channel outlives a restart of the server on the same port: while the server
    is away a text request fails naming the address, once `retry_deadline_s` has passed; the
    next one reaches the restarted server (the channel's reconnect backoff is capped at 1 s;
    gRPC's default grows to 120 s while a server is away)."""
    import time

    from aigc.errors import ClientError
    from serving.client import AigcClient

    repo = tmp_path / "repo"
    build_repository([exports["gpt2"]], repo, BuildOptions(variant="fp32", intra_op_threads=1))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def serve():
        return EmbeddedTritonServer(
            repo, grpc_port=port, http_port=0, metrics_port=0, log_file=tmp_path / "triton.log"
        )

    with AigcClient(f"127.0.0.1:{port}", timeout_s=60, retry_deadline_s=5) as client:
        with serve():
            client.wait_ready(60, "gpt2")
            assert client.generate_text("The class", max_tokens=3, ignore_eos=True, stream=False)
        with pytest.raises(ClientError, match=f"127.0.0.1:{port}"):
            client.generate_text("The class", max_tokens=3, stream=False)
        time.sleep(3)  # the server stays away a while, as a restart does
        with serve():
            assert client.generate_text("The class", max_tokens=3, ignore_eos=True, stream=False)
