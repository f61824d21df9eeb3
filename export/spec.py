"""The export variants, and each kind's export spec (kept in its `aigc.registry` entry).

A spec says which ONNX components a checkpoint becomes, the tensors of each, the opset
and the tolerance of the fp32 parity check; the export functions themselves are shared.
"""

from __future__ import annotations

from aigc.registry import ComponentSpec, ExportSpec, TensorSpec

__all__ = ["VARIANTS", "ComponentSpec", "ExportSpec", "TensorSpec"]

# Every variant name; a name's prefix says which runtime runs it (`engine.runtimes`).
VARIANTS = ("fp32", "fp16", "int8", "int4", "ov-fp32", "ov-int8", "ov-int4")
