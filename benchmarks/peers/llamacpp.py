"""The llama.cpp peer (through `llama-cpp-python`): converting the checkpoint to a GGUF that
llama.cpp quantizes, and generating with `Llama`."""

from __future__ import annotations

import json
from pathlib import Path

from aigc.errors import BenchmarkError
from benchmarks.peers.gguf_writer import write_gguf
from benchmarks.peers.peer import Runner

GGUF_FILE = "model.gguf"
# llama_ftype values of llama.h
LLAMA_FTYPES = {"q8_0": 7, "q4_0": 2}


def quantize_gguf(src: Path, dst: Path, ftype: int, threads: int) -> None:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not Path(dst).is_file():
        raise BenchmarkError(f"llama_model_quantize {src} -> {dst} (ftype {ftype}) failed: {rc}")


def convert(checkpoint: Path, out: Path, settings: dict, threads: int) -> dict:
    f32 = out / "model-f32.gguf"
    hparams = write_gguf(checkpoint, f32)
    quantize_gguf(f32, out / GGUF_FILE, LLAMA_FTYPES[settings["quantize"]], threads)
    f32_bytes = f32.stat().st_size
    f32.unlink()
    return {"gguf_hparams": hparams, "f32_gguf_bytes": f32_bytes, **gguf_tensor_types(out / GGUF_FILE)}


def gguf_tensor_types(path: Path) -> dict:
    """The tensor types llama.cpp chose for a quantized file: counts, and those of the
    tensors outside the blocks (it keeps the output head at higher precision)."""
    from collections import Counter

    import gguf

    tensors = gguf.GGUFReader(str(path)).tensors
    return {
        "tensor_types": dict(Counter(t.tensor_type.name for t in tensors)),
        "outside_blocks": {t.name: t.tensor_type.name for t in tensors if not t.name.startswith("blk.")},
    }


class LlamaCppRunner(Runner):
    def __init__(self, folder: Path, checkpoint: Path, threads: int) -> None:
        import inspect

        from llama_cpp import Llama

        n_ctx = int(json.loads((Path(checkpoint) / "config.json").read_text())["n_positions"])
        self.properties = {
            "n_threads": threads,
            "n_threads_batch": threads,
            "n_ctx": n_ctx,
            "n_batch": n_ctx,  # a prompt up to the window is one decode call
        }
        if "flash_attn" in inspect.signature(Llama.__init__).parameters:
            self.properties["flash_attn"] = True
        self.llm = Llama(model_path=str(folder / GGUF_FILE), verbose=False, seed=0, **self.properties)

    def generate(self, ids: list[int], n: int, timer) -> list[int]:
        # n_tokens = 0: no prefix of the last request's cache is reused; the prompt is
        # prefilled in full as the other paths do
        self.llm.reset()
        timer.put(ids)
        out: list[int] = []
        if n <= 0:
            return out
        # greedy; the iterator does not stop at EOS (its caller would)
        steps = self.llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0)
        try:
            for token in steps:
                timer.put(token)
                out.append(int(token))
                if len(out) == n:
                    break
        finally:
            steps.close()
        return out
