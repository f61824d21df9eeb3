"""The client's reading of a text response's outputs (`serving.client._Response`) against
tritonclient's own (`InferResult.as_numpy`), on messages built the way Triton sends them (raw
contents), and on typed BYTES contents (the other way the protocol allows, which
tritonclient reads for BYTES only, and so does the client: it hands those to tritonclient)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2

from serving.client import _Response


def _bytes(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


def _message(final: bool = False, typed: bool = False) -> service_pb2.ModelInferResponse:
    m = service_pb2.ModelInferResponse(model_name="gpt2")
    tensors = [
        ("text_output", "BYTES", [1], ["héllo ".encode()]),
        ("finish_reason", "BYTES", [1], [b"length"]),
        ("num_input_tokens", "UINT32", [1], [17]),
        ("num_output_tokens", "UINT32", [1], [3]),
        ("parts", "BYTES", [3], [b"a", b"", b"bc"]),
        ("ids", "INT64", [2], [-5, 7]),
    ]
    for name, datatype, shape, values in tensors:
        if typed and datatype != "BYTES":
            continue
        out = m.outputs.add(name=name, datatype=datatype, shape=shape)
        if typed:
            out.contents.bytes_contents.extend(values)
        elif datatype == "BYTES":
            m.raw_output_contents.append(_bytes(*values))
        else:
            m.raw_output_contents.append(
                np.asarray(values, grpcclient.triton_to_np_dtype(datatype)).tobytes()
            )
    if final:
        m.parameters["triton_final_response"].bool_param = True
    return m


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
def test_outputs_read_as_tritonclient_reads_them(typed):
    m = _message(typed=typed)
    mine, theirs = _Response(m), grpcclient.InferResult(m)
    assert mine.text("text_output").decode() == "héllo "
    assert mine.text("finish_reason") == theirs.as_numpy("finish_reason")[0] == b"length"
    assert mine.text("parts") == b"".join(theirs.as_numpy("parts")) == b"abc"
    assert mine.text("absent") is None and mine.integer("absent") is None
    assert not mine.final
    if not typed:
        assert mine.integer("num_input_tokens") == int(theirs.as_numpy("num_input_tokens")[0]) == 17
        assert mine.integer("num_output_tokens") == 3
        assert mine.integer("ids") == int(theirs.as_numpy("ids")[0]) == -5
        assert mine.text("num_output_tokens") is None  # not a BYTES output


def test_the_final_flag_and_an_empty_final_response():
    assert _Response(_message(final=True)).final
    empty = service_pb2.ModelInferResponse(model_name="gpt2")
    empty.parameters["triton_final_response"].bool_param = True
    r = _Response(empty)
    assert r.final and r.text("text_output") is None and r.integer("num_output_tokens") is None
