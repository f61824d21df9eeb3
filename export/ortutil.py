"""ONNX Runtime helpers shared by validation, quantization and the latency probe."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from engine.runners.ortsession import session_options


def cpu_can_run(path: Path) -> bool:
    """Whether the CPU execution provider can create a session for this model."""
    try:
        make_session(path)
    except Exception:  # noqa: BLE001 - any load failure means "not on this EP"
        return False
    return True


def make_session(
    path: Path, threads: int | None = None, providers: list[str] | None = None
) -> ort.InferenceSession:
    opts = session_options(threads or 0)
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"])


def median_ms(fn: Callable[[], object], warmup: int = 3, repeat: int = 20) -> float:
    """Median wall time of `fn` in milliseconds after a warm-up (never a single run)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
