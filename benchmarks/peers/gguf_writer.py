"""The GGUF writer for the llama.cpp peer: a GPT-2 checkpoint as an f32 GGUF of llama.cpp's
`gpt2` architecture, tensors renamed and the byte-level BPE vocabulary written as
llama.cpp's `convert_hf_to_gguf.py` does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from aigc.errors import BenchmarkError

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
