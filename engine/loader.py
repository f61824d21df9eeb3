"""The engine of a repository version folder: its runtime (`engine.runtimes`), runner,
tokenizer and settings."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

from engine import runtimes
from engine.config import EngineConfig
from engine.core import Engine
from engine.types import Sink


def load_runner(
    model_dir: str, config: EngineConfig, threads: int = 0, providers=None, own_process: bool = False
):
    """The runner for `model_dir` (a version folder: a graph, `model_info.json`)."""
    with open(os.path.join(model_dir, "model_info.json")) as f:
        n_positions = int(json.load(f)["n_positions"])
    config.check(n_positions)
    runtime = runtimes.of_version(model_dir)
    return runtime.runner_class().from_version(
        model_dir,
        config,
        config.max_len or n_positions,
        threads=threads,
        providers=providers,
        own_process=own_process,
    )


def load_engine(
    model_dir: str,
    config: EngineConfig,
    sink: Sink | None = None,
    intra_op_threads: int = 0,
    providers=None,
    clock: Callable[[], float] = time.monotonic,
    own_process: bool = False,
) -> Engine:
    """The engine for a repository version folder: a graph (`engine.runtimes` says which
    runtime runs it), `tokenizer.json` and `model_info.json`. `own_process`: the engine is
    the process's only user of its runtime (a Triton Python-backend stub)."""
    from tokenizers import Tokenizer

    runner = load_runner(model_dir, config, intra_op_threads, providers, own_process)
    tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    return Engine(runner, tokenizer, config, sink, clock)
