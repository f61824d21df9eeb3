"""The peers' child process: `python -m benchmarks.peers convert|measure JOB.json RESULT.json
[--verbose]` reads the job, does the conversion or the measuring and writes its result."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from benchmarks.peers.child import convert_job, measure_job


def main(argv: list[str] | None = None) -> int:
    """A child process: `python -m benchmarks.peers convert|measure JOB.json RESULT.json [--verbose]`."""
    args = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in args
    mode, job_file, result_file = [a for a in args if a != "--verbose"]
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr)
    job = json.loads(Path(job_file).read_text())
    result = {"convert": convert_job, "measure": measure_job}[mode](job)
    Path(result_file).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
