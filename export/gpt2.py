"""GPT-2 to one fused ONNX graph with its KV cache, built from the Hugging Face weights.

Per layer: `SkipLayerNormalization` (residual add + LayerNorm + bias), the contrib
`Attention` op with `past`/`present` (causal, raw attention mask, so left padding works
for batched decoding), `FastGelu` (GPT-2's tanh `gelu_new`) and plain MatMul. This is the
layout ONNX Runtime's dynamic quantizer turns into QAttention + DynamicQuantizeMatMul, the
fastest CPU path measured (see PERF-NOTES). Parity with `transformers` is checked on fresh
inputs after every export.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from aigc import registry
from aigc.errors import CheckpointError, ExportError, ToleranceError

logger = logging.getLogger(__name__)

OPSET = 17
SUPPORTED_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def load_gpt2_checkpoint(path: Path):
    """The `GPT2LMHeadModel` of a Hugging Face folder (safetensors only), in eval mode."""
    from training.checkpoint import detect_checkpoint_kind

    path = Path(path)
    kind = detect_checkpoint_kind(path)
    if registry.get(kind).hf_model_type is None:
        raise CheckpointError(
            f"checkpoint at {path} is a {kind!r} checkpoint, expected a Hugging Face GPT-2 folder"
        )
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(
            f"checkpoint {path}: model.safetensors missing (only safetensors weights are loaded)"
        )
    tokenizer_files(path)  # refuse a folder without a tokenizer before loading the weights
    import torch
    from transformers import GPT2LMHeadModel

    try:
        model = GPT2LMHeadModel.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    except Exception as exc:  # transformers raises OSError, ValueError, SafetensorError...
        raise CheckpointError(f"checkpoint {path}: cannot load the GPT-2 weights ({exc})") from exc
    check_supported(model.config)
    return model.eval()


def check_supported(cfg) -> None:
    if cfg.activation_function not in SUPPORTED_ACTIVATIONS:
        raise ExportError(
            f"config.activation_function {cfg.activation_function!r} is not supported "
            f"(allowed: {', '.join(SUPPORTED_ACTIVATIONS)})"
        )
    for field in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if getattr(cfg, field, False):
            raise ExportError(f"config.{field}=true is not supported")


def model_info(cfg, eos_token_id: int | None = None) -> dict:
    return {
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "head_size": cfg.n_embd // cfg.n_head,
        "n_embd": cfg.n_embd,
        "n_positions": cfg.n_positions,
        "vocab_size": cfg.vocab_size,
        "eos_token_id": cfg.eos_token_id if eos_token_id is None else eos_token_id,
        "bos_token_id": cfg.bos_token_id,
    }


def build_graph(model) -> onnx.ModelProto:
    cfg = model.config
    sd = {
        k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)).astype(np.float32)
        for k, v in model.state_dict().items()
    }
    L, nh, E, V = cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size
    hs, eps = E // nh, float(cfg.layer_norm_epsilon)
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def w(name: str, arr: np.ndarray) -> str:
        # np.require keeps a 0-d index 0-d (ascontiguousarray would make it shape (1,)).
        inits.append(numpy_helper.from_array(np.require(arr, requirements="C"), name))
        return name

    def node(op, inputs, outputs, domain="", **attrs):
        nodes.append(helper.make_node(op, inputs, outputs, name=f"{op}_{len(nodes)}", domain=domain, **attrs))
        return outputs

    tok = node("Gather", [w("wte", sd["transformer.wte.weight"]), "input_ids"], ["tok_emb"])[0]
    pos = node("Gather", [w("wpe", sd["transformer.wpe.weight"]), "position_ids"], ["pos_emb"])[0]
    residual = node("Add", [tok, pos], ["h_0"])[0]  # (B, T, E)
    x = node(
        "LayerNormalization",
        [
            residual,
            w("ln_1_w_0", sd["transformer.h.0.ln_1.weight"]),
            w("ln_1_b_0", sd["transformer.h.0.ln_1.bias"]),
        ],
        ["ln1_0"],
        axis=-1,
        epsilon=eps,
    )[0]
    scale = 1.0 / np.sqrt(hs) if getattr(cfg, "scale_attn_weights", True) else 1.0
    for i in range(L):
        p = f"transformer.h.{i}."
        # Packed QKV (B, T, 3E) in GPT-2's order [q | k | v], head-major inside each: the
        # layout GroupQueryAttention takes when key and value are left empty.
        qkv = node("MatMul", [x, w(f"qkv_w_{i}", sd[p + "attn.c_attn.weight"])], [f"qkv_mm_{i}"])[0]
        qkv = node("Add", [qkv, w(f"qkv_b_{i}", sd[p + "attn.c_attn.bias"])], [f"qkv_{i}"])[0]
        # kv heads = heads (GPT-2 is multi-head). past_key/value (B, nh, max_len, hs) may be
        # the very buffers bound as present (IO binding): each call then writes only the
        # positions [seqlens_k - T + 1, seqlens_k] of each row, in place.
        attn = node(
            "GroupQueryAttention",
            [qkv, "", "", f"past_key_{i}", f"past_value_{i}", "seqlens_k", "total_sequence_length"],
            [f"attn_{i}", f"present_key_{i}", f"present_value_{i}"],
            domain="com.microsoft",
            num_heads=nh,
            kv_num_heads=nh,
            scale=float(scale),
        )[0]
        proj = node(
            "MatMul", [attn, w(f"attn_proj_w_{i}", sd[p + "attn.c_proj.weight"])], [f"attn_proj_{i}"]
        )[0]
        x, _, _, residual = node(
            "SkipLayerNormalization",
            [
                proj,
                residual,
                w(f"ln_2_w_{i}", sd[p + "ln_2.weight"]),
                w(f"ln_2_b_{i}", sd[p + "ln_2.bias"]),
                w(f"attn_proj_b_{i}", sd[p + "attn.c_proj.bias"]),
            ],
            [f"ln2_{i}", "", "", f"res_attn_{i}"],
            domain="com.microsoft",
            epsilon=eps,
        )
        fc = node("MatMul", [x, w(f"fc_w_{i}", sd[p + "mlp.c_fc.weight"])], [f"fc_{i}"])[0]
        act = node(
            "FastGelu", [fc, w(f"fc_b_{i}", sd[p + "mlp.c_fc.bias"])], [f"gelu_{i}"], domain="com.microsoft"
        )[0]
        mlp = node("MatMul", [act, w(f"mlp_proj_w_{i}", sd[p + "mlp.c_proj.weight"])], [f"mlp_proj_{i}"])[0]
        last = i == L - 1
        g = sd["transformer.ln_f.weight"] if last else sd[f"transformer.h.{i + 1}.ln_1.weight"]
        b = sd["transformer.ln_f.bias"] if last else sd[f"transformer.h.{i + 1}.ln_1.bias"]
        x, _, _, residual = node(
            "SkipLayerNormalization",
            [
                mlp,
                residual,
                w(f"ln_next_w_{i}", g),
                w(f"ln_next_b_{i}", b),
                w(f"mlp_proj_b_{i}", sd[p + "mlp.c_proj.bias"]),
            ],
            [f"ln_next_{i}", "", "", f"res_mlp_{i}"],
            domain="com.microsoft",
            epsilon=eps,
        )
    lm_head = sd.get("lm_head.weight", sd["transformer.wte.weight"])  # tied: (V, E)
    lm = w("lm_head_t", lm_head.T)
    # The vocabulary projection of the positions the caller lists (`logits_indices`) only:
    # generation lists each row's last position, perplexity every position. ONNX Runtime runs
    # every node of a graph whatever outputs are bound, so a projection of every position
    # would cost a prefill that many lm-head rows and a decode step a second one.
    picked = node("Gather", [x, "logits_indices"], ["picked_hidden"], axis=1)[0]
    logits = node("MatMul", [picked, lm], ["logits"])[0]
    node("Gather", [logits, w("last_index", np.array(-1, np.int64))], ["last_logits"], axis=1)
    # Greedy decoding needs only this (B,) int64 off the device, not (B, vocab) logits.
    node("ArgMax", ["last_logits"], ["next_token"], axis=-1, keepdims=0)

    cache_shape = ["batch", nh, "cache_len", hs]
    present_shape = ["batch", nh, "present_len", hs]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
        # Per row: its total length after this call, minus one (GroupQueryAttention's form).
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
        # The longest row's total length after this call.
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
        # The positions (of every row, 0..seq-1) whose logits `logits` returns; `last_logits`
        # and `next_token` are those of the last one listed.
        helper.make_tensor_value_info("logits_indices", TensorProto.INT64, ["picked"]),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "picked", V]),
        helper.make_tensor_value_info("last_logits", TensorProto.FLOAT, ["batch", V]),
        helper.make_tensor_value_info("next_token", TensorProto.INT64, ["batch"]),
    ]
    for i in range(L):
        for kv in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_{kv}_{i}", TensorProto.FLOAT, cache_shape))
            outputs.append(
                helper.make_tensor_value_info(f"present_{kv}_{i}", TensorProto.FLOAT, present_shape)
            )
    graph = helper.make_graph(nodes, "gpt2_with_kv_slots", inputs, outputs, inits)
    model_proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
        producer_name="aigc-serve",
    )
    model_proto.ir_version = 8
    return model_proto


def export_gpt2_fp32(checkpoint: Path, out_file: Path, hf_model=None) -> dict:
    """Write the fused fp32 graph; returns `model_info` (CONTRACTS.md)."""
    model = hf_model if hf_model is not None else load_gpt2_checkpoint(checkpoint)
    proto = build_graph(model)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out_file))
    logger.info("exported gpt2 (%d layers) -> %s", model.config.n_layer, out_file)
    return model_info(model.config)


def tokenizer_files(checkpoint: Path) -> list[Path]:
    """The tokenizer files of a GPT-2 folder: `tokenizer.json` (the fast tokenizer), else the
    classic `vocab.json` + `merges.txt` (older `save_pretrained` folders, the slow tokenizer)."""
    checkpoint = Path(checkpoint)
    fast = checkpoint / "tokenizer.json"
    if fast.is_file():
        return [fast]
    classic = [checkpoint / "vocab.json", checkpoint / "merges.txt"]
    if all(f.is_file() for f in classic):
        return classic
    missing = ", ".join(f.name for f in classic if not f.is_file())
    raise CheckpointError(
        f"checkpoint {checkpoint}: no tokenizer: needs tokenizer.json, or vocab.json + merges.txt "
        f"({missing} missing); save the tokenizer with save_pretrained"
    )


def load_gpt2_tokenizer(checkpoint: Path):
    """The checkpoint's tokenizer as a `tokenizers.Tokenizer`, which is what the server runs.

    A classic folder (vocab.json + merges.txt) is converted by `transformers`: its
    `GPT2TokenizerFast` builds the byte-level BPE from the two files and the folder's
    tokenizer_config.json (special tokens, add_prefix_space), exactly the tokenizer that
    `AutoTokenizer.from_pretrained` gives for the folder."""
    from tokenizers import Tokenizer

    files = tokenizer_files(checkpoint)
    if files[0].name == "tokenizer.json":
        try:
            return Tokenizer.from_file(str(files[0]))
        except Exception as exc:  # tokenizers raises a bare Exception on bad files
            raise CheckpointError(f"checkpoint {files[0]}: unreadable tokenizer ({exc})") from exc
    from transformers import GPT2TokenizerFast

    try:
        tok = GPT2TokenizerFast.from_pretrained(str(checkpoint), local_files_only=True)
    except Exception as exc:  # JSON, OSError or the converter's errors
        raise CheckpointError(
            f"checkpoint {checkpoint}: cannot build a tokenizer from vocab.json + merges.txt ({exc})"
        ) from exc
    logger.info("converted %s (vocab.json + merges.txt) to tokenizer.json", checkpoint)
    return tok.backend_tokenizer


# generation_config.json fields that are sampling defaults of the engine's requests
GENERATION_DEFAULTS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def write_gpt2_assets(checkpoint: Path, assets_dir: Path, info: dict) -> dict:
    """tokenizer.json and model_info.json: what the server needs beside the graph.

    A `tokenizer.json` is copied as it is; a classic tokenizer is converted once, here.
    Returns `info` with the EOS id the tokenizer really uses."""
    assets_dir.mkdir(parents=True, exist_ok=True)
    tok = load_gpt2_tokenizer(checkpoint)
    src = tokenizer_files(checkpoint)[0]
    if src.name == "tokenizer.json":
        shutil.copyfile(src, assets_dir / "tokenizer.json")
    else:
        tok.save(str(assets_dir / "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    info = dict(info, eos_token_id=info["eos_token_id"] if eos is None else eos)
    # the checkpoint's own sampling defaults (what the OpenAI frontend uses where a request
    # leaves a field out, as vLLM does); none set: OpenAI's (temperature 1)
    gen_file = Path(checkpoint) / "generation_config.json"
    gen = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
    info["generation_defaults"] = {k: gen[k] for k in GENERATION_DEFAULTS if gen.get(k) is not None}
    (assets_dir / "model_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def validate_gpt2(
    onnx_path: Path, hf_model, rng: np.random.Generator, atol: float = 1e-3, rtol: float = 1e-4
) -> dict:
    """ONNX Runtime vs transformers on fresh random tokens: a prefill, a decode step on the
    returned cache, and the serving engine's way (KV slots shared in place through IO
    binding): two prompts of different lengths prefilled in chunks into their slots, then
    one batched decode step for both. Allowed: atol + rtol * max|logits|."""
    import torch

    from export.gpt2_eval import forward, slot_runner
    from export.ortutil import make_session

    sess = make_session(onnx_path)
    vocab, n_pos = hf_model.config.vocab_size, hf_model.config.n_positions
    worst = {"max_abs_diff": 0.0, "max_abs_logit": 0.0}

    def ref_logits(ids) -> np.ndarray:
        with torch.no_grad():
            return hf_model(torch.from_numpy(np.asarray(ids, np.int64)[None])).logits[0].numpy()

    def check(name: str, got: np.ndarray, ref: np.ndarray) -> None:
        if got.shape != ref.shape:
            raise ToleranceError(f"gpt2 {name}: ONNX logits {list(got.shape)} vs PyTorch {list(ref.shape)}")
        diff, scale = float(np.abs(got - ref).max()), float(np.abs(ref).max())
        worst["max_abs_diff"] = max(worst["max_abs_diff"], diff)
        worst["max_abs_logit"] = max(worst["max_abs_logit"], scale)
        if diff > atol + rtol * scale:
            raise ToleranceError(
                f"gpt2 {name}: max abs logit diff {diff:.3g} > {atol + rtol * scale:.3g} "
                f"(atol {atol} + rtol {rtol} x max|logit| {scale:.3g})"
            )

    n = int(rng.integers(4, min(12, n_pos - 2)))
    seq = rng.integers(0, vocab, size=n + 1)
    full = ref_logits(seq)
    logits, past = forward(sess, seq[None, :n])
    check("prefill", logits[0], full[:n])
    logits, _ = forward(sess, seq[None, n:], past, past_len=n)
    check("decode step with past", logits[0], full[n:])
    # Two slots of different lengths, prefilled in chunks of 3, then one step for both rows.
    prompts = [rng.integers(0, vocab, size=n).tolist(), rng.integers(0, vocab, size=max(1, n // 2)).tolist()]
    nxt = rng.integers(0, vocab, size=2)
    with slot_runner(onnx_path, slots=2, max_len=n + 2, threads=1) as model:
        for slot, p in enumerate(prompts):
            for start in range(0, len(p), 3):
                _, last = model.prefill(slot, p[start : start + 3], start)
            check(f"chunked prefill in slot {slot}", last(), ref_logits(p)[-1])
        _, rows = model.decode(nxt, np.array([len(p) for p in prompts], np.int64))
        for slot, p in enumerate(prompts):
            check(f"batched step, slot {slot}", rows()[slot], ref_logits([*p, int(nxt[slot])])[-1])
    return {
        "max_abs_diff": worst["max_abs_diff"],
        "max_abs_logit": worst["max_abs_logit"],
        "tolerance": f"{atol} + {rtol} x max|logit|",
        "checks": [
            "prefill",
            "decode",
            "chunked prefill into KV slots",
            "batched step over slots of different lengths",
        ],
    }
