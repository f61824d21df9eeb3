"""One root exception for the project, with a subclass per stage.

Messages are written for the user: they name the field, file or flag that was wrong and
the allowed range or the numbers that failed, so the CLI can print them as they are.
"""

from __future__ import annotations


class AigcError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(AigcError, ValueError):
    """A flag, argument or config value is out of its allowed range."""


class DataError(AigcError):
    """Training data is missing, empty or unreadable."""


class CheckpointError(AigcError):
    """A checkpoint is missing, corrupt or of another model kind."""


class ExportError(AigcError):
    """Export to ONNX failed."""


class ShapeError(ExportError):
    """An exported model's output shape differs from the PyTorch model's."""


class ToleranceError(ExportError):
    """An exported model's outputs differ from the PyTorch model's beyond tolerance."""


class BuildError(AigcError):
    """Building the Triton model repository failed."""


class ServerError(AigcError):
    """The embedded Triton server failed to start, load a model or stop."""


class ClientError(AigcError):
    """A request through the gRPC client failed (bad input, unreachable server, timeout)."""


class BenchmarkError(AigcError):
    """A benchmark failed or a ratio fell below its committed threshold."""
