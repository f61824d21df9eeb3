"""The OpenAI frontend's exposure settings: where it binds, who may call it, how much it takes.

Secure by default where it costs nothing: loopback only, CORS off, a body limit and a
concurrency limit always on; an API key (`--openai-api-key-file` or `AIGC_OPENAI_API_KEY`)
checked on every `/v1` route when given, and a warning when the frontend binds beyond
loopback without one.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from aigc.errors import ConfigError
from serving.security import OPENAI_KEY_ENV, read_key

MAX_BODY_BYTES = 4 * 2**20  # a batch of long prompts as token ids fits; a runaway upload does not
MAX_CONCURRENT = 256  # requests in flight; the engine queues beyond its own sequences


@dataclass(frozen=True)
class FrontendOptions:
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = MAX_BODY_BYTES
    max_concurrent: int = MAX_CONCURRENT

    def validate(self) -> None:
        if not 1024 <= self.max_body_bytes <= 2**30:
            raise ConfigError(f"--max-body-bytes must be in 1024..{2**30}, got {self.max_body_bytes}")
        if not 1 <= self.max_concurrent <= 100_000:
            raise ConfigError(f"--max-concurrent-requests must be in 1..100000, got {self.max_concurrent}")
        for origin in self.cors_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ConfigError(f"--cors-origins: {origin!r} is not an origin (scheme://host[:port], or *)")

    @staticmethod
    def add_arguments(group: argparse._ActionsContainer) -> None:
        group.add_argument(
            "--openai-host",
            default=None,
            help="address the OpenAI API binds (default 127.0.0.1, loopback only)",
        )
        group.add_argument(
            "--openai-api-key-file",
            type=Path,
            help=f"a file holding the API key every /v1 request must send as 'Authorization: Bearer "
            f"<key>' (default ${OPENAI_KEY_ENV}; none: no key asked)",
        )
        group.add_argument(
            "--cors-origins",
            default="",
            help="comma-separated origins browsers may call the API from (default none: CORS off)",
        )
        group.add_argument(
            "--max-body-bytes",
            type=int,
            default=MAX_BODY_BYTES,
            help=f"largest request body; beyond it 413 (default {MAX_BODY_BYTES})",
        )
        group.add_argument(
            "--max-concurrent-requests",
            type=int,
            default=MAX_CONCURRENT,
            help=f"requests in flight at once; beyond it 503 with Retry-After (default {MAX_CONCURRENT})",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FrontendOptions:
        options = cls(
            api_key=read_key(args.openai_api_key_file, OPENAI_KEY_ENV, "--openai-api-key-file"),
            cors_origins=tuple(o.strip() for o in args.cors_origins.split(",") if o.strip()),
            max_body_bytes=args.max_body_bytes,
            max_concurrent=args.max_concurrent_requests,
        )
        options.validate()
        return options
