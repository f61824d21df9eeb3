"""Every engine setting, defined once: `EngineConfig`.

Each field carries its type, default, allowed range and help. From them come the `aigc build`
flags (`add_arguments`, `from_args`), the `config.pbtxt` parameters the builder writes
(`to_parameters`) and the Triton adapter reads back (`from_parameters`), and the range check
(`check`). A setting has one spelling: the field name, the parameter name, and the flag with
dashes.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field, fields

# requests decoded together on the CPU when `max_sequences` is 0 (at least `slots`)
DEFAULT_SEQUENCES = 64


def setting(
    default,
    lo=None,
    hi=None,
    help: str = "",
    flag: bool = True,
    note: str = "",
    above: bool = False,
    choices: tuple[str, ...] = (),
):
    """A field with its range (`lo`..`hi`, None: unbounded; `above`: `lo` itself excluded;
    `choices`: the words a text setting takes; `note` says what a special value means) and
    help; `flag` False: set by the builder from measurements, not a flag."""
    meta = {"lo": lo, "hi": hi, "help": help, "flag": flag, "note": note, "above": above, "choices": choices}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class EngineConfig:
    slots: int = setting(
        8,
        1,
        1024,
        "the default KV cache holds this many whole windows (--kv-cache-mib); ONNX Runtime on a GPU: "
        "generations decoded together, each a row of the whole window allocated once",
    )
    max_sequences: int = setting(
        0,
        0,
        4096,
        "requests decoded together on the CPU, each taking cache memory as it grows (OpenVINO: blocks; "
        "ONNX Runtime: its row's pages); past the pool the newest is preempted and recomputed later",
        note="0 = 64 (at least --slots)",
    )
    max_len: int = setting(0, 0, None, "KV positions per slot", note="0 = the model's context window")
    kv_cache_mib: float = setting(
        0.0,
        0.0,
        1_000_000.0,
        "KV cache memory on the CPU: blocks (OpenVINO) or pages of a row (ONNX Runtime) taken as "
        "requests grow, returned when they end; past it the newest request is preempted and "
        "recomputed later",
        note="0 = slots x max-len",
    )
    kv_cache_precision: str = setting(
        "auto",
        help="what the KV cache is stored in: OpenVINO's u8 (a scale and zero point per group) or "
        "ONNX Runtime's i8 (a scale per layer, or per channel, calibrated at export) read a quarter "
        "of f32's bytes a step and hold 4x the positions per MiB; f16 (OpenVINO); auto = what the "
        "export measured to pass the fidelity gates and run faster (the report's kv_cache), else f32",
        choices=("auto", "f32", "f16", "u8", "i8"),
    )
    prefix_caching: bool = setting(
        True,
        help="a prompt that starts as an earlier one (a system prompt, few-shot examples, the "
        "samples of n > 1, the next turn of a chat) reads that prefix instead of computing it: with "
        "a block runner (OpenVINO) full blocks kept under a hash of their tokens, least recently "
        "used evicted first; with slots (ONNX Runtime) what a free slot still holds, or on the CPU "
        "a copy of a running request's slot, from 16 shared tokens on",
    )
    compact_rows: bool = setting(
        True,
        help="ONNX Runtime's rows: a decoding row left above slots that emptied moves down into one "
        "(its cache copied) once the slot has stayed free 4 steps with nothing waiting, so decode "
        "steps compute no padding rows for them (64 requests of 8-128 tokens: 1.5x tokens/s)",
    )
    prefill_chunk: int = setting(
        64, 1, 4096, "most prompt tokens prefilled per step while other streams decode"
    )
    # ... and no more than a chunk measured to cost `prefill_budget` x one decode step, so the
    # running streams' inter-token gap at most doubles while a long prompt goes in. The cost
    # is fitted online on the engine's clock: ms = fixed + per-token x tokens.
    prefill_budget: float = setting(
        1.0,
        0.0,
        100.0,
        "a chunk may cost this many decode steps, as the engine measures them",
        note="0 = fixed --prefill-chunk",
    )
    # A runner that takes the step's decode rows and its prompt chunk in one call (OpenVINO;
    # ONNX Runtime on the CPU with `mixed_calls`) pays only the chunk's tokens on top of the
    # step, so a smaller budget still moves a prompt along: the running streams' gaps grow by
    # about this share while a prompt goes in. 0.5 on the 2-core EPYC, 4 streams beside
    # 512-token prompts: gap p99 during / other 1.28, the long prompt's first token 1.3 s;
    # 0.3: 1.2-2.5 (noise) but 2.3-8 s; 1.0: 1.98 and 0.93 s (benchmarks/many-users.md).
    mixed_prefill_budget: float = setting(
        0.5,
        0.0,
        100.0,
        "a chunk riding in the decode call may add this many decode steps to it, as the engine measures them",
        note="0 = fixed --prefill-chunk",
    )
    mixed_calls: bool = setting(
        True,
        help="ONNX Runtime on the CPU: a step's decode rows and its prompt chunk in one call, through "
        "a second session of the graph rewritten so that only attention splits them (a prompt arriving "
        "while others decode costs its tokens, not a second pass over the weights)",
    )
    idle_prefill_chunk: int = setting(512, 1, 4096, "prompt tokens per step while nothing decodes")
    # A burst: many short prompts arrive while a few streams decode (64 users at once, their
    # requests reaching the engine over a few steps). At the running streams' share they went
    # in 1-4 a step, so the last first tokens came 2-2.5 s late and the last streams ended as
    # long after the first, with the batch emptying meanwhile. Taken whole (the 2-core EPYC,
    # served, 64 users of 16 -> 64 tokens, two rounds each): TTFT p90 0.98-1.0 s against
    # 1.96-2.15 s, 546-574 tok/s against 461-515; at 1.0 the prompts that reached the engine
    # during the first bulk step went in at the share again (TTFT p90 1.27-1.41 s). So once
    # begun a burst goes on while two or more short prompts wait (OpenVINO in-process, 60
    # prompts of 8-47 tokens behind 4 streams: TTFT p90 2.0-3.2 s, 5.1-5.9 without, 8.4-12.4 off).
    # text-generation-inference has a setting of this name and idea: at that many waiting
    # per running request it pauses them to prefill; here they decode in the same call.
    waiting_served_ratio: float = setting(
        0.5,
        0.0,
        1000.0,
        "a burst: when at least this many short prompts (each within --prefill-chunk tokens left), "
        "and at least two, wait per decoding stream, they go in whole, up to --idle-prefill-chunk "
        "tokens a step, the running streams' tokens in the same call, until fewer than two wait; "
        "longer prompts always go in at the running streams' share (--mixed-prefill-budget)",
        note="0 = off",
    )
    max_queue: int = setting(
        64, 0, 100_000, "requests that may wait for a free slot; beyond it a 'server busy' error"
    )
    max_request_seconds: float = setting(
        300.0, 0.0, 86_400.0, "a request generating longer ends with a timeout error", above=True
    )
    max_tokens_limit: int = setting(512, 1, 100_000, "largest max_tokens a request may ask")
    cuda_graph: bool = setting(
        True,
        help="on a GPU: replay a captured CUDA graph per decode batch size instead of launching "
        "each kernel (measured on an H200: 0.69 vs 2.1 ms between tokens)",
    )
    stream_interval: int = setting(
        1,
        1,
        1024,
        "a stream's response carries at least this many tokens (the first and the last excepted): more "
        "trades the stream's smoothness for throughput when many streams share the CPU (8 streams of "
        "64 tokens on 2 cores: 0-13 percent more at 4 in alternating runs, benchmarks/response-cost.md); "
        "1 = each token as soon as the sender is free",
    )
    # After a step that sent streams their first token, the CPU generation loop waits this
    # long before its next call: the response's way out (Triton's threads, gRPC, a client on
    # the same host) needs a core, and a call on every core holds it back for that whole call.
    # Measured on the 2-core EPYC, 16-token prompts one at a time: the response reached the
    # client 3.0-3.6 ms after it was sent, 0.2 ms with the wait (0.3 ms or longer).
    first_token_yield_ms: float = setting(
        0.5,
        0.0,
        100.0,
        "on the CPU, where the runtime's threads take every core: after a step that sent streams "
        "their first token, the generation loop leaves the cores to the responses' way out this long "
        "before its next call (the call otherwise holds the first token back for its whole time: 2 "
        "cores, 16-token prompts, time to first token 13.5 -> 10.6 ms); the streams' later tokens "
        "wait as long",
        note="0 = off",
    )
    metrics_interval_s: float = setting(
        1.0, 0.0, 3600.0, "how often the engine's figures reach Triton's metrics endpoint", note="0 = off"
    )
    # A pair of graphs (`companion.onnx` beside the main one, e.g. int8 beside int4): the
    # companion runs the prefills and/or the decode steps of at least this many rows (0 =
    # none), where the build measured it faster. Set by `aigc build` from the export profile.
    companion_prefill: bool = setting(False, help="prefills run on the companion graph", flag=False)
    companion_from_rows: int = setting(
        0, 0, 1024, "decode steps of this many rows or more run on the companion graph", flag=False
    )

    # -- ranges --------------------------------------------------------------------------
    def check(self, n_positions: int | None = None, flags: bool = False) -> None:
        """ValueError naming the first setting out of its range (`--max-len` style with
        `flags`); `n_positions`, when known, bounds `max_len`."""
        for f in fields(self):
            value = getattr(self, f.name)
            lo, hi = f.metadata["lo"], f.metadata["hi"]
            if f.name == "max_len" and n_positions is not None:
                hi = n_positions
            if f.metadata["choices"]:
                if value not in f.metadata["choices"]:
                    raise ValueError(f"{_name(f, flags)} must be {_range(f, hi)}, got {value!r}")
                continue
            if f.type == "bool" or (lo is None and hi is None):
                continue
            low, high = -math.inf if lo is None else lo, math.inf if hi is None else hi
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            inside = number and low <= value <= high and not (f.metadata["above"] and value == low)
            if not inside or (f.type == "int" and not isinstance(value, int)):
                raise ValueError(f"{_name(f, flags)} must be {_range(f, hi)}, got {value!r}")

    @property
    def sequences(self) -> int:
        """Requests decoded together where memory is taken by use (the CPU runners)."""
        return self.max_sequences or max(self.slots, DEFAULT_SEQUENCES)

    # -- config.pbtxt parameters -----------------------------------------------------------
    def to_parameters(self) -> dict[str, str]:
        return {f.name: _text(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> EngineConfig:
        """The settings among `params` (a config's string values; others ignored), parsed
        by type; ValueError names a value that does not parse."""
        kw = {}
        for f in fields(cls):
            text = params.get(f.name)
            if text in (None, ""):
                continue
            kw[f.name] = _parse(f, text)
        return cls(**kw)

    # -- command-line flags -----------------------------------------------------------------
    @classmethod
    def add_arguments(cls, group: argparse._ActionsContainer) -> None:
        for f in fields(cls):
            if not f.metadata["flag"]:
                continue
            flag = "--" + f.name.replace("_", "-")
            text = f.metadata["help"]
            if f.type == "bool":
                group.add_argument(
                    flag,
                    action=argparse.BooleanOptionalAction,
                    default=f.default,
                    help=f"{text} (default {'on' if f.default else 'off'})",
                )
                continue
            if f.metadata["choices"]:
                group.add_argument(
                    flag,
                    choices=f.metadata["choices"],
                    default=f.default,
                    help=f"{text} (default {f.default})",
                )
                continue
            group.add_argument(
                flag,
                type=int if f.type == "int" else float,
                default=f.default,
                metavar=f.type.upper(),
                help=f"{text}; {_range(f, f.metadata['hi'])} (default {f.default:g})",
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EngineConfig:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})

    def replace(self, **changes) -> EngineConfig:
        return dataclasses.replace(self, **changes)


def _name(f: dataclasses.Field, flags: bool) -> str:
    return "--" + f.name.replace("_", "-") if flags else f.name


def _range(f: dataclasses.Field, hi) -> str:
    if f.metadata["choices"]:
        return "one of " + ", ".join(f.metadata["choices"])
    lo = f.metadata["lo"]
    kind = "an integer" if f.type == "int" else "a number"
    if f.metadata["above"]:
        bounds = f"in ({lo:g}, {hi:g}]" if hi is not None else f"> {lo:g}"
    else:
        bounds = f"in {lo:g}..{hi:g}" if hi is not None else f">= {lo:g}"
    note = f.metadata["note"]
    return f"{kind} {bounds}" + (f" ({note})" if note else "")


def _text(value) -> str:
    return (
        str(value).lower()
        if isinstance(value, bool)
        else f"{value:g}"
        if isinstance(value, float)
        else str(value)
    )


def _parse(f: dataclasses.Field, text: str):
    if f.metadata["choices"]:
        if text not in f.metadata["choices"]:
            raise ValueError(f"parameter {f.name} must be {_range(f, None)}, got {text!r}")
        return text
    try:
        if f.type == "bool":
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        return int(text) if f.type == "int" else float(text)
    except ValueError:
        raise ValueError(
            f"parameter {f.name} must be {'true or false' if f.type == 'bool' else f.type}, got {text!r}"
        ) from None
