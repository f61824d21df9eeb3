"""Triton Python-backend model for the image components (`dcgan`, `vae_decoder`, `vae_encoder`).

Runs the ONNX file of its version folder with ONNX Runtime in-process. Requests batched
together by Triton's dynamic batcher are checked one by one (a bad request gets its own
error and does not fail the others), then the valid ones run as one ONNX Runtime call.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ortsession import session_options  # noqa: E402


class InputError(ValueError):
    """A request tensor is wrong; the message names the tensor."""


def check_input(name, array, expected_dtype, dims, max_batch):
    """Check one request tensor (batch axis first) against the model config."""
    if array.dtype != expected_dtype:
        raise InputError(f"{name}: dtype {array.dtype} not allowed; expected {np.dtype(expected_dtype).name}")
    if array.ndim != len(dims) + 1 or any(d != -1 and d != a for d, a in zip(dims, array.shape[1:])):
        want = ["N"] + [str(d) for d in dims]
        raise InputError(f"{name}: shape {list(array.shape)} not allowed; expected [{', '.join(want)}]")
    if not 1 <= array.shape[0] <= max_batch:
        raise InputError(f"{name}: batch size {array.shape[0]} not allowed; allowed 1..{max_batch}")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise InputError(f"{name}: contains NaN or infinite values")


def run_batched(session, output_names, input_name, arrays):
    """One ONNX Runtime call for several requests' arrays; returns per-request outputs."""
    sizes = [len(a) for a in arrays]
    outs = session.run(output_names, {input_name: np.concatenate(arrays) if len(arrays) > 1 else arrays[0]})
    splits = np.cumsum(sizes)[:-1]
    return [dict(zip(output_names, parts)) for parts in zip(*(np.split(o, splits) for o in outs))]


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        self.config = json.loads(args["model_config"])
        if len(self.config["input"]) != 1:
            raise pb_utils.TritonModelException("image models take exactly one input")
        inp = self.config["input"][0]
        self.input_name = inp["name"]
        self.input_dtype = pb_utils.triton_string_to_numpy(inp["data_type"])
        self.input_dims = [int(d) for d in inp["dims"]]
        self.outputs = [
            (o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in self.config["output"]
        ]
        params = self.config.get("parameters", {})
        self.max_batch = int(
            params.get("max_request_batch", {}).get("string_value") or self.config["max_batch_size"]
        )
        threads = int(params.get("intra_op_threads", {}).get("string_value") or 0)
        opts = session_options(threads)
        providers = ["CPUExecutionProvider"]
        if (
            args.get("model_instance_kind") == "GPU"
            and "CUDAExecutionProvider" in ort.get_available_providers()
        ):
            providers.insert(0, "CUDAExecutionProvider")
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, opts, providers=providers)

    def execute(self, requests):
        responses = [None] * len(requests)
        valid, arrays = [], []
        for i, request in enumerate(requests):
            tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
            try:
                if tensor is None:
                    raise InputError(f"{self.input_name}: missing")
                array = tensor.as_numpy()
                check_input(self.input_name, array, self.input_dtype, self.input_dims, self.max_batch)
            except InputError as exc:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
                continue
            valid.append(i)
            arrays.append(array)
        if valid:
            try:
                results = run_batched(self.session, [n for n, _ in self.outputs], self.input_name, arrays)
            except Exception as exc:  # an ONNX Runtime failure fails this batch, not the model
                for i in valid:
                    responses[i] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"inference failed: {exc}")
                    )
                return responses
            for i, result in zip(valid, results):
                tensors = [pb_utils.Tensor(n, result[n].astype(dt, copy=False)) for n, dt in self.outputs]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def finalize(self):
        self.session = None
