"""aigc-serve: export generative models to ONNX and serve them on Triton Inference Server."""

__version__ = "0.1.0"
