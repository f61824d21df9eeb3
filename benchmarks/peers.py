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
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from aigc.errors import BenchmarkError, ConfigError

logger = logging.getLogger(__name__)

SETTINGS_FILE = "peer.json"
# bumped when a conversion changes, so that older cached folders are converted again
FORMAT = 1
# OpenVINO's CPU plugin computes in bf16 on AMX CPUs unless told otherwise, which generates
# slower than f32 for this model (benchmarks/choices.md)
OPENVINO_PRECISION = "f32"
CHILD_TIMEOUT_S = 1800.0  # conversion (the 124M IR takes a minute or two on 2 cores) and measuring


@dataclass(frozen=True)
class Peer:
    """One peer runtime: what it needs installed, how it converts and how it generates."""

    name: str
    family: str
    label: str  # the table's path column
    package: str  # the distribution whose version is reported
    modules: tuple[str, ...]  # importable modules it needs (a missing one: skipped)
    install: str  # how to get the missing modules
    weights: str
    settings: dict  # the conversion's settings (recorded; a change converts again)
    # (checkpoint, out, settings, threads): writes the conversion into `out`; returns what
    # the converter reports it applied (recorded beside the settings)
    convert: Callable[[Path, Path, dict, int], dict] = field(repr=False)
    load: Callable[[Path, Path, int], Runner] = field(repr=False)  # (folder, checkpoint, threads)
    files: tuple[str, ...] = ()  # the weight files whose size is reported
    versions: tuple[str, ...] = ()  # other distributions the conversion uses

    def missing(self) -> str | None:
        """Why the peer cannot run here, or None."""
        for module in self.modules:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                return f"{module} is not installed ({self.install})"
        return None


class Runner:
    """A loaded peer: `generate` produces exactly `n` tokens greedily and calls `timer.put`
    once with the prompt, then once per new token as it is produced."""

    properties: dict

    def generate(self, ids: list[int], n: int, timer) -> list[int]:
        raise NotImplementedError


# -- the checkpoint hash and the cache -----------------------------------------------------


def checkpoint_files(checkpoint: Path) -> list[Path]:
    """The files a conversion reads: config.json, the weights and the tokenizer."""
    ckpt = Path(checkpoint)
    weights = sorted(ckpt.glob("*.safetensors")) or sorted(ckpt.glob("pytorch_model*.bin"))
    if not (ckpt / "config.json").is_file() or not weights:
        raise ConfigError(f"--gpt2 {ckpt}: no config.json and weights (*.safetensors / pytorch_model.bin)")
    tokenizer = [ckpt / "tokenizer.json"] if (ckpt / "tokenizer.json").is_file() else []
    return [ckpt / "config.json", *weights, *tokenizer]


def checkpoint_hash(checkpoint: Path) -> str:
    """sha256 over the checkpoint's config, weights and tokenizer (names and bytes), 16 hex digits."""
    h = hashlib.sha256()
    for f in checkpoint_files(checkpoint):
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:16]


def peer_folder(cache: Path, digest: str, name: str) -> Path:
    return Path(cache) / "peers" / digest / name


def _wanted_settings(peer: Peer) -> dict:
    return {"format": FORMAT, "peer": peer.name, **peer.settings}


def cached(peer: Peer, folder: Path) -> dict | None:
    """The recorded settings of a finished conversion in `folder` that matches `peer`, or None."""
    try:
        recorded = json.loads((Path(folder) / SETTINGS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return recorded if recorded.get("settings") == _wanted_settings(peer) else None


def prepare(peer: Peer, checkpoint: Path, folder: Path, threads: int) -> dict:
    """The peer's conversion of `checkpoint` in `folder`: reused when it is there with the same
    settings, else converted into a temporary folder that replaces `folder` when done.
    Returns what `peer.json` records, with `cached` and the conversion's seconds."""
    from aigc.fsutil import atomic_dir

    recorded = cached(peer, folder)
    if recorded is not None:
        return {**recorded, "cached": True}
    logger.info("converting %s for the peer %s into %s", checkpoint, peer.name, folder)
    t0 = time.perf_counter()
    with atomic_dir(folder, flag="--cache") as tmp:
        import torch

        torch.set_num_threads(threads)  # the converters load (and trace) the PyTorch model
        applied = peer.convert(Path(checkpoint), tmp, peer.settings, threads)
        recorded = {
            "settings": _wanted_settings(peer),
            "applied": applied,
            "checkpoint": str(Path(checkpoint).resolve()),
            "convert_s": round(time.perf_counter() - t0, 1),
            "versions": _versions((peer.package, *peer.versions)),
        }
        (tmp / SETTINGS_FILE).write_text(json.dumps(recorded, indent=2) + "\n")
    return {**recorded, "cached": False}


def _versions(dists) -> dict:
    out = {}
    for d in dists:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = None
    return out


# -- OpenVINO GenAI ------------------------------------------------------------------------

HF_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)


def _openvino_convert(checkpoint: Path, out: Path, settings: dict, threads: int) -> dict:
    import openvino as ov
    import openvino_tokenizers
    from transformers import AutoTokenizer

    from export.openvino import Compression, convert_ir

    convert_ir(checkpoint, out, Compression(**settings["compression"]))
    # GenAI's pipeline loads the tokenizer models from the same folder (ids are fed directly,
    # but it will not start without them)
    tokenizer, detokenizer = openvino_tokenizers.convert_tokenizer(
        AutoTokenizer.from_pretrained(checkpoint), with_detokenizer=True
    )
    ov.save_model(tokenizer, str(out / "openvino_tokenizer.xml"))
    ov.save_model(detokenizer, str(out / "openvino_detokenizer.xml"))
    for name in HF_TOKENIZER_FILES:
        if (checkpoint / name).is_file():
            shutil.copyfile(checkpoint / name, out / name)
    # what NNCF applied, as it recorded in the IR (the group size may have been adjusted to
    # a small model's hidden size)
    rt = ov.Core().read_model(str(out / "openvino_model.xml")).get_rt_info()
    applied = {}
    with contextlib.suppress(Exception):  # an IR without compression has no such entry
        wc = rt["nncf"]["weight_compression"]
        for key in ("mode", "group_size", "ratio", "all_layers", "backup_mode", "awq", "scale_estimation"):
            applied[key] = wc[key].astype(str)
    return {"nncf_weight_compression": applied}


class _OpenVINORunner(Runner):
    def __init__(self, folder: Path, checkpoint: Path, threads: int) -> None:
        import openvino_genai

        self.properties = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION}
        # LLMPipeline's own scheduler keeps a prefix cache across calls: a repeated prompt's
        # full 32-token blocks would skip their prefill (benchmarks/choices.md). Off, so that
        # every request prefills its prompt as the served path and the other peers do.
        scheduler = openvino_genai.SchedulerConfig()
        scheduler.enable_prefix_caching = False
        self.pipe = openvino_genai.LLMPipeline(
            str(folder), "CPU", scheduler_config=scheduler, **self.properties
        )
        self.properties["enable_prefix_caching"] = False

    def generate(self, ids: list[int], n: int, timer) -> list[int]:
        import openvino as ov
        import openvino_genai

        class Stamps(openvino_genai.StreamerBase):
            """Stamps every token as the pipeline hands it over (a text streamer would hold
            back or merge tokens that do not decode to whole characters)."""

            def __init__(self) -> None:
                super().__init__()
                self.tokens: list[int] = []

            def write(self, token):
                for t in [token] if isinstance(token, int) else list(token):
                    timer.put(t)
                    self.tokens.append(int(t))
                return openvino_genai.StreamingStatus.RUNNING

            def end(self) -> None:
                pass

        arr = np.asarray([ids], dtype=np.int64)
        inputs = openvino_genai.TokenizedInputs(ov.Tensor(arr), ov.Tensor(np.ones_like(arr)))
        config = openvino_genai.GenerationConfig()
        config.max_new_tokens = n
        config.min_new_tokens = n
        config.ignore_eos = True
        config.do_sample = False
        streamer = Stamps()
        timer.put(ids)
        self.pipe.generate(inputs, config, streamer)
        return streamer.tokens


# -- llama.cpp -----------------------------------------------------------------------------

GGUF_FILE = "model.gguf"
# llama_ftype values of llama.h
LLAMA_FTYPES = {"q8_0": 7, "q4_0": 2}
# HF GPT-2 Conv1D weights are (in, out); GGUF wants a Linear's (out, in)
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_GGUF_NAMES = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}


def _gguf_tensor_name(hf: str) -> str | None:
    """The GGUF name of a `GPT2LMHeadModel` state-dict entry; None for buffers and the tied head."""
    name = hf.removeprefix("transformer.")
    top = {
        "wte.weight": "token_embd.weight",
        "wpe.weight": "position_embd.weight",
        "ln_f.weight": "output_norm.weight",
        "ln_f.bias": "output_norm.bias",
    }
    if name in top:
        return top[name]
    if name.startswith("h."):
        _, block, rest = name.split(".", 2)
        module, _, kind = rest.rpartition(".")
        if module in _GGUF_NAMES and kind in ("weight", "bias"):
            return f"blk.{block}.{_GGUF_NAMES[module]}.{kind}"
    return None  # attn.bias / masked_bias buffers, lm_head (tied to wte)


def _gguf_vocab(checkpoint: Path, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, token types, merges) from the checkpoint's byte-level BPE tokenizer.json."""
    import gguf

    data = json.loads((checkpoint / "tokenizer.json").read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise BenchmarkError(f"{checkpoint}/tokenizer.json: a {model.get('type')} model, not byte-level BPE")
    tokens: list[str | None] = [None] * vocab_size
    types = [int(gguf.TokenType.NORMAL)] * vocab_size
    for text, i in model["vocab"].items():
        if i < vocab_size:
            tokens[i] = text
    for added in data.get("added_tokens", []):
        i = added["id"]
        if i < vocab_size:
            tokens[i] = added["content"]
            types[i] = int(gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED)
    for i, t in enumerate(tokens):
        if t is None:  # the model's vocabulary is larger than the tokenizer's
            tokens[i] = f"[PAD{i}]"
            types[i] = int(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges  # type: ignore[return-value]


def write_gguf(checkpoint: Path, path: Path) -> dict:
    """The GPT-2 checkpoint as an f32 GGUF (llama.cpp's `gpt2` architecture) at `path`.

    Returns the hyperparameters written. What llama.cpp's `convert_hf_to_gguf.py` writes for
    GPT-2: Conv1D weights transposed to (out, in), the output head as a copy of the tied
    token embedding, the byte-level BPE vocabulary with the `gpt-2` pre-tokenizer.
    """
    import gguf
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    checkpoint = Path(checkpoint)
    cfg = GPT2Config.from_pretrained(checkpoint)
    if cfg.model_type != "gpt2":
        raise BenchmarkError(f"{checkpoint}: a {cfg.model_type} checkpoint; the GGUF writer takes GPT-2")
    state = GPT2LMHeadModel.from_pretrained(checkpoint, dtype=torch.float32).state_dict()
    hparams = {
        "context_length": cfg.n_positions,
        "embedding_length": cfg.n_embd,
        "block_count": cfg.n_layer,
        "feed_forward_length": cfg.n_inner or 4 * cfg.n_embd,
        "head_count": cfg.n_head,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "vocab_size": cfg.vocab_size,
    }
    tokens, types, merges = _gguf_vocab(checkpoint, cfg.vocab_size)
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_name(checkpoint.name)
    writer.add_context_length(hparams["context_length"])
    writer.add_embedding_length(hparams["embedding_length"])
    writer.add_block_count(hparams["block_count"])
    writer.add_feed_forward_length(hparams["feed_forward_length"])
    writer.add_head_count(hparams["head_count"])
    writer.add_layer_norm_eps(hparams["layer_norm_epsilon"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    if cfg.bos_token_id is not None:
        writer.add_bos_token_id(cfg.bos_token_id)
    if cfg.eos_token_id is not None:
        writer.add_eos_token_id(cfg.eos_token_id)
    for hf_name, tensor in state.items():
        name = _gguf_tensor_name(hf_name)
        if name is None:
            continue
        data = tensor.detach().numpy().astype(np.float32)
        if hf_name.endswith(_CONV1D):
            data = data.T
        writer.add_tensor(name, np.ascontiguousarray(data))
        if name == "token_embd.weight":
            writer.add_tensor("output.weight", np.ascontiguousarray(data))  # the tied LM head
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hparams


def quantize_gguf(src: Path, dst: Path, ftype: int, threads: int) -> None:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not Path(dst).is_file():
        raise BenchmarkError(f"llama_model_quantize {src} -> {dst} (ftype {ftype}) failed: {rc}")


def _llamacpp_convert(checkpoint: Path, out: Path, settings: dict, threads: int) -> dict:
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


class _LlamaCppRunner(Runner):
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


# -- CTranslate2 ---------------------------------------------------------------------------


def _ctranslate2_convert(checkpoint: Path, out: Path, settings: dict, threads: int) -> dict:
    from ctranslate2.converters import TransformersConverter

    TransformersConverter(str(checkpoint)).convert(
        str(out), quantization=settings["quantization"], force=True
    )
    return {"config": json.loads((out / "config.json").read_text())}


class _CTranslate2Runner(Runner):
    def __init__(self, folder: Path, checkpoint: Path, threads: int) -> None:
        import ctranslate2

        self.properties = {"device": "cpu", "intra_threads": threads, "inter_threads": 1}
        self.generator = ctranslate2.Generator(str(folder), **self.properties)
        self.properties["compute_type"] = self.generator.compute_type
        vocab = folder / "vocabulary.json"
        if vocab.is_file():
            self.vocab = json.loads(vocab.read_text(encoding="utf-8"))
        else:
            self.vocab = (folder / "vocabulary.txt").read_text(encoding="utf-8").split("\n")

    def generate(self, ids: list[int], n: int, timer) -> list[int]:
        prompt = [self.vocab[i] for i in ids]  # the Python API takes token strings
        timer.put(ids)
        out: list[int] = []
        # min_length = max_length: EOS is masked until n tokens, and n is where it stops
        for step in self.generator.generate_tokens(prompt, max_length=n, min_length=n, sampling_topk=1):
            timer.put(step.token_id)
            out.append(int(step.token_id))
        return out


# -- the registry --------------------------------------------------------------------------


def _openvino(bits: int, group_size: int) -> Peer:
    # optimum-intel's CLI defaults (`prepare_wc_config`, `_DEFAULT_4BIT_WQ_CONFIG`): asymmetric,
    # int8 per output channel, int4 in groups of 128, ratio 1.0; the embedding and head get
    # NNCF's int8 asymmetric backup precision under int4
    compression = {"bits": bits, "group_size": group_size, "symmetric": False, "all_layers": False}
    return Peer(
        name=f"openvino_int{bits}",
        family="openvino",
        label=f"OpenVINO GenAI `LLMPipeline` int{bits}",
        package="openvino-genai",
        modules=("openvino", "openvino_genai", "openvino_tokenizers", "optimum.intel", "nncf"),
        install="`pip install -e .[peers]`",
        weights=(
            f"int{bits} asym, per channel (embedding/head int8 asym)"
            if group_size == -1
            else f"int{bits} asym, groups of {group_size} (embedding/head int8 asym)"
        ),
        settings={
            "tool": "export.openvino.convert_ir (optimum-intel OVModelForCausalLM, stateful IR, NNCF)",
            "equivalent": f"optimum-cli export openvino --weight-format int{bits}",
            "compression": compression,
            "ratio": 1.0,
        },
        convert=_openvino_convert,
        load=_OpenVINORunner,
        files=("openvino_model.bin",),
        versions=("openvino", "optimum-intel", "nncf", "openvino-tokenizers"),
    )


def _llamacpp(quant: str) -> Peer:
    return Peer(
        name=f"llamacpp_{quant}",
        family="llamacpp",
        label=f"llama.cpp (llama-cpp-python) {quant}",
        package="llama-cpp-python",
        modules=("llama_cpp", "gguf"),
        install="`pip install -e .[llamacpp]` builds it from source; see the README",
        weights=f"GGUF {quant} (llama.cpp's default tensor types for this file type)",
        settings={
            "tool": "benchmarks.peers.write_gguf (f32 GGUF, arch gpt2) + llama_model_quantize",
            "quantize": quant,
            "ftype": LLAMA_FTYPES[quant],
        },
        convert=_llamacpp_convert,
        load=_LlamaCppRunner,
        files=(GGUF_FILE,),
        versions=("gguf",),
    )


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        _openvino(8, -1),
        _openvino(4, 128),
        _llamacpp("q8_0"),
        _llamacpp("q4_0"),
        Peer(
            name="ctranslate2_int8",
            family="ctranslate2",
            label="CTranslate2 `Generator` int8",
            package="ctranslate2",
            modules=("ctranslate2",),
            install="`pip install -e .[peers]`",
            weights="int8 (weights; int8_float32 compute on CPU)",
            settings={"tool": "ctranslate2.converters.TransformersConverter", "quantization": "int8"},
            convert=_ctranslate2_convert,
            load=_CTranslate2Runner,
            files=("model.bin",),
            versions=("transformers",),
        ),
    )
}
FAMILIES = {
    f: tuple(n for n, p in PEERS.items() if p.family == f) for f in ("openvino", "llamacpp", "ctranslate2")
}
# --quick: the 4-bit peers (the fastest of each engine here) and CTranslate2's one
QUICK = ("openvino_int4", "llamacpp_q4_0", "ctranslate2_int8")


def resolve(names: tuple[str, ...] | None, quick: bool = False) -> tuple[str, ...]:
    """`--peers` names (peers, engine families, `all`, `none`) as peer names in registry order."""
    if names is None:
        return QUICK if quick else tuple(PEERS)
    wanted: set[str] = set()
    allowed = ("all", "none", *FAMILIES, *PEERS)
    for n in names:
        if n == "all":
            wanted |= set(PEERS)
        elif n == "none":
            continue
        elif n in FAMILIES:
            wanted |= set(FAMILIES[n])
        elif n in PEERS:
            wanted.add(n)
        else:
            raise ConfigError(f"--peers: unknown peer {n!r}; allowed: {', '.join(allowed)}")
    if "none" in names and wanted:
        raise ConfigError("--peers: `none` cannot be combined with peer names")
    return tuple(n for n in PEERS if n in wanted)


# -- converting and measuring (in child processes) -----------------------------------------


def convert_job(job: dict, registry: dict[str, Peer] | None = None) -> dict:
    """The conversion child's work: `prepare`, or `{"skipped": reason}`."""
    peer = (registry or PEERS)[job["peer"]]
    try:
        return prepare(peer, Path(job["checkpoint"]), Path(job["folder"]), int(job["threads"]))
    except Exception as exc:  # noqa: BLE001 - any conversion failure skips the peer
        logger.debug("conversion failed", exc_info=True)
        return {"skipped": f"conversion failed: {_one_line(exc)}"}


def measure_job(job: dict, registry: dict[str, Peer] | None = None) -> dict:
    """The measuring child's work: load the converted peer and time each workload."""
    from benchmarks import measure

    peer = (registry or PEERS)[job["peer"]]
    checkpoint, folder, threads = Path(job["checkpoint"]), Path(job["folder"]), int(job["threads"])
    recorded = cached(peer, folder)
    if recorded is None:
        return {"skipped": f"no finished conversion in {folder}"}
    try:
        runner = peer.load(folder, checkpoint, threads)
    except Exception as exc:  # noqa: BLE001 - any load failure skips the peer
        logger.debug("load failed", exc_info=True)
        return {"skipped": f"loading failed: {_one_line(exc)}"}
    out = {
        "runtime": peer.label,
        "package": peer.package,
        "version": _versions((peer.package,))[peer.package],
        "weights": peer.weights,
        "file_bytes": sum((folder / f).stat().st_size for f in peer.files if (folder / f).is_file()),
        "conversion": {
            **recorded["settings"],
            "applied": recorded.get("applied"),
            "versions": recorded.get("versions"),
            "convert_s": recorded.get("convert_s"),
        },
        "folder": str(folder),
        "properties": runner.properties,
    }
    for w in job["workloads"]:
        ids, n = [int(i) for i in w["ids"]], int(w["new_tokens"])
        try:
            out[w["key"]] = {
                "prompt_tokens": len(ids),
                "new_tokens": n,
                **measure.generate_baseline(
                    lambda n, timer, ids=ids: runner.generate(ids, n, timer), n, int(w["repeats"])
                ),
            }
        except Exception as exc:  # noqa: BLE001 - a failing generation skips the peer
            logger.debug("generation failed", exc_info=True)
            return {"skipped": f"generation failed: {_one_line(exc)}"}
    return out


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _child_reason(proc: subprocess.CompletedProcess) -> str:
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = f"signal {-proc.returncode}"
        what = f"crashed ({sig})"
    else:
        what = f"exited with status {proc.returncode}"
    tail = [line.strip() for line in (proc.stderr or "").splitlines() if line.strip()]
    return what + (f": {tail[-1][:300]}" if tail else "")


def _child(mode: str, job: dict) -> dict:
    """`python -m benchmarks.peers MODE JOB RESULT`: its result, or why it gave none."""
    with tempfile.TemporaryDirectory(prefix="aigc-peer-") as tmp:
        job_file, result_file = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_file.write_text(json.dumps(job))
        env = dict(os.environ, OPENVINO_TELEMETRY_OPT_OUT="1", TOKENIZERS_PARALLELISM="false")
        cmd = [sys.executable, "-m", "benchmarks.peers", mode, str(job_file), str(result_file)]
        if logger.isEnabledFor(logging.DEBUG):
            cmd.append("--verbose")
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=CHILD_TIMEOUT_S,
                env=env,
                cwd=Path(__file__).resolve().parent.parent,  # `benchmarks` importable uninstalled too
            )
        except subprocess.TimeoutExpired:
            return {"skipped": f"{mode}: did not finish within {CHILD_TIMEOUT_S:.0f} s"}
        if proc.stderr and logger.isEnabledFor(logging.DEBUG):
            logger.debug("peer %s %s stderr:\n%s", job["peer"], mode, proc.stderr)
        if proc.returncode != 0 or not result_file.is_file():
            return {"skipped": f"{mode}: {_child_reason(proc)}"}
        return json.loads(result_file.read_text())


def run_peer(
    name: str,
    checkpoint: Path,
    folder: Path,
    threads: int,
    workloads: list[dict],
    registry: dict[str, Peer] | None = None,
) -> dict:
    """One peer's figures per workload key, or `{"skipped": reason}`.

    A missing conversion is made in one child process and the peer measured in another: the
    converters load PyTorch, whose OpenMP threads left in a process slowed llama.cpp there
    about a thousandfold.
    """
    peer = (registry or PEERS)[name]
    why = peer.missing()
    if why:
        return {"skipped": why}
    job = {
        "peer": name,
        "checkpoint": str(Path(checkpoint).resolve()),
        "folder": str(Path(folder).absolute()),
        "threads": threads,
        "workloads": workloads,
    }
    converted = None
    if cached(peer, folder) is None:
        converted = _child("convert", job)
        if "skipped" in converted:
            return converted
    out = _child("measure", job)
    if "skipped" not in out:
        out["cached"] = converted is None  # converted in an earlier run
    return out


def bench(
    names: tuple[str, ...],
    checkpoint: Path,
    cache: Path,
    threads: int,
    workloads: list[dict],
    progress=None,
    registry: dict[str, Peer] | None = None,
) -> dict:
    """Every named peer on the same workloads; {name: figures or {"skipped": reason}}.
    A skipped peer gets a one-line warning."""
    digest = checkpoint_hash(checkpoint)
    out = {}
    for name in names:
        if progress is not None:
            progress(name)
        folder = peer_folder(cache, digest, name)
        out[name] = run_peer(name, checkpoint, folder, threads, workloads, registry)
        if "skipped" in out[name]:
            logger.warning("peer %s skipped: %s", name, out[name]["skipped"])
    return out


def measured(figures: dict | None) -> dict:
    """The peers that ran (skipped ones left out), by name."""
    return {n: f for n, f in (figures or {}).items() if isinstance(f, dict) and "tokens_per_s" in f}


def best(figures: dict | None) -> str | None:
    """The measured peer with the highest tokens/s; None when none ran."""
    ran = measured(figures)
    return max(ran, key=lambda n: ran[n]["tokens_per_s"], default=None)


def best_per_family(figures: dict) -> list[str]:
    """The fastest measured peer of each engine, fastest first."""
    picks = [best({n: f for n, f in figures.items() if PEERS[n].family == fam}) for fam in FAMILIES]
    ran = [p for p in picks if p is not None]
    return sorted(ran, key=lambda n: -figures[n]["tokens_per_s"])


def main(argv: list[str] | None = None) -> int:
    """A child process: `python -m benchmarks.peers convert|measure JOB.json RESULT.json [--verbose]`."""
    args = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in args
    mode, job_file, result_file = [a for a in args if a != "--verbose"]
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr)
    job = json.loads(Path(job_file).read_text())
    result = {"convert": convert_job, "measure": measure_job}[mode](job)
    Path(result_file).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
