"""The `aigc` command: a table from subcommand names to the stages' typed entry points."""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
import warnings

# name -> (module, add-arguments function, run function, one-line help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "doctor": ("aigc.doctor", "add_arguments", "run", "check this machine before the long steps"),
    "train": ("training.commands", "add_arguments", "run", "train a DCGAN, VAE or GPT-2 checkpoint"),
    "export": ("export.commands", "add_arguments", "run", "export a checkpoint to validated ONNX variants"),
    "build": ("serving.commands", "add_build_arguments", "run_build", "build the Triton model repository"),
    "serve": ("serving.commands", "add_serve_arguments", "run_serve", "run the embedded Triton server"),
    "openai": (
        "serving.commands",
        "add_openai_arguments",
        "run_openai",
        "run the OpenAI-compatible API alone, in front of a Triton server",
    ),
    "rollback": (
        "serving.commands",
        "add_rollback_arguments",
        "run_rollback",
        "serve a model's previous version",
    ),
    "generate": (
        "serving.commands",
        "add_generate_arguments",
        "run_generate",
        "generate images or text via gRPC",
    ),
    "bench": ("benchmarks.commands", "add_arguments", "run", "benchmark served models against the baselines"),
    "soak": (
        "benchmarks.soak",
        "add_arguments",
        "run",
        "mixed concurrent load with bad requests; report errors",
    ),
    "create-gpt2": (
        "training.commands",
        "add_random_arguments",
        "run_random",
        "save a random-weight GPT-2 (124M)",
    ),
    "results": (
        "export.results",
        "add_arguments",
        "run",
        "write the README's variant table from export reports",
    ),
    "demo": (
        "aigc.demo",
        "add_arguments",
        "run",
        "run everything: train, export, build, serve, generate, bench",
    ),
}

# Third-party loggers that narrate their internals at INFO/WARNING (shown with --verbose).
# torch's own logging (torch._logging) resets the levels of its `torch.*` loggers when the
# exporter loads, so for those the exact lines below are dropped instead.
NOISY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch._export", "onnxruntime", "root.quantize")

# (logger, start of the message): third-party lines that say nothing to an aigc user, dropped
# on the logger that emits them, only when the message matches (shown with --verbose).
NOISE: tuple[tuple[str, str], ...] = (
    # The ONNX exporter's op registry also registers torchvision's ops and warns, once per
    # op, that torchvision is absent; aigc's models use no torchvision op.
    ("torch.onnx._internal.exporter._registration", "torchvision is not installed"),
    # optimum-intel 1.27's exporter (the OpenVINO variants) reads `config.torch_dtype`, an alias
    # transformers 4.56+ deprecates; aigc passes `dtype` itself, the user can change nothing.
    ("transformers.configuration_utils", "`torch_dtype` is deprecated! Use `dtype` instead!"),
    # transformers looks the loss up by class name and finds none for GPT2LMHeadModel, then
    # uses the causal-LM loss, the right one. Training sets it; the OpenVINO conversion loads
    # the model afresh and touches `loss_function` while tracing (no loss is computed there).
    ("transformers.modeling_utils", "`loss_type=None` was set in the config but it is unrecognized"),
    # `aigc bench` exports its Optimum baseline without `accelerate`, so Optimum keeps the tied
    # embedding / LM-head weight twice in the file (size only: each is read as before).
    ("optimum.exporters.onnx.base", "Weight deduplication check in the ONNX export requires accelerate"),
)

# (start of the message, module the warning is attributed to): Python warnings dropped the same
# way. Both come from tracing transformers' GPT-2 for the Optimum baseline of `aigc bench`
# (only timed there), and are notes about tracing in general, not about this model.
WARNINGS_NOISE: tuple[tuple[str, str], ...] = (
    # transformers' cache and mask code branch on tensor values, frozen into the trace.
    ("Converting a tensor to a Python boolean might cause the trace to be incorrect", r"transformers\."),
    # TorchScript exporter: a caveat printed for every advanced-indexing op it converts.
    ("Exporting aten::index operator of advanced indexing", r"torch\.onnx\."),
)


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_third_party() -> None:
    """The non-verbose CLI's view of third-party logging: narrators at ERROR, known noise dropped."""
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.ERROR)
    for name, prefix in NOISE:
        logging.getLogger(name).addFilter(_DropMessage(prefix))
    for message, module in WARNINGS_NOISE:
        warnings.filterwarnings("ignore", message=re.escape(message), module=module)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aigc",
        description="Export generative models to quantized ONNX and serve them on Triton Inference Server.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, add, _run, help_text) in COMMANDS.items():
        add_fn = getattr(importlib.import_module(module), add)
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_fn(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    from aigc.errors import AigcError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s" if not args.verbose else "%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        quiet_third_party()
    module, _add, run, _help = COMMANDS[args.command]
    try:
        return int(getattr(importlib.import_module(module), run)(args) or 0)
    except AigcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
