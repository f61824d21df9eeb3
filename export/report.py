"""The export report: one entry per variant with its files, size, fidelity and latency."""

from __future__ import annotations

from pathlib import Path


def files_size(files: dict[str, str], root: Path) -> int:
    total = 0
    for rel in files.values():
        p = root / rel
        total += p.stat().st_size
        # ONNX external data beside the graph, or an OpenVINO IR's weights
        for data in (p.with_name(p.name + ".data"), p.with_suffix(".bin")):
            if data != p and data.exists():
                total += data.stat().st_size
    return total


def variant_entry(
    target: str,
    files: dict,
    root: Path,
    fidelity: dict,
    latency: dict,
    passed=True,
    reason=None,
    runtime: str = "onnxruntime",
    **extra,
) -> dict:
    return {
        "target": target,
        "runtime": runtime,  # what runs the files: onnxruntime | openvino
        "passed": passed,
        "reason": reason,
        "files": files,
        "size_bytes": files_size(files, root),
        "fidelity": fidelity,
        "latency_ms": latency,
        **extra,
    }
