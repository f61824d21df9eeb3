"""Helpers the tests import (fixtures live in conftest.py)."""

from __future__ import annotations

import numpy as np

from serving.server import EmbeddedTritonServer


def start_server(repository, **kwargs) -> EmbeddedTritonServer:
    return EmbeddedTritonServer(
        repository,
        grpc_port=0,
        http_port=0,
        metrics_port=0,
        log_file=repository.parent / "triton.log",
        **kwargs,
    ).start()


# TensorRT-LLM-style request tensors of one value (or words), in the shape given.
def i32(v, shape=(1,)):
    return np.full(shape, v, np.int32)


def f32(v, shape=(1,)):
    return np.full(shape, v, np.float32)


def flag(v, shape=(1,)):
    return np.full(shape, v, np.bool_)


def words(*items):
    return np.array([w.encode() for w in items], dtype=np.object_)
