"""The GPT-2 engine on a CUDA GPU: KV slots on the device, fp16, IO binding, served by Triton.

Run by hand where a GPU is lent (CI has none); nothing is downloaded:

    python -m benchmarks.gpu_check --out DIR --tokenizer CKPT/tokenizer.json [--preset 124m]

1. The GPT-2 graph of the preset's shape with seeded random weights (numpy; no torch or transformers)
   as fp32 and fp16 ONNX (speed does not depend on weight values at a fixed length).
2. Offline through the serving engine's runner on the CUDA execution provider: the decode
   step at batch 1 and 8 with 48 and 496 cached tokens, prefills, and the fp16 logits of a
   prefill and 32 greedy steps against the fp32 graph on the CPU provider.
3. Served: the repository built for `--target gpu` (fp16, KIND_GPU instance) in the embedded
   Triton server; one stream and eight streams, 16-token prompts, 64 new tokens.

Writes DIR/gpu_check.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

logger = logging.getLogger(__name__)

PRESETS = {"124m": (12, 12, 768, 50257, 1024), "tiny": (2, 4, 64, 0, 128)}


def random_gpt2(preset: str, vocab: int, seed: int = 0):
    """An object with `.config` and `.state_dict()` (numpy arrays) as `export.gpt2.build_graph`
    reads them."""
    n_layer, n_head, n_embd, preset_vocab, n_pos = PRESETS[preset]
    vocab = preset_vocab or vocab
    rng = np.random.default_rng(seed)

    def randn(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    sd = {"transformer.wte.weight": randn(vocab, n_embd), "transformer.wpe.weight": randn(n_pos, n_embd)}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        sd.update(
            {
                p + "ln_1.weight": np.ones(n_embd),
                p + "ln_1.bias": np.zeros(n_embd),
                p + "attn.c_attn.weight": randn(n_embd, 3 * n_embd),
                p + "attn.c_attn.bias": np.zeros(3 * n_embd),
                p + "attn.c_proj.weight": randn(n_embd, n_embd),
                p + "attn.c_proj.bias": np.zeros(n_embd),
                p + "ln_2.weight": np.ones(n_embd),
                p + "ln_2.bias": np.zeros(n_embd),
                p + "mlp.c_fc.weight": randn(n_embd, 4 * n_embd),
                p + "mlp.c_fc.bias": np.zeros(4 * n_embd),
                p + "mlp.c_proj.weight": randn(4 * n_embd, n_embd),
                p + "mlp.c_proj.bias": np.zeros(n_embd),
            }
        )
    sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"] = np.ones(n_embd), np.zeros(n_embd)
    config = SimpleNamespace(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        vocab_size=vocab,
        n_positions=n_pos,
        layer_norm_epsilon=1e-5,
        scale_attn_weights=True,
        eos_token_id=0,
        bos_token_id=0,
    )
    return SimpleNamespace(config=config, state_dict=lambda: sd)


def make_export(folder: Path, preset: str, tokenizer: Path) -> Path:
    """An export folder (`aigc export` layout) with fp32 and fp16 variants and a report."""
    import onnx
    from tokenizers import Tokenizer

    from export.gpt2 import build_graph, model_info
    from export.quantize import to_fp16

    vocab = Tokenizer.from_file(str(tokenizer)).get_vocab_size()
    model = random_gpt2(preset, vocab)
    (folder / "fp32").mkdir(parents=True, exist_ok=True)
    (folder / "fp16").mkdir(exist_ok=True)
    (folder / "assets").mkdir(exist_ok=True)
    onnx.save(build_graph(model), str(folder / "fp32" / "gpt2.onnx"))
    to_fp16(
        folder / "fp32" / "gpt2.onnx", folder / "fp16" / "gpt2.onnx", keep_io_types=["logits", "last_logits"]
    )
    shutil.copyfile(tokenizer, folder / "assets" / "tokenizer.json")
    info = model_info(model.config)
    (folder / "assets" / "model_info.json").write_text(json.dumps(info))

    def entry(variant, target):
        return {
            "target": target,
            "passed": True,
            "reason": None,
            "files": {"gpt2": f"{variant}/gpt2.onnx"},
            "fidelity": {},
            "latency_ms": {"gpt2": 1.0},
        }

    report = {
        "format_version": 1,
        "model": "gpt2",
        "components": ["gpt2"],
        "model_info": info,
        "variants": {"fp32": entry("fp32", "cpu"), "fp16": entry("fp16", "gpu")},
    }
    (folder / "export_report.json").write_text(json.dumps(report))
    return folder


def offline(export: Path, provider: str) -> dict:
    import tempfile

    from engine.runners.onnxruntime import OrtRunner
    from export.ortutil import median_ms

    n_pos = json.loads((export / "assets" / "model_info.json").read_text())["n_positions"]
    out = {}

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(export / "assets" / "model_info.json", Path(tmp) / "model_info.json")
        (Path(tmp) / "model.onnx").symlink_to((export / "fp16" / "gpt2.onnx").absolute())
        gpu = OrtRunner(
            tmp, slots=8, max_len=n_pos, providers=list(dict.fromkeys([provider, "CPUExecutionProvider"]))
        )
        out["providers"] = gpu.session.get_providers()
        out["kv_cache"] = {
            "device": gpu.device,
            "dtype": gpu.caps.kv_dtype.name,
            "mib": gpu.kv.nbytes / 2**20,
        }
        out["step_ms"] = _step_ms(gpu, n_pos)
        out["prefill_ms"] = {
            str(t): round(
                median_ms(lambda t=t: gpu.prefill(0, (np.arange(t) % 100) + 1, 0), warmup=5, repeat=10), 4
            )
            for t in sorted({min(t, n_pos) for t in (16, 128, 512)})
        }
        out["fp16_gpu_vs_fp32_cpu"] = parity(export, tmp, gpu, n_pos)
        try:  # the same with decode steps replayed from captured CUDA graphs
            graphs = OrtRunner(tmp, slots=8, max_len=n_pos, providers=[provider], cuda_graph=True)
            out["cuda_graph"] = {
                "step_ms": _step_ms(graphs, n_pos),
                "parity": parity(export, tmp, graphs, n_pos, "fp32-graph"),
            }
        except Exception as exc:  # noqa: BLE001 - reported: the plain path stands on its own
            out["cuda_graph"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def _step_ms(runner, n_pos: int) -> dict:
    """The decode step at batch 1 and 8 with 48 and 496 cached tokens a row (median, ms)."""
    from export.ortutil import median_ms

    steps = {}
    for b in (1, 8):
        for past in sorted({min(p, n_pos - 2) for p in (48, 496)}):
            tokens, pos = np.arange(1, b + 1, dtype=np.int64), np.full(b, past, np.int64)
            steps[f"b{b}_past{past}"] = round(
                median_ms(lambda t=tokens, p=pos: runner.decode(t, p), warmup=5, repeat=30), 4
            )
    return steps


def parity(export: Path, tmp: str, gpu, n_pos: int, name: str = "fp32") -> dict:
    """fp16 on the GPU vs fp32 on the CPU, stage by stage: a plain call of the graph (no
    shared buffers), a prefill into a slot, then 32 greedy steps fed the same tokens."""
    import onnxruntime as ort

    from engine.runners.onnxruntime import OrtRunner
    from export.gpt2_eval import forward

    fp32_dir = Path(tmp) / name
    fp32_dir.mkdir()
    shutil.copyfile(export / "assets" / "model_info.json", fp32_dir / "model_info.json")
    (fp32_dir / "model.onnx").symlink_to((export / "fp32" / "gpt2.onnx").absolute())
    cpu = OrtRunner(str(fp32_dir), slots=1, max_len=n_pos, providers=["CPUExecutionProvider"])
    prompt = list(range(100, 116))
    c_tok, c_logits = cpu.prefill(0, prompt, 0)
    ref = c_logits().copy()
    plain = ort.InferenceSession(str(export / "fp16" / "gpt2.onnx"), providers=gpu.session.get_providers())
    plain_logits = forward(plain, np.asarray([prompt]))[0][0, -1]
    cpu16 = ort.InferenceSession(str(export / "fp16" / "gpt2.onnx"), providers=["CPUExecutionProvider"])
    cpu16_logits = forward(cpu16, np.asarray([prompt]))[0][0, -1]
    g_tok, g_logits = gpu.prefill(1, prompt, 0)
    out = {
        "max_abs_logit_fp32": float(np.abs(ref).max()),
        "plain_call_fp16_cpu": float(np.abs(cpu16_logits - ref).max()),
        "plain_call_fp16_gpu": float(np.abs(plain_logits - ref).max()),
        "slot_prefill_fp16_gpu": float(np.abs(g_logits() - ref).max()),
    }
    diffs, agree, pos, token = [], [g_tok == c_tok], len(prompt), c_tok
    for _ in range(32):
        g, gl = gpu.decode(np.array([0, token]), np.array([0, pos]))
        c, cl = cpu.decode(np.array([token]), np.array([pos]))
        diffs.append(float(np.abs(gl()[1] - cl()[0]).max()))
        agree.append(int(g[1]) == int(c[0]))
        token, pos = int(c[0]), pos + 1
    out["slot_steps_fp16_gpu_max"] = max(diffs)
    out["slot_steps_fp16_gpu_first"] = diffs[:4]
    out["greedy_agreement"] = float(np.mean(agree))
    return out


def served(export: Path, work: Path, server_pythonpath: str | None = None, cuda_graph: bool = False) -> dict:
    import os

    from benchmarks.measure import served_concurrency
    from engine.config import EngineConfig
    from serving.builder import BuildOptions, build_repository
    from serving.server import EmbeddedTritonServer

    if server_pythonpath:  # e.g. numpy<2 for Triton's Python-backend stub (its bytes tensors need it)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [server_pythonpath, os.environ.get("PYTHONPATH")])
        )
    repo = work / ("model_repository-graph" if cuda_graph else "model_repository")
    build_repository(
        [export],
        repo,
        BuildOptions(variant="fp16", target="gpu", engine=EngineConfig(slots=8, cuda_graph=cuda_graph)),
    )
    srv = EmbeddedTritonServer(
        repo,
        grpc_port=0,
        http_port=0,
        metrics_port=0,
        log_file=work / f"triton{'-graph' if cuda_graph else ''}.log",
    )
    srv.start()
    try:
        prompt = " ".join(["word"] * 16)
        return {
            f"c{c}": served_concurrency(srv.grpc_url, prompt, 64, c, requests_per_stream=reqs)
            for c, reqs in ((1, 20), (8, 6))
        }
    finally:
        srv.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, required=True, help="tokenizer.json of the checkpoint")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="124m")
    parser.add_argument("--provider", default="CUDAExecutionProvider")
    parser.add_argument("--skip-served", action="store_true")
    parser.add_argument("--server-pythonpath", help="folders put first on the Triton server's PYTHONPATH")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls") and args.provider == "CUDAExecutionProvider":
        ort.preload_dlls()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    result = {
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "python": platform.python_version(),
        "preset": args.preset,
    }
    try:
        import torch

        result["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception as exc:  # noqa: BLE001 - informational only
        result["gpu"] = f"unknown ({exc})"
    export = make_export(work / "export", args.preset, args.tokenizer)
    t0 = time.perf_counter()
    result["offline"] = offline(export, args.provider)
    result["offline_s"] = round(time.perf_counter() - t0, 1)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    if not args.skip_served:
        result["served"] = served(export, work, args.server_pythonpath)
        (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2))
        if "error" not in result["offline"].get("cuda_graph", {"error": 1}):
            try:
                result["served_cuda_graph"] = served(export, work, None, cuda_graph=True)
            except Exception as exc:  # noqa: BLE001 - reported beside the plain figures
                result["served_cuda_graph"] = {"error": f"{type(exc).__name__}: {exc}"}
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    shutil.rmtree(work / "export", ignore_errors=True)
    print(json.dumps(result, indent=2))  # noqa: T201 - the command's output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
