"""`python -m serving.openai_api`: the OpenAI frontend alone (`aigc openai` without the
rest of the CLI, for an image that carries only the serving packages)."""

from __future__ import annotations

import argparse
import logging
import sys

from aigc.errors import AigcError
from serving.commands import add_openai_arguments, run_openai


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.openai_api", description=__doc__.split("\n\n")[0]
    )
    add_openai_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run_openai(args)
    except AigcError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201 - the command's error line
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
