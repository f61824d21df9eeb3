"""Secure defaults when the ports leave loopback, against the real server: Triton's control
APIs behind a key (on 0.0.0.0), and the OpenAI frontend's door: API key, body and
concurrency limits, CORS, error bodies without paths, its own metrics."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from aigc.errors import ServerError
from serving import security
from serving.builder import BuildOptions, build_repository
from serving.control import reload, served_versions
from serving.openai_api import OpenAIFrontend
from serving.openai_api.options import FrontendOptions
from serving.server import EmbeddedTritonServer

KEY = "k" * 8 + "-test-key-0123456789"


def _request(url: str, method: str, path: str, body=None, headers=None) -> tuple[int, dict, dict]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = {"text": raw.decode()}
        return resp.status, parsed, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


# -- keys and addresses ------------------------------------------------------------------------
# -- Triton's control APIs on a non-loopback address ------------------------------------------------
@pytest.fixture(scope="module")
def exposed_triton(exports, tmp_path_factory):
    """The embedded Triton on 0.0.0.0 with its control APIs behind a key (dcgan only)."""
    repo = tmp_path_factory.mktemp("exposed") / "model_repository"
    build_repository([exports["dcgan"]], repo, BuildOptions(variant="fp32", intra_op_threads=1))
    key = security.serve_key("0.0.0.0", None, repo.parent / "runs")
    with EmbeddedTritonServer(
        repo, host="0.0.0.0", grpc_port=0, http_port=0, metrics_port=0, control_key=key
    ) as srv:
        yield srv, key


@pytest.mark.server
def test_an_unload_or_load_without_the_key_is_refused_and_the_model_keeps_serving(exposed_triton):
    srv, key = exposed_triton
    with grpcclient.InferenceServerClient(srv.grpc_url) as client:
        for call in (client.unload_model, client.load_model):
            with pytest.raises(InferenceServerException) as err:
                call("dcgan")
            assert "restricted" in err.value.message().lower() or "PERMISSION" in str(err.value.status())
        with pytest.raises(InferenceServerException):
            client.unload_model("dcgan", headers={security.GRPC_KEY_HEADER: "x" * 20})
        with pytest.raises(InferenceServerException):
            client.get_model_config("dcgan")
        assert client.is_model_ready("dcgan")  # health, metadata and inference stay open
        assert client.get_model_metadata("dcgan").name == "dcgan"
    with pytest.raises(ServerError, match="restricts its control APIs to a key: pass --triton-key-file"):
        served_versions(srv.grpc_url, "dcgan")
    with pytest.raises(ServerError, match="previous one keeps serving.*--triton-key-file"):
        reload(srv.grpc_url, "dcgan")
    assert reload(srv.grpc_url, "dcgan", key=key) == 1  # with the key: loaded and checked
    load = f"http://{srv.http_url}/v2/repository/models/dcgan/load"
    for headers, status in (({}, 403), ({security.TRITON_KEY_HEADER: key}, 200)):
        try:
            req = urllib.request.Request(load, data=b"{}", headers=headers, method="POST")
            got = urllib.request.urlopen(req, timeout=60).status
        except urllib.error.HTTPError as exc:
            got = exc.code
        assert got == status
    with open(srv.log_file) as f:
        assert key not in f.read()
    # the frontend reads the repository index with the key, and cannot without it
    for frontend_key, status in ((key, 200), (None, 503)):
        with OpenAIFrontend(srv.grpc_url, srv.repository, triton_key=frontend_key) as frontend:
            got, body, _ = _request(frontend.url, "GET", "/v1/models")
            assert got == status, body
            assert (
                body == {"object": "list", "data": []}
                if status == 200
                else "restricted" in body["error"]["message"]
            )


# -- the OpenAI frontend's door ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def guarded(server, fp32_repository):
    options = FrontendOptions(
        api_key=KEY, max_body_bytes=4096, max_concurrent=1, cors_origins=("https://app.example",)
    )
    with OpenAIFrontend(server.grpc_url, fp32_repository, options=options) as frontend:
        yield frontend


AUTH = {"Authorization": f"Bearer {KEY}"}
SMALL = {"model": "gpt2", "prompt": "The class", "max_tokens": 2, "temperature": 0}


@pytest.mark.server
def test_v1_routes_need_the_api_key(guarded):
    for headers in ({}, {"Authorization": "Bearer wrong-key-000000000"}, {"Authorization": KEY}):
        status, body, got = _request(guarded.url, "POST", "/v1/completions", SMALL, headers)
        assert status == 401 and body["error"]["code"] == "invalid_api_key", body
        assert got["www-authenticate"] == "Bearer"
    assert _request(guarded.url, "GET", "/v1/models")[0] == 401
    status, body, _ = _request(guarded.url, "POST", "/v1/completions", SMALL, AUTH)
    assert status == 200 and body["choices"][0]["text"] is not None
    assert _request(guarded.url, "GET", "/health")[0] == 200  # probes need no key


@pytest.mark.server
def test_an_oversized_body_gets_413_with_or_without_a_length(guarded):
    big = dict(SMALL, prompt="x" * 5000)
    status, body, _ = _request(guarded.url, "POST", "/v1/completions", big, AUTH)
    assert status == 413 and "limit of 4096 bytes" in body["error"]["message"]
    host, port = guarded.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:  # chunked: no length
        head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(f"{head}Authorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"x" * 3000
        for _ in range(2):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sock.sendall(b"0\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 413")
    assert _request(guarded.url, "POST", "/v1/completions", SMALL, AUTH)[0] == 200


@pytest.mark.server
def test_past_the_concurrency_limit_503_with_retry_after(guarded):
    """One request held in flight (its body not yet complete): the next is refused at once."""
    host, port = guarded.url.removeprefix("http://").split(":")
    body = json.dumps(SMALL).encode()
    with socket.create_connection((host, int(port)), timeout=30) as held:
        head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        held.sendall(f"{head}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        held.sendall(body[:10])
        deadline = time.monotonic() + 10
        while True:
            status, err, headers = _request(guarded.url, "POST", "/v1/completions", SMALL, AUTH)
            if status == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status == 503 and headers["retry-after"] == "1" and err["error"]["code"] == "server_busy"
        held.sendall(body[10:])
        assert held.recv(65536).startswith(b"HTTP/1.1 200")
    assert _request(guarded.url, "POST", "/v1/completions", SMALL, AUTH)[0] == 200


@pytest.mark.server
def test_cors_is_answered_for_the_given_origin_only(guarded):
    pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    status, _, headers = _request(guarded.url, "OPTIONS", "/v1/completions", None, pre)
    assert status == 200 and headers["access-control-allow-origin"] == "https://app.example"
    status, _, headers = _request(
        guarded.url, "OPTIONS", "/v1/completions", None, dict(pre, Origin="https://evil.example")
    )
    assert status == 400 and "access-control-allow-origin" not in headers


@pytest.mark.server
def test_the_frontend_counts_its_requests(guarded):
    _request(guarded.url, "POST", "/v1/completions", SMALL, AUTH)
    status, body, _ = _request(guarded.url, "GET", "/metrics")
    text = body["text"]
    assert status == 200
    assert 'aigc_http_requests_total{method="POST",route="/v1/completions",status="200"}' in text
    assert 'aigc_http_requests_total{method="POST",route="/v1/completions",status="401"}' in text
    assert 'aigc_http_request_duration_seconds_count{method="POST",route="/v1/completions"}' in text
    assert 'aigc_http_requests_rejected_total{reason="api_key"}' in text


@pytest.mark.server
def test_error_bodies_are_openai_errors_without_tracebacks():
    """Triton unreachable: 503 in OpenAI's shape, the gRPC detail logged, no traceback sent;
    FastAPI's own 404 and 405 in the same shape. (Paths in server messages: redacted, see
    test_security.py.)"""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with OpenAIFrontend(f"127.0.0.1:{port}", None) as frontend:
        status, body, headers = _request(frontend.url, "POST", "/v1/completions", SMALL)
        assert status == 503 and headers["retry-after"] == "1"
        assert set(body["error"]) == {"message", "type", "param", "code"} and "Traceback" not in json.dumps(
            body
        )
        for method, path, code in (("GET", "/v2/nothing", 404), ("GET", "/v1/completions", 405)):
            status, body, _ = _request(frontend.url, method, path)
            assert status == code and set(body["error"]) == {"message", "type", "param", "code"}
