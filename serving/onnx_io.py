"""An ONNX file's graph tensors in Triton's terms, for the config writers (`builder`, `native`)."""

from __future__ import annotations

from pathlib import Path

import onnx
from tritonclient.grpc import model_config_pb2 as mc

from aigc.errors import BuildError
from serving.config_gen import Tensor

ONNX_TO_TRITON = {
    onnx.TensorProto.FLOAT: mc.TYPE_FP32,
    onnx.TensorProto.FLOAT16: mc.TYPE_FP16,
    onnx.TensorProto.UINT8: mc.TYPE_UINT8,
    onnx.TensorProto.INT8: mc.TYPE_INT8,
    onnx.TensorProto.INT32: mc.TYPE_INT32,
    onnx.TensorProto.INT64: mc.TYPE_INT64,
}


def triton_tensors(onnx_file: Path) -> dict[str, tuple[int, list[int]]]:
    """name -> (Triton dtype, dims without the batch axis) for every graph input/output."""
    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    out = {}
    for vi in list(graph.input) + list(graph.output):
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim][1:]
        if t.elem_type not in ONNX_TO_TRITON:
            raise BuildError(f"{onnx_file}: tensor {vi.name} has an ONNX type with no Triton type")
        out[vi.name] = (ONNX_TO_TRITON[t.elem_type], dims)
    return out


def graph_inputs(onnx_file: Path) -> list[str]:
    return [i.name for i in onnx.load(str(onnx_file), load_external_data=False).graph.input]


def io_tensors(onnx_file: Path, fixed: str = "inputs") -> tuple[list[Tensor], list[Tensor]]:
    """(inputs, outputs) of the graph in its order; `fixed` ("inputs" or "all"): which of
    them must have fixed non-batch dims (a dynamic one is a BuildError naming it)."""
    tensors = triton_tensors(onnx_file)
    names = graph_inputs(onnx_file)
    inputs, outputs = [], []
    for name, (dtype, dims) in tensors.items():
        is_input = name in names
        if (is_input or fixed == "all") and any(d < 0 for d in dims):
            role = "input" if is_input else "output"
            raise BuildError(
                f"{onnx_file}: {role} {name} has a dynamic non-batch axis {dims}; Triton needs fixed dims"
            )
        (inputs if is_input else outputs).append(Tensor(name, dtype, tuple(dims)))
    return inputs, outputs
