"""A stand-in for `triton_python_backend_utils`, for unit tests of Triton Python-backend models.

The real module exists only inside Triton's Python-backend stub process (python_backend's
`src/pb_stub.cc` binds most of it, `src/resources/triton_python_backend_utils.py` the rest),
so a model file cannot be imported anywhere else. Tests put this module in its place
(`sys.modules["triton_python_backend_utils"]`) before loading the model file.

It holds only what the `gpt2` adapter uses, with the same signatures and the checks the real
one makes (a response sender refuses a response after its final one, or no response with
flags 0; a counter cannot be set or decreased; a histogram needs buckets and can only be
observed; labels are a dict of strings), and records what the model did for the tests to
read: the responses each sender sent, the log lines, every metric's value and observations.
Load it afresh for each test: the log and the metric registry are module state.
"""

from __future__ import annotations

import json
import threading

import numpy as np

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1


class TritonModelException(Exception):
    """What the real module raises when a call fails (the stub's PythonBackendException)."""


class TritonError:
    INTERNAL = "INTERNAL"

    def __init__(self, message: str, code: str = INTERNAL):
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> str:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r})"


class Tensor:
    def __init__(self, name: str, array: np.ndarray):
        if not isinstance(array, np.ndarray):
            raise TypeError(f"Tensor {name!r} takes a numpy array, got {type(array).__name__}")
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, {self._array!r})"


class InferenceResponse:
    def __init__(self, output_tensors=(), error: TritonError | None = None, parameters=None):
        self._tensors, self._error = list(output_tensors), error

    def output_tensors(self) -> list[Tensor]:
        return self._tensors

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def __repr__(self) -> str:
        return f"InferenceResponse({self._tensors!r}, error={self._error!r})"


class InferenceResponseSender:
    """A decoupled request's response sender. `responses`: every (response, flags) sent;
    `cancelled`: what `is_cancelled` answers (set it to play a client that went away)."""

    def __init__(self):
        self.responses: list[tuple[InferenceResponse | None, int]] = []
        self.cancelled = False
        self.closed = False  # a final response went out
        self._changed = threading.Condition()

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if flags not in (0, TRITONSERVER_RESPONSE_COMPLETE_FINAL):
            raise TritonModelException("Unable to send response. Unsupported flag provided.")
        if flags == 0 and response is None:
            raise TritonModelException(
                "Inference Response object must be provided when the response flags is set to zero."
            )
        with self._changed:
            if self.closed:
                raise TritonModelException("Unable to send response. Response sender has been closed.")
            self.responses.append((response, flags))
            self.closed = flags == TRITONSERVER_RESPONSE_COMPLETE_FINAL
            self._changed.notify_all()

    def is_cancelled(self) -> bool:
        return self.cancelled

    def wait_final(self, timeout: float) -> bool:
        """Whether the final response went out within `timeout` seconds (for the tests)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.closed, timeout)


class InferenceRequest:
    """A request as `execute` receives it: its inputs, id, parameters (a JSON object's text,
    as Triton's HTTP generate endpoint and gRPC clients set them) and response sender."""

    def __init__(self, inputs, request_id: str = "", parameters: dict | None = None):
        self._inputs = list(inputs)
        self._request_id = request_id
        self._parameters = json.dumps(parameters or {})
        self._sender = InferenceResponseSender()

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._request_id

    def parameters(self) -> str:
        return self._parameters

    def get_response_sender(self) -> InferenceResponseSender:
        return self._sender

    def is_cancelled(self) -> bool:
        return self._sender.cancelled


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def using_decoupled_model_transaction_policy(model_config: dict) -> bool:
    if "model_transaction_policy" in model_config:
        return model_config["model_transaction_policy"]["decoupled"]
    return False


class Logger:
    """`messages`: every line logged, as (level, message)."""

    messages: list[tuple[str, str]] = []

    @staticmethod
    def log(message: str, level: str = "INFO") -> None:
        Logger.messages.append((level, message))

    @staticmethod
    def log_info(message: str) -> None:
        Logger.log(message, "INFO")

    @staticmethod
    def log_warn(message: str) -> None:
        Logger.log(message, "WARNING")

    @staticmethod
    def log_error(message: str) -> None:
        Logger.log(message, "ERROR")

    @staticmethod
    def log_verbose(message: str) -> None:
        Logger.log(message, "VERBOSE")


class Metric:
    """One labelled metric. `value()` as the real one (counters and gauges); for the tests,
    `observations` (a histogram's observed values, which the real one shows only on the
    metrics endpoint) and `updates` (how many times the model changed it)."""

    def __init__(self, family: MetricFamily, labels: dict, buckets: list[float] | None):
        self.family, self.labels, self.buckets = family, labels, buckets
        self._value = 0.0
        self.observations: list[float] = []
        self.updates = 0
        self._lock = threading.Lock()

    def _only(self, operation: str, *kinds: str) -> None:
        if self.family.kind not in kinds:
            raise TritonModelException(
                f"Failed to {operation} metric value: not supported by a {self.family.kind.lower()}"
            )

    def increment(self, value: float) -> None:
        self._only("increment", MetricFamily.COUNTER, MetricFamily.GAUGE)
        if self.family.kind == MetricFamily.COUNTER and value < 0:
            raise TritonModelException("Failed to increment metric value: a counter cannot decrease")
        with self._lock:
            self._value += value
            self.updates += 1

    def set(self, value: float) -> None:
        self._only("set", MetricFamily.GAUGE)
        with self._lock:
            self._value = float(value)
            self.updates += 1

    def observe(self, value: float) -> None:
        self._only("observe", MetricFamily.HISTOGRAM)
        with self._lock:
            self.observations.append(float(value))
            self.updates += 1

    def value(self) -> float:
        self._only("get", MetricFamily.COUNTER, MetricFamily.GAUGE)
        with self._lock:
            return self._value


class MetricFamily:
    COUNTER, GAUGE, HISTOGRAM = "COUNTER", "GAUGE", "HISTOGRAM"
    families: dict[str, MetricFamily] = {}  # name -> family: what the server would export

    def __init__(self, name: str, description: str, kind: str):
        if kind not in (self.COUNTER, self.GAUGE, self.HISTOGRAM):
            raise TritonModelException(f"Unknown metric kind {kind!r}")
        self.name, self.description, self.kind = name, description, kind
        self.metrics: list[Metric] = []
        MetricFamily.families[name] = self

    def Metric(self, labels: dict | None = None, buckets: list[float] | None = None) -> Metric:  # noqa: N802
        if labels is not None and not isinstance(labels, dict):
            raise TritonModelException("Failed to create metric. Labels must be a dictionary.")
        if labels and not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise TritonModelException("Failed to create metric. Label names and values must be strings.")
        if buckets is not None:
            if not isinstance(buckets, list):
                raise TritonModelException("Failed to create metric. Buckets must be a list.")
            if self.kind != self.HISTOGRAM:
                raise TritonModelException("Failed to create metric. Unexpected buckets found.")
        elif self.kind == self.HISTOGRAM:
            raise TritonModelException("Failed to create metric. Missing required buckets.")
        metric = Metric(self, dict(labels or {}), buckets)
        self.metrics.append(metric)
        return metric
