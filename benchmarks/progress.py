"""Progress of `aigc bench`: a bar on a terminal, log lines in CI."""

from __future__ import annotations

import logging

logger = logging.getLogger("benchmarks.api")


def step(bar, text: str) -> None:
    """The bar's label on a terminal, a log line otherwise (CI logs)."""
    bar.set_postfix_str(text)
    if bar.disable:
        logger.info("bench: %s", text)
