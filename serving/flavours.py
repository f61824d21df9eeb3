"""The repository flavours: which Triton backend runs the image models. `python`: Python-backend
models (every server, the embedded one included); `onnxruntime`: Triton's native ONNX Runtime
backend (a Triton backend, spelt like the runtime). Apart from the builder so that the CLI's
flags need not import it."""

PYTHON_FLAVOUR, NATIVE_FLAVOUR = "python", "onnxruntime"
FLAVOURS = (PYTHON_FLAVOUR, NATIVE_FLAVOUR)
