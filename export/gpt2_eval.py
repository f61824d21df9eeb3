"""Fidelity and speed figures of GPT-2 ONNX variants: perplexity, top-1 and greedy agreement.

Only ONNX Runtime and numpy: every variant is measured the same way, fp32 included, so the
gates compare like with like.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.ortutil import median_ms

_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8}


def empty_past(session: ort.InferenceSession, batch: int) -> dict[str, np.ndarray]:
    """Zero-length caches `past_key_i` / `past_value_i` `[B, nh, 0, hs]` in the model's dtype."""
    feeds = {}
    for inp in session.get_inputs():
        if inp.name.startswith("past_"):
            _, nh, _, hs = inp.shape
            feeds[inp.name] = np.zeros((batch, nh, 0, hs), dtype=_NP[inp.type])
    return feeds


def has_input(session: ort.InferenceSession, name: str) -> bool:
    return any(i.name == name for i in session.get_inputs())


def forward(session: ort.InferenceSession, ids: np.ndarray, past: dict | None = None, past_len: int = 0):
    """One call without buffer sharing: `ids` (B, T) after `past_len` cached positions (every
    row the same length); returns (logits (B, T, V), presents as the next call's `past`)."""
    b, t = ids.shape
    feeds = {
        "input_ids": ids.astype(np.int64),
        "position_ids": np.broadcast_to(np.arange(past_len, past_len + t, dtype=np.int64), (b, t)).copy(),
        "seqlens_k": np.full(b, past_len + t - 1, np.int32),
        "total_sequence_length": np.array(past_len + t, np.int32),
        **({"logits_indices": np.arange(t, dtype=np.int64)} if has_input(session, "logits_indices") else {}),
        **(past if past is not None else empty_past(session, b)),
    }
    names = [o.name for o in session.get_outputs()]
    wanted = ["logits"] + [n for n in names if n.startswith("present_")]
    logits, *presents = session.run(wanted, feeds)
    return logits, {n.replace("present_", "past_"): v for n, v in zip(wanted[1:], presents, strict=True)}


def token_windows(ids: list[int], window: int, max_windows: int) -> np.ndarray:
    """Non-overlapping windows of the held-out token stream, (W, window)."""
    n = min(len(ids) // window, max_windows)
    return np.asarray(ids[: n * window], dtype=np.int64).reshape(n, window)


def log_probs(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def window_logits(session: ort.InferenceSession, windows: np.ndarray) -> list[np.ndarray]:
    return [forward(session, w[None, :])[0][0] for w in windows]


def perplexity(all_logits: list[np.ndarray], windows: np.ndarray) -> float:
    nll, count = 0.0, 0
    for logits, w in zip(all_logits, windows, strict=True):
        lp = log_probs(logits[:-1])
        nll -= float(lp[np.arange(len(w) - 1), w[1:]].sum())
        count += len(w) - 1
    return math.exp(nll / count)


def greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy tokens after `prompt` (EOS not special-cased: a fixed count for comparison),
    through an ONNX Runtime session of an exported graph (its KV cache handed back each call)
    or through one of the engine's runners (`slot_runner`; slot 0)."""
    step = _session_step(model) if isinstance(model, ort.InferenceSession) else _runner_step(model)
    out = [step(prompt, 0)]
    for i in range(new_tokens - 1):
        out.append(step([out[-1]], len(prompt) + i))
    return out


def _session_step(session: ort.InferenceSession):
    """(token ids, their first position) -> the greedy next token, the cache kept between calls."""
    past = None

    def step(ids: list[int], position: int) -> int:
        nonlocal past
        logits, past = forward(session, np.asarray([ids]), past, position)
        return int(logits[0, -1].argmax())

    return step


def _runner_step(runner):
    """The same through a slot runner: a prefill of the prompt, then one decode per token."""

    def step(ids: list[int], position: int) -> int:
        if position == 0:
            return int(runner.prefill(0, ids, 0)[0])
        return int(runner.decode(np.array(ids), np.array([position]))[0][0])

    return step


def kv_dtype(graph: Path) -> str:
    """The numpy dtype name of a KV-slot ONNX graph's cache (its `past_key_0` input): what the
    engine allocates for it."""
    import onnx
    from onnx import helper

    for inp in onnx.load(str(graph), load_external_data=False).graph.input:
        if inp.name == "past_key_0":
            return helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type).name
    raise ValueError(f"{graph} is not a KV-slot graph (no past_key_0 input)")


@contextlib.contextmanager
def version_folder(graph: Path):
    """A folder laid out as a repository version for an exported graph file: links to the
    files its runtime loads (`engine.runtimes`, by the file's suffix) and to the export's
    `assets/` (model_info.json, tokenizer.json)."""
    from engine import runtimes

    graph = Path(graph).absolute()
    assets = graph.parent.parent / "assets"
    with tempfile.TemporaryDirectory(prefix="aigc-version-") as tmp:
        for name, src in runtimes.of_file(graph).version_files_of(graph).items():
            (Path(tmp) / name).symlink_to(src)
        for name in ("model_info.json", "tokenizer.json"):
            if (assets / name).is_file():
                (Path(tmp) / name).symlink_to(assets / name)
        yield tmp


@contextlib.contextmanager
def slot_runner(graph: Path, slots: int, max_len: int, threads: int = 2, kv_cache_precision: str = "auto"):
    """The serving engine's own runner over an exported graph file, on the CPU (a block
    runner's cache in `kv_cache_precision`; `auto`: f32; ONNX Runtime's without its mixed-call session)."""
    from engine import runtimes
    from engine.config import EngineConfig

    with version_folder(graph) as folder:
        yield (
            runtimes.of_file(graph)
            .runner_class()
            .from_version(
                folder,
                EngineConfig(slots=slots, kv_cache_precision=kv_cache_precision, mixed_calls=False),
                max_len,
                threads=threads,
                providers=["CPUExecutionProvider"],
            )
        )


PROFILE_PAST = (48, 496)  # cached tokens: a short chat turn and a long document
PROFILE_BATCHES = (1, 4, 8)
# prompts: a chat turn, a paragraph, a document as long as the long cache (prefill costs grow
# faster than the prompt where attention dominates: ONNX Runtime's int8-cache prompt path)
PROFILE_PREFILL = (16, 128, 496)


def decode_profiles(
    paths: dict[str, Path],
    n_positions: int,
    batches: dict[str, tuple[int, ...]] | None = None,
    past_lens: tuple[int, ...] = PROFILE_PAST,
    prefill_lens: tuple[int, ...] = PROFILE_PREFILL,
    threads: int = 2,
    rounds: int = 3,
    kv_precisions: dict[str, str] | None = None,
) -> dict[str, dict]:
    """What generation costs with each file, measured through the serving engine's own
    runner (`slot_runner`: IO binding, cache written in place, last-position logits):
    the decode step at each batch size and cache length, and a prefill of each length.

    The variants are measured in turns, `rounds` times; a round's figure is the median of its
    calls and the profile's the fastest round's. On a shared machine other load only ever
    slows a call, and it comes in spells of seconds to a minute: a variant whose round
    lands in one reads slower than it is (rounds of one file 3.7, 3.9 and 8.2 ms on the
    2-core EPYC), and with the median of three, two such rounds swapped the ranking of
    ov-int4 and int4+int8 in a CI export. Each round's figures stay beside (`rounds`).
    `aigc build` ranks variants by the expected latency of a workload computed from these
    figures (`serving.variant_choice`). `kv_precisions`: a block runner's cache precision
    per name (the same file can be measured under two names)."""
    with profiler(paths, n_positions, batches, past_lens, prefill_lens, threads, kv_precisions) as one_round:
        samples = timed_rounds(one_round, rounds)
    past_lens = tuple(sorted({max(1, min(p, n_positions - 2)) for p in past_lens}))  # as measured
    return {
        name: {"past_lens": list(past_lens), **profile_of_rounds(by_key), "threads": threads}
        for name, by_key in samples.items()
    }


@contextlib.contextmanager
def profiler(
    paths: dict[str, Path],
    n_positions: int,
    batches: dict[str, tuple[int, ...]] | None = None,
    past_lens: tuple[int, ...] = PROFILE_PAST,
    prefill_lens: tuple[int, ...] = PROFILE_PREFILL,
    threads: int = 2,
    kv_precisions: dict[str, str] | None = None,
):
    """Each file's runner loaded and its cache rows written, for as long as the block runs:
    yields a function that times one round of every file's calls in turns,
    {name: {("step", batch, past) | ("prefill", tokens): the median ms of its calls}}
    (`decode_profiles` takes several; the bench times one beside each served round)."""
    batches, kv_precisions = batches or {}, kv_precisions or {}
    past_lens = tuple(sorted({max(1, min(p, n_positions - 2)) for p in past_lens}))
    prefill_lens = tuple(sorted({max(1, min(p, n_positions - 1)) for p in prefill_lens}))
    runs = {}  # name -> list of (key, callable)
    with contextlib.ExitStack() as stack:
        for name, path in paths.items():
            sizes = batches.get(name, PROFILE_BATCHES)
            model = stack.enter_context(
                slot_runner(path, max(sizes), n_positions, threads, kv_precisions.get(name, "auto"))
            )
            # Every row's cache written up to the longest past first: a step then reads real
            # positions, where unwritten ones would map the shared zero page and read as if
            # from the CPU's cache (an f32 cache at 496 positions measured nearly free).
            filled = (np.arange(past_lens[-1], dtype=np.int64) % 100) + 1
            for slot in range(max(sizes)):
                model.prefill(slot, filled, 0)
            calls = []
            for b in sizes:
                for past in past_lens:
                    tokens, pos = np.arange(1, b + 1, dtype=np.int64), np.full(b, past, np.int64)
                    calls.append((("step", b, past), lambda m=model, t=tokens, p=pos: m.decode(t, p)))
            for t in prefill_lens:
                ids = (np.arange(t, dtype=np.int64) % 100) + 1
                calls.append((("prefill", t), lambda m=model, i=ids: m.prefill(0, i, 0)))
            runs[name] = calls

        def one_round() -> dict[str, dict]:
            out: dict[str, dict] = {}
            for name, calls in runs.items():
                time.sleep(0.2)  # the previous session's idle threads stop spinning
                for key, fn in calls:
                    repeat = 5 if key[0] == "step" or key[1] <= 32 else 2
                    out.setdefault(name, {})[key] = median_ms(fn, warmup=1, repeat=repeat)
            return out

        yield one_round


def timed_rounds(one_round, rounds: int) -> dict[str, dict]:
    """`rounds` rounds of a `profiler`'s files: {name: {key: [ms of each round]}}."""
    samples: dict[str, dict] = {}
    for _ in range(rounds):
        for name, by_key in one_round().items():
            for key, ms in by_key.items():
                samples.setdefault(name, {}).setdefault(key, []).append(ms)
    return samples


def profile_of_rounds(samples: dict[tuple, list[float]]) -> dict[str, dict]:
    """A file's profile from its rounds' times (each a round's median, keyed ("step", batch,
    past) or ("prefill", tokens)): each figure its fastest round's, and every round's beside
    (`rounds`, in order)."""
    n = min(len(v) for v in samples.values())
    return {
        **_figures({k: round(min(v), 3) for k, v in samples.items()}),
        "rounds": [_figures({k: round(v[i], 3) for k, v in samples.items()}) for i in range(n)],
    }


def _figures(ms: dict[tuple, float]) -> dict[str, dict]:
    """{"step_ms": {batch: {cached tokens: ms}}, "prefill_ms": {tokens: ms}} from times keyed
    ("step", batch, past) and ("prefill", tokens)."""
    steps: dict[str, dict[str, float]] = {}
    for key, v in ms.items():
        if key[0] == "step":
            steps.setdefault(str(key[1]), {})[str(key[2])] = v
    return {"step_ms": steps, "prefill_ms": {str(k[1]): v for k, v in ms.items() if k[0] == "prefill"}}
