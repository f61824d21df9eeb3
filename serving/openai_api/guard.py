"""The frontend's door: one ASGI middleware in front of every route.

In order: `/v1` routes ask for the API key (401 without it); requests beyond the concurrency
limit get 503 with `Retry-After`; a body beyond the limit gets 413 (by its Content-Length, or
while it is read when it has none); and every request is counted, by route and status, with
its latency, for `/metrics` (Prometheus text, beside Triton's own metrics endpoint).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import defaultdict

from serving.openai_api.options import FrontendOptions
from serving.security import same_key

# latency buckets (seconds) of the request histogram: a token-id lookup to a long generation
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_PATH_LIKE = re.compile(r"(?<![\w.])(?:/[\w.@+-]+){2,}/?")


def redact_paths(message: str) -> str:
    """`message` with file-system paths replaced by `<path>` (server errors are logged whole)."""
    return _PATH_LIKE.sub("<path>", message)


def error_body(status: int, message: str, code: str | None = None) -> bytes:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


class BodyTooLarge(Exception):
    """A request body beyond `max_body_bytes`, found while it was read (no Content-Length)."""

    def __init__(self, limit: int):
        super().__init__(f"the request body is larger than this server's limit of {limit} bytes")


class HttpMetrics:
    """Request counts and latencies by method, route and status; Prometheus text."""

    def __init__(self):
        self._lock = threading.Lock()
        self._count: dict[tuple, int] = defaultdict(int)
        self._buckets: dict[tuple, list[int]] = defaultdict(lambda: [0] * len(BUCKETS))
        self._sum: dict[tuple, float] = defaultdict(float)
        self.in_flight = 0
        self.rejected: dict[str, int] = defaultdict(int)  # reason -> count

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._count[(method, route, str(status))] += 1
            key = (method, route)
            self._sum[key] += seconds
            buckets = self._buckets[key]
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1

    def text(self) -> str:
        lines = [
            "# HELP aigc_http_requests_total HTTP requests answered by the OpenAI frontend.",
            "# TYPE aigc_http_requests_total counter",
        ]
        with self._lock:
            for (method, route, status), n in sorted(self._count.items()):
                lines.append(
                    f'aigc_http_requests_total{{method="{method}",route="{route}",status="{status}"}} {n}'
                )
            lines += [
                "# HELP aigc_http_request_duration_seconds Time from a request's arrival to its last byte.",
                "# TYPE aigc_http_request_duration_seconds histogram",
            ]
            for (method, route), buckets in sorted(self._buckets.items()):
                labels = f'method="{method}",route="{route}"'
                total = sum(n for (m, r, _), n in self._count.items() if (m, r) == (method, route))
                for bound, n in zip(BUCKETS, buckets, strict=True):
                    lines.append(f'aigc_http_request_duration_seconds_bucket{{{labels},le="{bound:g}"}} {n}')
                lines.append(f'aigc_http_request_duration_seconds_bucket{{{labels},le="+Inf"}} {total}')
                lines.append(
                    f"aigc_http_request_duration_seconds_sum{{{labels}}} {self._sum[(method, route)]:.6f}"
                )
                lines.append(f"aigc_http_request_duration_seconds_count{{{labels}}} {total}")
            lines += [
                "# HELP aigc_http_requests_in_flight Requests being answered now.",
                "# TYPE aigc_http_requests_in_flight gauge",
                f"aigc_http_requests_in_flight {self.in_flight}",
                "# HELP aigc_http_requests_rejected_total Requests refused at the door, by reason.",
                "# TYPE aigc_http_requests_rejected_total counter",
            ]
            for reason, n in sorted(self.rejected.items()):
                lines.append(f'aigc_http_requests_rejected_total{{reason="{reason}"}} {n}')
        return "\n".join(lines) + "\n"


class Guard:
    """The ASGI middleware (see the module's docstring); `routes` maps a request path to the
    route template it is counted under (unknown paths count as `other`)."""

    def __init__(self, app, options: FrontendOptions, metrics: HttpMetrics, routes):
        self.app, self.options, self.metrics, self.routes = app, options, metrics, routes
        self._lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        method, path = scope["method"], scope["path"]
        status = {"code": 500}

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            refusal = self._refuse(scope)
            if refusal is not None:
                reason, code, body, headers = refusal
                with self._lock:
                    self.metrics.rejected[reason] += 1
                await _answer(send_counted, code, body, headers)
                return
            if path.startswith("/v1/") and method == "POST":
                with self._lock:
                    if self.metrics.in_flight >= self.options.max_concurrent:
                        self.metrics.rejected["concurrency"] += 1
                        full = True
                    else:
                        self.metrics.in_flight += 1
                        full = False
                if full:
                    message = (
                        f"the server is at its limit of {self.options.max_concurrent} concurrent "
                        "requests; retry shortly"
                    )
                    await _answer(
                        send_counted, 503, error_body(503, message, "server_busy"), [(b"retry-after", b"1")]
                    )
                    return
                try:
                    await self.app(scope, self._limited(receive), send_counted)
                finally:
                    with self._lock:
                        self.metrics.in_flight -= 1
                return
            await self.app(scope, self._limited(receive), send_counted)
        finally:
            self.metrics.observe(method, self.routes(path), status["code"], time.perf_counter() - start)

    def _refuse(self, scope):
        """(reason, status, body, headers) of a request refused before the app sees it."""
        headers = dict(scope.get("headers") or [])
        if self.options.api_key and scope["path"].startswith("/v1/") and scope["method"] != "OPTIONS":
            auth = headers.get(b"authorization", b"").decode("latin-1")
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
            if not same_key(token, self.options.api_key):
                message = "a valid API key is required: send 'Authorization: Bearer <key>'"
                body = error_body(401, message, "invalid_api_key")
                return "api_key", 401, body, [(b"www-authenticate", b"Bearer")]
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_large = int(length) > self.options.max_body_bytes
            except ValueError:
                return "bad_length", 400, error_body(400, "Content-Length is not a number"), []
            if too_large:
                message = f"the request body is larger than this server's limit of {self.options.max_body_bytes} bytes"
                return "body_size", 413, error_body(413, message, "request_too_large"), []
        return None

    def _limited(self, receive):
        limit, seen = self.options.max_body_bytes, 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    with self._lock:
                        self.metrics.rejected["body_size"] += 1
                    raise BodyTooLarge(limit)
            return message

        return counted


async def _answer(send, status: int, body: bytes, headers: list) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
