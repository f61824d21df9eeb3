"""The export variants, and each kind's export spec (kept in its `aigc.registry` entry).

A spec says which ONNX components a checkpoint becomes, the tensors of each, the opset
and the tolerance of the fp32 parity check; the export functions themselves are shared.
"""

from __future__ import annotations

from aigc import registry
from aigc.registry import ComponentSpec, ExportSpec, TensorSpec

__all__ = ["VARIANTS", "OPENVINO_VARIANTS", "ComponentSpec", "ExportSpec", "TensorSpec", "get_spec"]

VARIANTS = ("fp32", "fp16", "int8", "int4", "ov-fp32", "ov-int8", "ov-int4")
# Variants run by OpenVINO instead of ONNX Runtime (an IR converted from the checkpoint).
OPENVINO_VARIANTS = ("ov-fp32", "ov-int8", "ov-int4")


def get_spec(model: str) -> ExportSpec:
    """The export spec of the kind `model` (ConfigError naming the kinds otherwise)."""
    return registry.get(model).export
