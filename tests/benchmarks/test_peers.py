"""The peer runtimes: `--peers`, the checkpoint hash and the cached conversions, skipped peers,
crashed children, the GGUF writer, and each installed peer generating on a tiny GPT-2."""

from __future__ import annotations

import pytest

from aigc.errors import ConfigError
from benchmarks import measure
from benchmarks.options import BenchOptions


def test_peers_flag_resolves_names_and_names_the_allowed_values():
    from benchmarks.peers import PEERS, QUICK, resolve

    assert resolve(None) == tuple(PEERS) and resolve(None, quick=True) == QUICK
    assert resolve(("ctranslate2_int8", "openvino")) == ("openvino_int8", "openvino_int4", "ctranslate2_int8")
    assert resolve(("none",)) == () and resolve(("all",)) == tuple(PEERS)
    with pytest.raises(ConfigError, match=r"--peers: unknown peer 'vllm'; allowed: all, none, openvino.*"):
        resolve(("vllm",))
    with pytest.raises(ConfigError, match="--peers"):
        resolve(("none", "openvino_int4"))
    assert BenchOptions(quick=True).peer_names() == QUICK
    assert BenchOptions(peers=("llamacpp",), quick=True).peer_names() == ("llamacpp_q8_0", "llamacpp_q4_0")
    with pytest.raises(ConfigError, match="--peers"):
        BenchOptions(peers=("openvino_int3",)).validate()


def _fake_checkpoint(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "gpt2", "n_positions": 128}')
    (folder / "model.safetensors").write_bytes(b"weights v1")
    (folder / "tokenizer.json").write_text("{}")
    return folder


def _fake_peer(convert, modules=("json",)):
    from benchmarks.peers import Peer

    return Peer(
        name="fake",
        family="fake",
        label="Fake runtime",
        package="fake-runtime",
        modules=modules,
        install="`pip install fake-runtime`",
        weights="int8",
        settings={"quantization": "int8"},
        convert=convert,
        load=lambda folder, checkpoint, threads: None,
        files=("model.bin",),
    )


def test_checkpoint_hash_follows_weights_config_and_tokenizer(tmp_path):
    from benchmarks.peers import checkpoint_hash

    ckpt = _fake_checkpoint(tmp_path / "ckpt")
    first = checkpoint_hash(ckpt)
    assert len(first) == 16 and int(first, 16) >= 0
    (ckpt / "heldout.txt").write_text("not read by a conversion")
    assert checkpoint_hash(ckpt) == first
    (ckpt / "model.safetensors").write_bytes(b"weights v2")
    second = checkpoint_hash(ckpt)
    assert second != first
    (ckpt / "config.json").write_text('{"model_type": "gpt2", "n_positions": 256}')
    assert checkpoint_hash(ckpt) not in (first, second)
    with pytest.raises(ConfigError, match="--gpt2"):
        checkpoint_hash(tmp_path)


def test_conversions_are_cached_by_hash_and_written_atomically(tmp_path):
    from dataclasses import replace

    from benchmarks.peers import cached, peer_folder, prepare

    calls = []

    def convert(checkpoint, out, settings, threads):
        calls.append(out)
        (out / "model.bin").write_bytes(b"converted")
        return {"threads": threads}

    peer = _fake_peer(convert)
    ckpt = _fake_checkpoint(tmp_path / "ckpt")
    folder = peer_folder(tmp_path / "cache", "0123456789abcdef", "fake")
    assert folder == tmp_path / "cache" / "peers" / "0123456789abcdef" / "fake"
    first = prepare(peer, ckpt, folder, threads=1)
    assert first["cached"] is False and first["applied"] == {"threads": 1}
    assert calls[0] != folder and not calls[0].exists()  # converted beside, then renamed
    assert (folder / "model.bin").read_bytes() == b"converted"
    again = prepare(peer, ckpt, folder, threads=1)
    assert again["cached"] is True and len(calls) == 1
    assert again["settings"] == first["settings"] == {"format": 1, "peer": "fake", "quantization": "int8"}
    # other conversion settings: converted again
    other = replace(peer, settings={"quantization": "int4"})
    assert cached(other, folder) is None
    assert prepare(other, ckpt, folder, threads=1)["cached"] is False and len(calls) == 2

    def broken(checkpoint, out, settings, threads):
        (out / "partial.bin").write_bytes(b"half")
        raise RuntimeError("converter crashed")

    broken_folder = folder.with_name("broken")
    with pytest.raises(RuntimeError, match="converter crashed"):
        prepare(_fake_peer(broken), ckpt, broken_folder, threads=1)
    assert not broken_folder.exists() and sorted(p.name for p in folder.parent.iterdir()) == ["fake"]


def test_missing_peer_package_is_reported_as_skipped(tmp_path, caplog):
    from benchmarks import peers

    peer = _fake_peer(lambda *a: {}, modules=("json", "aigc_no_such_runtime"))
    ckpt = _fake_checkpoint(tmp_path / "ckpt")
    work = [{"key": "short", "ids": [1, 2, 3], "new_tokens": 4, "repeats": 1}]
    with caplog.at_level("WARNING", logger="benchmarks.peers"):
        got = peers.bench(("fake",), ckpt, tmp_path / "cache", 1, work, registry={"fake": peer})
    assert got == {"fake": {"skipped": "aigc_no_such_runtime is not installed (`pip install fake-runtime`)"}}
    assert "peer fake skipped: aigc_no_such_runtime is not installed" in caplog.text
    assert not (tmp_path / "cache").exists()  # nothing converted


def test_a_crashed_child_is_a_reason_not_an_error():
    import subprocess

    from benchmarks.peers.child import _child_reason

    crashed = subprocess.CompletedProcess([], -11, "", "loading model\nggml_amx: illegal instruction\n")
    assert _child_reason(crashed) == "crashed (SIGSEGV): ggml_amx: illegal instruction"
    assert _child_reason(subprocess.CompletedProcess([], 1, "", "")) == "exited with status 1"


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A 2-layer, 64-wide GPT-2 with a 300-token BPE tokenizer; weights drawn wide enough
    (std 0.2) that greedy choices are clear of float rounding."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from training.gpt2 import train_tokenizer

    out = tmp_path_factory.mktemp("peers") / "tiny-gpt2"
    tok = train_tokenizer(
        "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. " * 30, 300
    )
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=128,
        n_embd=64,
        n_layer=2,
        n_head=2,
        initializer_range=0.2,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    GPT2LMHeadModel(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out, tok("The quick brown fox")["input_ids"]


def _hf_greedy(checkpoint, ids: list[int], n: int) -> list[int]:
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    run = measure.hf_generate_fn(model, torch.tensor([ids]), model.config.eos_token_id)
    return run(n)[0, len(ids) :].tolist()


def test_gguf_f32_greedy_tokens_match_transformers(tiny_gpt2, tmp_path):
    pytest.importorskip("gguf")
    llama_cpp = pytest.importorskip("llama_cpp")
    from benchmarks.peers import write_gguf
    from benchmarks.peers.llamacpp import LlamaCppRunner

    ckpt, ids = tiny_gpt2
    hparams = write_gguf(ckpt, tmp_path / "model.gguf")
    assert hparams["context_length"] == 128 and hparams["feed_forward_length"] == 256
    runner = LlamaCppRunner.__new__(LlamaCppRunner)  # the peer's generate loop on the f32 file
    runner.llm = llama_cpp.Llama(
        model_path=str(tmp_path / "model.gguf"), n_ctx=128, n_threads=1, verbose=False
    )
    timer = measure.TokenTimer()
    got = runner.generate(ids, 12, timer)
    assert got == _hf_greedy(ckpt, ids, 12) and len(timer.stamps) == 12
    assert runner.generate(ids, 12, measure.TokenTimer()) == got  # the cache of the last call is not reused


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["openvino_int8", "openvino_int4", "llamacpp_q8_0", "llamacpp_q4_0", "ctranslate2_int8"]
)
def test_each_installed_peer_generates_exactly_n_tokens(name, tiny_gpt2, tmp_path_factory):
    from benchmarks.peers import PEERS, checkpoint_hash, peer_folder, run_peer

    why = PEERS[name].missing()
    if why:
        pytest.skip(why)
    ckpt, ids = tiny_gpt2
    cache = tmp_path_factory.mktemp(name)
    folder = peer_folder(cache, checkpoint_hash(ckpt), name)
    work = [
        {"key": "short", "ids": ids, "new_tokens": 6, "repeats": 2},
        {"key": "long", "ids": ids * 8, "new_tokens": 3, "repeats": 1},
    ]
    got = run_peer(name, ckpt, folder, 1, work)
    assert "skipped" not in got, got["skipped"]
    # generate_baseline fails a run that stamps any other number of tokens than asked for
    assert got["short"]["itl_ms"]["n"] == 2 * 5 and got["short"]["ttft_ms"]["n"] == 2
    assert got["long"]["prompt_tokens"] == 8 * len(ids) and got["long"]["itl_ms"]["n"] == 2
    assert got["cached"] is False and got["file_bytes"] > 0 and got["version"]
    assert got["conversion"]["peer"] == name and got["conversion"]["versions"]
    if name.startswith("openvino"):
        assert got["properties"]["INFERENCE_PRECISION_HINT"] == "f32"
        assert got["conversion"]["applied"]["nncf_weight_compression"]["mode"].endswith("_asym")
    props = got["properties"]
    assert 1 in (props.get("n_threads"), props.get("INFERENCE_NUM_THREADS"), props.get("intra_threads"))
    again = run_peer(name, ckpt, folder, 1, work[:1])
    assert again["cached"] is True and "long" not in again
