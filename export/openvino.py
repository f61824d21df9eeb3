"""OpenVINO IRs of a GPT-2 checkpoint: the second runtime's variants (and the OpenVINO GenAI peer's).

`optimum-intel` converts the checkpoint into a stateful causal-LM IR (`openvino_model.xml` and
`.bin`); NNCF compresses its weights (int8 per channel, int4 in groups). The serving engine
turns the IR's attention into paged attention when it loads it
(`engine/runners/openvino.py`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from aigc.errors import ExportError
from engine import runtimes

logger = logging.getLogger(__name__)

IR_FILES = runtimes.OPENVINO.version_files  # the graph and its weights


@dataclass(frozen=True)
class Compression:
    """NNCF weight compression of an IR: `bits` 0 = none (f32 weights)."""

    bits: int = 0
    group_size: int = -1  # -1: per output channel
    symmetric: bool = True
    all_layers: bool = False  # True: the embedding / vocabulary projection too, at `bits`

    def describe(self) -> dict:
        if not self.bits:
            return {"method": "none", "weights": "f32"}
        return {
            "method": "NNCF weight-only compression",
            "weights": f"int{self.bits} {'sym' if self.symmetric else 'asym'}",
            "group_size": self.group_size,
            "embedding_and_head": f"int{self.bits}" if self.all_layers else "int8 (NNCF default)",
        }


def available() -> str | None:
    """None when the conversion can run here, else why not."""
    for module, package in (("openvino", "openvino"), ("optimum.intel", "optimum-intel"), ("nncf", "nncf")):
        try:
            __import__(module)
        except ImportError as exc:
            return f"{package} is not installed ({exc}); `pip install -e .` installs it"
    return None


class _DropMessage(logging.Filter):
    def __init__(self, message: str):
        super().__init__()
        self.message = message

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != self.message


@contextlib.contextmanager
def _quiet():
    """The conversion's noise, kept at --verbose: tracer warnings from tracing the PyTorch
    model, NNCF's per-layer statistics table and its rich progress bar, and the PyTorch
    frontend's "Failed to build model wrapper." (logged at ERROR when its first way of
    wrapping `forward` falls back to the module itself; the conversion then succeeds)."""
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    import rich
    import torch

    frontend = logging.getLogger("openvino.frontend.pytorch.utils")
    wrapper_note = _DropMessage("Failed to build model wrapper.")
    frontend.addFilter(wrapper_note)
    nncf_logger = logging.getLogger("nncf")
    nncf_level = nncf_logger.level
    nncf_logger.setLevel(logging.WARNING)  # its statistics table is INFO
    console = rich.get_console()  # NNCF draws "Applying Weight Compression" there, no option to stop it
    was_quiet, console.quiet = console.quiet, True
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            yield
    finally:
        console.quiet = was_quiet
        nncf_logger.setLevel(nncf_level)
        frontend.removeFilter(wrapper_note)


def _group_size(checkpoint: Path, wanted: int) -> int:
    """`wanted`, halved until it divides the hidden size (a tiny model's 64 channels)."""
    import json

    if wanted <= 0:
        return wanted
    hidden = int(json.loads((Path(checkpoint) / "config.json").read_text())["n_embd"])
    while wanted > 1 and hidden % wanted:
        wanted //= 2
    return wanted


def convert_ir(checkpoint: Path, out: Path, compression: Compression = Compression()) -> Path:
    """The checkpoint as a stateful OpenVINO IR in `out` (written whole or not at all); returns
    the `.xml` path."""
    why = available()
    if why:
        raise ExportError(f"OpenVINO variants: {why}")
    os.environ.setdefault("OPENVINO_TELEMETRY_OPT_OUT", "1")  # no telemetry prompt or upload
    from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig

    quant = None
    if compression.bits:
        quant = OVWeightQuantizationConfig(
            bits=compression.bits,
            sym=compression.symmetric,
            group_size=_group_size(checkpoint, compression.group_size),
            ratio=1.0,
            all_layers=compression.all_layers or None,
        )
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _quiet():
            model = OVModelForCausalLM.from_pretrained(
                checkpoint,
                export=True,
                compile=False,
                load_in_8bit=False,
                quantization_config=quant,
                stateful=True,
            )
            model.save_pretrained(tmp)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"OpenVINO conversion of {checkpoint} failed: {exc}") from exc
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out / IR_FILES[0]


# The compression of each OpenVINO variant. int4 reads the vocabulary projection (a third of
# GPT-2 124M's weights, read every step) in int4 too, in groups of 128.
VARIANT_COMPRESSION = {
    "ov-fp32": Compression(),
    "ov-int8": Compression(bits=8),
    "ov-int4": Compression(bits=4, group_size=128, all_layers=True),
}


def window_logits(runner, windows) -> list:
    """(T, vocab) logits of each window, every position (slot 0 rewritten each time)."""
    return [runner.all_logits(0, w) for w in windows]
