"""ONNX Runtime session options shared by every session of the project: the served models'
(copied flat beside their `model.py`), the export's checks and latency probes."""

import onnxruntime as ort


def session_options(intra_op_threads: int = 0, shared_pool: bool = False) -> ort.SessionOptions:
    """All graph optimizations, warnings and errors only, `intra_op_threads` compute threads
    (0: ONNX Runtime's default, one per core) and one inter-op thread (graphs run their nodes
    in order). `shared_pool`: the process's global thread pool instead of one per session
    (its sizes come from `ort.set_global_thread_pool_sizes`)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if shared_pool:
        opts.use_per_session_threads = False
        return opts
    if intra_op_threads:
        opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    return opts
