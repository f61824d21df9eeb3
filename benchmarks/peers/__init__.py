"""Peer runtimes for `aigc bench`: the fastest CPU engines a user could run GPT-2 on instead.

Each peer converts the same checkpoint into its own format (cached under
`<cache>/peers/<checkpoint hash>/<peer>`, written whole or not at all) and generates from the
same prompt ids, the same number of greedy tokens with EOS ignored, on the same threads:

- `openvino_int8`, `openvino_int4`: OpenVINO GenAI `LLMPipeline` on an IR with weights
  compressed as `optimum-cli export openvino --weight-format int8|int4` does by default.
- `llamacpp_q8_0`, `llamacpp_q4_0`: llama.cpp through `llama-cpp-python`, on a GGUF that
  `write_gguf` writes from the checkpoint (f32) and llama.cpp quantizes.
- `ctranslate2_int8`: CTranslate2's `Generator` on its int8 conversion.

A missing conversion is made in one child process and the peer is measured in another
(`python -m benchmarks.peers convert|measure JOB RESULT`): a native crash, a hang or a failed
conversion there becomes `{"skipped": reason}` in the results, never a failed benchmark, and
the converters' PyTorch threads, the peer's thread pool and its memory go away with it.

The modules: `peer` (what a peer is), `cache` (the checkpoint hash and the cached
conversions), `openvino_genai`, `llamacpp` with `gguf_writer`, and `ctranslate2_generator` (the
runtimes), `registry` (the peers and `--peers`), `child` (the child processes), `results`
(running the chosen peers and picking from their figures), `__main__` (the child's command).
"""

from benchmarks.peers.cache import (
    FORMAT,
    SETTINGS_FILE,
    cached,
    checkpoint_files,
    checkpoint_hash,
    peer_folder,
    prepare,
)
from benchmarks.peers.child import CHILD_TIMEOUT_S, convert_job, measure_job, run_peer
from benchmarks.peers.gguf_writer import write_gguf
from benchmarks.peers.llamacpp import GGUF_FILE, LLAMA_FTYPES, gguf_tensor_types, quantize_gguf
from benchmarks.peers.openvino_genai import HF_TOKENIZER_FILES, OPENVINO_PRECISION
from benchmarks.peers.peer import Peer, Runner
from benchmarks.peers.registry import FAMILIES, PEERS, QUICK, resolve
from benchmarks.peers.results import bench, best, best_per_family, measured

__all__ = [
    "CHILD_TIMEOUT_S",
    "FAMILIES",
    "FORMAT",
    "GGUF_FILE",
    "HF_TOKENIZER_FILES",
    "LLAMA_FTYPES",
    "OPENVINO_PRECISION",
    "PEERS",
    "QUICK",
    "SETTINGS_FILE",
    "Peer",
    "Runner",
    "bench",
    "best",
    "best_per_family",
    "cached",
    "checkpoint_files",
    "checkpoint_hash",
    "convert_job",
    "gguf_tensor_types",
    "measure_job",
    "measured",
    "peer_folder",
    "prepare",
    "quantize_gguf",
    "resolve",
    "run_peer",
    "write_gguf",
]
