"""The CI gate: every ratio of a run against its committed bound (benchmarks/thresholds.json)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from aigc.errors import BenchmarkError, ConfigError

logger = logging.getLogger("benchmarks.report")

THRESHOLDS = Path(__file__).parent / "thresholds.json"


def check_gate(measured: dict, thresholds: dict) -> list[str]:
    """Every ratio outside its committed bound, as a message; empty when all hold."""
    failures = []
    for name, bound in thresholds.items():
        if name.startswith("_"):
            continue
        if not isinstance(bound, dict):
            bound = {"min": bound}  # {"name": 1.5} is a lower bound
        value = measured.get(name)
        if value is None:
            failures.append(f"{name}: not measured in this run")
            continue
        if "min" in bound and value < bound["min"]:
            failures.append(f"{name} = {value} is below the threshold {bound['min']}")
        if "max" in bound and value > bound["max"]:
            failures.append(f"{name} = {value} is above the threshold {bound['max']}")
    return failures


def load_thresholds(path: Path | None = None) -> dict:
    path = Path(path or THRESHOLDS)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--gate {path}: unreadable thresholds ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"--gate {path}: expected a JSON object of ratio names to bounds")
    for name, bound in data.items():
        if name.startswith("_"):
            continue
        ok = isinstance(bound, int | float) or (
            isinstance(bound, dict)
            and bound
            and set(bound) <= {"min", "max"}
            and all(isinstance(v, int | float) for v in bound.values())
        )
        if not ok:
            raise ConfigError(
                f"--gate {path}: {name}: expected a number or {{'min': x, 'max': y}}, got {bound}"
            )
    return data


def gate(results: dict, thresholds: dict) -> None:
    """Raise BenchmarkError listing every ratio outside its threshold."""
    failures = check_gate(results["ratios"], thresholds)
    if failures:
        raise BenchmarkError("benchmark gate failed:\n  " + "\n  ".join(failures))
    logger.info(
        "benchmark gate passed (%d thresholds)", len([k for k in thresholds if not k.startswith("_")])
    )
