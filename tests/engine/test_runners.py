"""The engine on its real runners (ONNX Runtime and OpenVINO) over a tiny export: tokens equal
`transformers`' however requests join, leave, reuse slots and are prefilled in chunks;
penalties and banned tokens equal their references; memory allocated once; the int4+int8
pair's companion graph. Scheduling itself is tested on the fake runner (test_scheduler.py);
the sampling fields, sampler and detokenizer in test_sampling.py."""

from __future__ import annotations

import re
import shutil
import tracemalloc
from dataclasses import replace

import numpy as np
import pytest
from references import Recorder, vllm_penalize

from engine.config import EngineConfig
from engine.loader import load_engine
from engine.plan import Phase
from engine.request_schema import RequestError, SamplingParams
from engine.runners.fake import FakeClock
from engine.types import FinishReason, Status


@pytest.fixture(scope="module", params=["onnxruntime", "openvino"])
def version_dir(request, exports, tmp_path_factory):
    """A repository version folder of the tiny GPT-2's f32 weights on each runtime."""
    d = tmp_path_factory.mktemp(f"engine-{request.param}")
    if request.param == "openvino":
        for f in ("openvino_model.xml", "openvino_model.bin"):
            shutil.copyfile(exports["gpt2"] / "ov-fp32" / f, d / f)
    else:
        shutil.copyfile(exports["gpt2"] / "fp32" / "gpt2.onnx", d / "model.onnx")
    for f in ("tokenizer.json", "model_info.json"):
        shutil.copyfile(exports["gpt2"] / "assets" / f, d / f)
    return d


def make_engine(version_dir, **config):
    """An engine on `version_dir`; a block runner's sequences at once are its `slots` here
    unless `max_sequences` is given (the tests count slots on both runtimes)."""
    config.setdefault("max_sequences", config.get("slots", 8))
    sink, clock = Recorder(), FakeClock()
    engine = load_engine(str(version_dir), EngineConfig(**config), sink, intra_op_threads=1, clock=clock)
    return engine, sink, clock


@pytest.fixture(scope="module")
def engine(version_dir):
    return make_engine(version_dir, slots=4)[0]


def greedy(n):
    return SamplingParams(max_tokens=n, ignore_eos=True)


def test_prompt_limits_name_the_field(engine):
    with pytest.raises(RequestError, match="text_input"):
        engine.encode_prompt("", SamplingParams())
    with pytest.raises(RequestError, match="text_input"):
        engine.encode_prompt("word " * 500, SamplingParams())
    with pytest.raises(RequestError, match="max_tokens"):
        engine.encode_prompt("word " * 20, SamplingParams(max_tokens=120))


def transformers_greedy(checkpoint, ids, n):
    import torch
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([ids]),
            do_sample=False,
            max_new_tokens=n,
            min_new_tokens=n,
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            pad_token_id=0,
        )
    return out[0, len(ids) :].tolist()


def test_engine_greedy_equals_transformers(engine, checkpoints):
    ids = engine.tokenizer.encode("The class of").ids
    assert engine.generate_ids(ids, greedy(30)) == transformers_greedy(checkpoints["gpt2"], ids, 30)


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_slots_joining_leaving_and_reused_equal_solo_and_transformers(version_dir, checkpoints, chunk):
    """Six requests of different prompt lengths over three slots, arriving while others decode,
    prefilled in chunks: each gets exactly its solo greedy tokens, which are transformers'."""
    engine, sink, _ = make_engine(
        version_dir, slots=3, prefill_chunk=chunk, idle_prefill_chunk=chunk, prefill_budget=0
    )
    texts = [
        "The class",
        "def f(x): return x + 1 if x else",
        "import",
        "x",
        "Python is a language",
        "a b c d e",
    ]
    lengths = [20, 6, 14, 25, 9, 3]
    enc = [engine.tokenizer.encode(t).ids for t in texts]
    solo = [engine.generate_ids(ids, greedy(n)) for ids, n in zip(enc, lengths)]
    assert solo[0] == transformers_greedy(checkpoints["gpt2"], enc[0], lengths[0])
    assert solo[1] == transformers_greedy(checkpoints["gpt2"], enc[1], lengths[1])
    arrive = {0: [0, 1], 2: [2], 5: [3, 4, 5]}  # step -> requests arriving then
    phases = []
    real_execute = engine.runner.execute

    def execute(forward):
        phases.append(forward.phase)
        return real_execute(forward)

    engine.runner.execute = execute
    reqs, step = {}, 0
    while step < 200 and (step <= max(arrive) or engine.has_work()):
        for i in arrive.get(step, []):
            reqs[i] = engine.submit(enc[i], greedy(lengths[i]))
        engine.step()
        step += 1
    assert [reqs[i].tokens for i in range(len(texts))] == solo
    assert all(r.finish_reason is FinishReason.LENGTH for r in reqs.values())
    assert engine.free_slots == 3 and not engine.running
    # both runners take the chunks with the decode rows on the CPU: OpenVINO's PagedAttention
    # any rows, ONNX Runtime's mixed graph a decode call's rows then a prefill call's
    assert engine.runner.caps.mixed and Phase.MIXED in phases
    for r in reqs.values():  # the streamed text is the tokens' text
        assert "".join(sink.text.get(id(r), [])) == engine.tokenizer.decode(r.tokens)


def test_requests_arriving_together_share_one_prefill_call(version_dir):
    engine, sink, _ = make_engine(version_dir, slots=4, idle_prefill_chunk=64)
    ids = engine.tokenizer.encode("def f(x): return").ids
    solo = engine.generate_ids(ids, greedy(8))
    calls = []
    real = engine.runner.execute

    def spy(forward):
        if forward.phase is Phase.PREFILL:
            calls.append((forward.rows, forward.lens.tolist()))
        return real(forward)

    engine.runner.execute = spy
    reqs = [engine.submit(ids, greedy(8)) for _ in range(3)]
    engine.run_until_done(reqs)
    assert calls == [(3, [len(ids)] * 3)]
    assert [r.tokens for r in reqs] == [solo] * 3


def test_cancel_and_timeout_free_the_slot_at_once(version_dir):
    engine, sink, clock = make_engine(version_dir, slots=2, max_request_seconds=10.0)
    a = engine.submit(engine.tokenizer.encode("The class").ids, greedy(40))
    b = engine.submit(engine.tokenizer.encode("import os").ids, greedy(40))
    engine.step()
    engine.step()  # one prompt is prefilled a step
    assert engine.free_slots == 0 and a.generated >= 1 and b.generated >= 1
    engine.cancel(a)
    engine.step()
    assert a.finish_reason is FinishReason.CANCELLED and engine.free_slots == 1
    clock.now += 11.0
    engine.step()
    assert b.finish_reason is FinishReason.TIMEOUT and "max_request_seconds (10 s)" in b.error
    assert engine.free_slots == 2 and not engine.has_work()
    assert sink.finished == [a, b]
    # A slot freed by a cancel serves the next request from a clean start.
    c = engine.submit(engine.tokenizer.encode("The class").ids, greedy(12))
    engine.run_until_done([c])
    assert c.tokens == engine.generate_ids(engine.tokenizer.encode("The class").ids, greedy(12))


def test_eos_and_stop_strings_end_with_their_reason(engine):
    eos = engine.eos
    tokens = engine.generate_ids(engine.tokenizer.encode("The").ids, SamplingParams(max_tokens=40))
    req = engine.submit(engine.tokenizer.encode("The").ids, SamplingParams(max_tokens=40))
    engine.run_until_done([req])
    if eos in tokens:
        assert req.finish_reason is FinishReason.EOS and req.tokens[-1] == eos
    else:
        assert req.finish_reason is FinishReason.LENGTH and len(req.tokens) == 40
    text = engine.tokenizer.decode(tokens[:12])
    stop = text[len(text) // 2 :][:3]
    if stop.strip():
        req = engine.submit(engine.tokenizer.encode("The").ids, SamplingParams(max_tokens=40, stop=(stop,)))
        engine.run_until_done([req])
        assert req.finish_reason is FinishReason.STOP and len(req.tokens) <= 12


def test_memory_is_allocated_once_over_a_thousand_requests(version_dir):
    """Slots are the same buffers throughout; a thousand requests (a third cancelled) leave no
    growth in what Python and numpy hold."""
    engine, sink, _ = make_engine(version_dir, slots=4)
    ptrs = list(engine.runner.kv.ptrs)
    prompts = [engine.tokenizer.encode(t).ids for t in ("The class", "import os", "x = 1", "def")]

    def churn(n):
        for i in range(n):
            req = engine.submit(prompts[i % 4], greedy(1 + i % 5))
            if i % 3 == 0:
                engine.cancel(req)
            if i % 4 == 3:
                while engine.has_work():
                    engine.step()
        sink.text.clear()
        sink.finished.clear()

    churn(100)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        churn(1000)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    growth = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert growth < 256 * 1024, f"memory grew by {growth} bytes over 1000 requests"
    assert engine.runner.kv.ptrs == ptrs and engine.free_slots == 4


@pytest.fixture(scope="module")
def ov_dir(exports, tmp_path_factory):
    """A version folder of the tiny GPT-2's f32 weights on OpenVINO (a block runner)."""
    d = tmp_path_factory.mktemp("engine-ov-blocks")
    for f in ("openvino_model.xml", "openvino_model.bin"):
        shutil.copyfile(exports["gpt2"] / "ov-fp32" / f, d / f)
    for f in ("tokenizer.json", "model_info.json"):
        shutil.copyfile(exports["gpt2"] / "assets" / f, d / f)
    return d


def test_openvino_prefix_cache_hits_give_transformers_tokens(ov_dir, checkpoints):
    """A prompt of three full 32-position blocks and more, asked twice and then with another
    ending: the later prefills read the cached blocks and compute only the rest."""
    engine, _, _ = make_engine(ov_dir, slots=2, idle_prefill_chunk=128)
    system = engine.tokenizer.encode("def f(x): return x + 1 if x else 0 " * 8).ids[:100]
    endings = ([], [], engine.tokenizer.encode(" import os").ids)
    got = [engine.generate_ids(system + e, greedy(12)) for e in endings]
    assert engine.stats.prefix_hits == 2 * 96  # three blocks each time after the first
    for e, tokens in zip(endings, got):
        assert tokens == transformers_greedy(checkpoints["gpt2"], system + e, 12)


def test_onnxruntime_slot_prefix_reuse_and_copies_give_transformers_tokens(exports, checkpoints, tmp_path):
    """ONNX Runtime's slots: a prompt read from what a free slot still holds, then one copied
    from a running request's slot (the engine's `SlotCopy`): each computes only the rest of
    its prompt, and every token equals transformers'."""
    for f in ("tokenizer.json", "model_info.json"):
        shutil.copyfile(exports["gpt2"] / "assets" / f, tmp_path / f)
    shutil.copyfile(exports["gpt2"] / "fp32" / "gpt2.onnx", tmp_path / "model.onnx")
    engine, _, _ = make_engine(tmp_path, slots=2, idle_prefill_chunk=128)
    assert engine.runner.caps.copies
    system = engine.tokenizer.encode("def f(x): return x + 1 if x else 0 " * 8).ids[:60]
    first = engine.generate_ids(system, greedy(12))
    again = engine.submit(system + engine.tokenizer.encode(" import os").ids, greedy(30))  # its old slot
    engine.step()
    assert engine.stats.prefix_hits == 60 and again.filled == len(again.prompt_ids)
    copied = engine.submit(system + engine.tokenizer.encode(" class").ids, greedy(12))  # from again's
    engine.run_until_done([again, copied])
    assert engine.stats.prefix_hits == 120 and copied.slot != again.slot
    # two arriving together, each copying the prefix: prefilled a row a call past position 0
    engine, _, _ = make_engine(tmp_path, slots=3, idle_prefill_chunk=128)
    lead = engine.submit(system, greedy(20))
    engine.step()
    pair = [engine.submit(system + tail, greedy(8)) for tail in ([5, 6, 7], [8, 9, 10])]  # same length
    engine.run_until_done([lead, *pair])
    assert engine.stats.prefix_hits == 2 * 60 and all(r.finish_reason is FinishReason.LENGTH for r in pair)
    for req in (again, copied, *pair):
        assert req.tokens == transformers_greedy(checkpoints["gpt2"], req.prompt_ids, len(req.tokens))
    assert first == transformers_greedy(checkpoints["gpt2"], system, 12)


def test_openvino_compiles_for_a_shared_machine(ov_dir):
    """The plugin's threads are not pinned to cores (in a server they share them with
    Triton's, the responses' and the clients' threads), and activations stay f32."""
    from engine.runners.openvino import OvRunner

    compiled = OvRunner(str(ov_dir), 1, 64, threads=1).compiled
    assert compiled.get_property("ENABLE_CPU_PINNING") is False
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")


def test_openvino_runs_64_sequences_by_default_in_a_pool_of_slots_windows(ov_dir, checkpoints):
    """A block runner's concurrency is bounded by its blocks and `max_sequences` (64 by
    default), not by `slots`: with the pool of 2 windows, 20 short requests run at once."""
    engine, _, _ = make_engine(ov_dir, slots=2, max_sequences=0)
    caps = engine.runner.caps
    assert caps.max_rows == 64 and caps.blocks == 2 * -(-caps.max_len // caps.block_size)
    prompts = [engine.tokenizer.encode(f"{w} class").ids for w in ("The", "A", "import", "def", "x")] * 4
    reqs = [engine.submit(p, greedy(6)) for p in prompts]
    engine.step()
    assert engine.free_slots == 64 - 20 and not engine.scheduler.waiting  # all admitted at once
    engine.run_until_done(reqs)
    for p, r in zip(prompts[:5], reqs[:5]):
        assert r.tokens == transformers_greedy(checkpoints["gpt2"], p, 6)


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_memory_by_use_preempts_and_recomputes_to_transformers_tokens(runtime, request, checkpoints):
    """A cache sized in MiB below what three streams reach (five blocks: OpenVINO's of 32
    positions, or pages of ONNX Runtime's rows): the newest is preempted, its memory given
    back, and recomputed; every request's tokens still equal transformers'."""
    import json

    d = request.getfixturevalue("ov_dir" if runtime == "openvino" else "ort_dir")
    info = json.loads((d / "model_info.json").read_text())
    size = 32 if runtime == "openvino" else 4096 // (info["head_size"] * 4)
    block_mib = 2 * info["n_layer"] * info["n_head"] * size * info["head_size"] * 4 / 2**20
    engine, sink, _ = make_engine(d, slots=3, kv_cache_mib=5 * block_mib, prefill_chunk=16)
    assert engine.runner.caps.blocks == 5 and engine.runner.caps.block_size == size
    prompts = [engine.tokenizer.encode(t).ids for t in ("The class", "import os", "Python is")]
    reqs = [engine.submit(p, greedy(40)) for p in prompts]
    engine.run_until_done(reqs)
    assert engine.stats.preemptions >= 1
    for p, r in zip(prompts, reqs):
        assert r.tokens == transformers_greedy(checkpoints["gpt2"], p, 40)
        assert "".join(sink.text[id(r)]) == engine.tokenizer.decode(r.tokens)
    kept = engine.scheduler.kept_blocks  # ONNX Runtime's free slots keep their pages for reuse
    assert engine.scheduler.kv_blocks.free + sum(len(b) for b in kept.values()) == 5


@pytest.fixture(scope="module")
def ort_dir(exports, tmp_path_factory):
    """A version folder of the tiny GPT-2's f32 weights on ONNX Runtime (slots)."""
    d = tmp_path_factory.mktemp("engine-ort-by-use")
    shutil.copyfile(exports["gpt2"] / "fp32" / "gpt2.onnx", d / "model.onnx")
    for f in ("tokenizer.json", "model_info.json"):
        shutil.copyfile(exports["gpt2"] / "assets" / f, d / f)
    return d


def test_onnxruntime_slots_are_committed_by_use_and_their_pages_given_back(ort_dir, checkpoints):
    """On the CPU ONNX Runtime's 64 rows (by default, whatever --slots) are reserved, not
    committed: the cache's resident memory is the pages the requests hold, growing as they
    do, and goes back to the system when they end."""
    engine, _, _ = make_engine(ort_dir, slots=6, max_sequences=0, prefix_caching=False)
    runner, pool = engine.runner, engine.scheduler.kv_blocks
    caps = runner.caps
    assert caps.max_rows == 64 and caps.cache_layout == "slots by use" and pool.total == 6 * 4
    assert runner.kv.resident_bytes() == 0
    block_bytes = caps.kv_bytes // caps.blocks  # a page of every head of every layer
    # prompts of one length: they run in step and end together (no slot is a padding row)
    texts = ("The class Foo", "import os and", "x = 1 + 2", "def f(x): return", "Python is a")
    prompts = [engine.tokenizer.encode(t).ids[:3] for t in texts] * 2
    reqs = [engine.submit(p, greedy(40)) for p in prompts]
    engine.step()
    assert engine.free_slots == 64 - 10  # ten requests at once, in a pool of six windows
    held = []
    while engine.has_work():
        engine.step()
        # the pages held; those of the requests that ended in this step went back at its end
        in_use = pool.total - pool.free
        assert runner.kv.resident_bytes() == in_use * block_bytes
        held.append(in_use)
    assert held[0] == 10 and max(held) == 20  # a page each, then a second past position 32
    assert all(r.status is Status.FINISHED for r in reqs)
    assert runner.kv.resident_bytes() == 0 and pool.free == pool.total
    for p, r in zip(prompts[:5], reqs[:5]):
        assert r.tokens == transformers_greedy(checkpoints["gpt2"], p, 40)


def test_onnxruntime_prompts_of_different_lengths_share_a_call_in_padded_rows(ort_dir, checkpoints):
    """Six prompts of 1 to 20 tokens arrive while two streams decode: they go in beside the
    decode rows, several in one call, each padded on the right to the call's longest. Each
    gets its solo tokens (which are transformers'): the padding's keys and values land past
    the row's end. The pages the padding writes go back with the rest (the fake runner
    checks that a request holds them: test_scheduler.py)."""
    engine, _, _ = make_engine(
        ort_dir, slots=8, max_sequences=0, prefix_caching=False, idle_prefill_chunk=128
    )
    runner, pool = engine.runner, engine.scheduler.kv_blocks
    assert runner.caps.padded_prompts
    texts = ("x", "The class of the", "import os", "def f(x): return x + 1 if x else", "a b c d e f", "Py")
    prompts = [engine.tokenizer.encode(t).ids for t in texts]
    assert len({len(p) for p in prompts}) >= 5
    solo = [engine.generate_ids(p, greedy(6)) for p in prompts]
    assert solo[3] == transformers_greedy(checkpoints["gpt2"], prompts[3], 6)
    calls = []
    real = runner.execute

    def spy(forward):
        calls.append((forward.phase, forward.lens[forward.decode_rows :].tolist()))
        return real(forward)

    runner.execute = spy
    running = [engine.submit(engine.tokenizer.encode(t).ids, greedy(24)) for t in ("The", "In")]
    while not all(r.generated for r in running):
        engine.step()
    reqs = [engine.submit(p, greedy(6)) for p in prompts]
    engine.run_until_done(running + reqs)
    engine.step()
    assert runner.kv.resident_bytes() == 0 and pool.free == pool.total
    padded = [lens for phase, lens in calls if phase is Phase.MIXED and len(set(lens)) > 1]
    assert padded and sum(map(len, padded)) >= 4
    assert [r.tokens for r in reqs] == solo
    assert running[0].tokens == transformers_greedy(checkpoints["gpt2"], running[0].prompt_ids, 24)


def test_onnxruntime_rows_moved_down_keep_transformers_tokens_and_free_their_pages(ort_dir, checkpoints):
    """A stream left above a free slot moves down (its cache copied to the lower row): its
    tokens are still transformers' and the row it left gives its pages back."""
    engine, _, _ = make_engine(ort_dir, slots=3, max_sequences=0, prefix_caching=False)
    runner = engine.runner
    ids = [engine.tokenizer.encode(t).ids for t in ("The class Foo", "import os and", "x = 1 + 2")]
    reqs = [engine.submit(p, greedy(n)) for p, n in zip(ids, (2, 2, 30))]
    while engine.has_work():
        engine.step()
    assert engine.stats.rows_moved == 1 and reqs[2].slot == 0  # from slot 2 into slot 0
    assert reqs[2].tokens == transformers_greedy(checkpoints["gpt2"], ids[2], 30)
    engine.step()
    assert runner.kv.resident_bytes() == 0


def test_logprobs_of_prompt_and_output_equal_transformers(version_dir, checkpoints):
    """fp32 weights: each prompt token's and each generated token's log-probability and its
    top alternatives equal transformers' log-softmax within 1e-3 (OpenVINO's f32 kernels, which
    sum in another order: 3e-3), the prompt prefilled in
    chunks of 5 while another stream decodes."""
    tol = 1e-3 if (version_dir / "model.onnx").exists() else 3e-3
    import torch
    from transformers import GPT2LMHeadModel

    engine, _, _ = make_engine(version_dir, slots=2, prefill_chunk=5, idle_prefill_chunk=5)
    other = engine.submit(engine.tokenizer.encode("import os").ids, greedy(30))
    prompt = engine.tokenizer.encode("def area(r): return 3.14 * r * r").ids
    params = SamplingParams(max_tokens=8, ignore_eos=True, logprobs=3, prompt_logprobs=2)
    req = engine.submit(prompt, params)
    engine.run_until_done([other, req])
    hf = GPT2LMHeadModel.from_pretrained(checkpoints["gpt2"]).eval()
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([prompt + req.tokens])).logits[0].double(), -1).numpy()
    seq = prompt + req.tokens
    assert req.prompt_logprobs[0] is None and len(req.prompt_logprobs) == len(prompt)
    pairs = [(req.prompt_logprobs[j], j - 1, 2) for j in range(1, len(prompt))]
    pairs += [(req.logprobs[k], len(prompt) + k - 1, 3) for k in range(len(req.tokens))]
    for (token, lp, top), pos, k in pairs:
        assert token == seq[pos + 1] and abs(lp - ref[pos, token]) < tol
        want = np.argsort(-ref[pos])[:k]
        assert [t for t, _ in top] == want.tolist()
        assert np.allclose([v for _, v in top], ref[pos, want], atol=tol)
    assert req.tokens == transformers_greedy(checkpoints["gpt2"], prompt, 8)


SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 1, "maxItems": 3},
    {
        "type": "object",
        "properties": {
            "ok": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]{2,4}$"}, "maxItems": 2},
        },
        "required": ["ok", "tags"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "point": {
                "type": "object",
                "properties": {
                    "x": {"type": "integer", "minimum": -9, "maximum": 9},
                    "y": {"type": "integer", "minimum": -9, "maximum": 9},
                },
                "required": ["x", "y"],
                "additionalProperties": False,
            }
        },
        "required": ["point"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"kind": {"const": "event"}, "level": {"enum": [1, 2, 3]}},
        "required": ["kind", "level"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"}},
        "required": ["id"],
        "additionalProperties": False,
    },
    {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 50},
        "minItems": 2,
        "maxItems": 4,
    },
    {
        "type": "object",
        "properties": {
            "price": {"type": "number", "minimum": 0, "maximum": 100, "multipleOf": 0.01},
            "currency": {"enum": ["EUR", "USD"]},
        },
        "required": ["price", "currency"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "users": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string", "maxLength": 8}, "admin": {"type": "boolean"}},
                    "required": ["name", "admin"],
                    "additionalProperties": False,
                },
                "maxItems": 2,
            }
        },
        "required": ["users"],
        "additionalProperties": False,
    },
    {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 999}, {"type": "null"}]},
    {
        "type": "object",
        "properties": {
            "date": {"type": "string", "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"},
            "done": {"type": "boolean"},
        },
        "required": ["date", "done"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "a": {
                "type": "object",
                "properties": {
                    "b": {
                        "type": "object",
                        "properties": {"c": {"enum": ["deep"]}},
                        "required": ["c"],
                        "additionalProperties": False,
                    }
                },
                "required": ["b"],
                "additionalProperties": False,
            }
        },
        "required": ["a"],
        "additionalProperties": False,
    },
]


def test_structured_output_is_valid_for_every_schema_greedy_and_sampled(version_dir):
    """Twelve JSON schemas (nested objects, arrays, enums, numbers, patterned strings), each
    generated greedily and sampled, every output parsed and valid; a regex and a choice too.
    Four streams at once: each request's grammar constrains only its own row."""
    import json

    import jsonschema

    engine, _, _ = make_engine(version_dir, slots=4)
    prompt = engine.tokenizer.encode("The result:").ids
    reqs = []
    for i, schema in enumerate(SCHEMAS):
        spec = json.dumps({"json": schema})
        for params in (
            SamplingParams(max_tokens=100, structured_output=spec),
            SamplingParams(max_tokens=100, structured_output=spec, temperature=1.0, seed=i),
        ):
            reqs.append((schema, engine.submit(prompt, params)))
    regex = engine.submit(
        prompt, SamplingParams(max_tokens=30, structured_output=json.dumps({"regex": "[0-9]{3}-[a-z]{2}"}))
    )
    choice = engine.submit(
        prompt,
        SamplingParams(
            max_tokens=30,
            temperature=1.0,
            seed=3,
            structured_output=json.dumps({"choice": ["alpha", "beta gamma"]}),
        ),
    )
    engine.run_until_done([r for _, r in reqs] + [regex, choice])
    for schema, req in reqs:
        text = engine.tokenizer.decode(req.tokens)
        jsonschema.validate(json.loads(text), schema)  # raises naming the schema violated
        assert req.finish_reason.value in ("stop", "eos"), (text, req.finish_reason)
    assert re.fullmatch(r"[0-9]{3}-[a-z]{2}", engine.tokenizer.decode(regex.tokens))
    assert engine.tokenizer.decode(choice.tokens) in ("alpha", "beta gamma")


def test_a_bad_structured_output_is_refused_naming_the_field(version_dir):
    engine, _, _ = make_engine(version_dir, slots=1)
    for spec, words in (
        (
            {"json": {"type": "object"}, "regex": "a"},
            "exactly one of json, json_object, regex, choice, grammar",
        ),
        ({"choice": []}, "choice: a non-empty list"),
        ({"grammar": "start: ("}, "structured_output: "),
    ):
        with pytest.raises(RequestError, match=words):
            engine.submit([1, 2], SamplingParams.from_dict({"structured_output": spec}, 16))
    assert engine.generate_ids([1, 2], greedy(2))


def test_openvino_u8_cache_fits_more_blocks_and_keeps_greedy_tokens(ov_dir, checkpoints):
    """The same MiB of u8 cache hold over three times the f32 blocks (a scale and a zero point
    per group inside each block); the tokens stay transformers' on the tiny model, with a
    prompt spanning several blocks, through prefix hits and preemption."""
    f32, _, _ = make_engine(ov_dir, slots=3, kv_cache_mib=1.0, kv_cache_precision="f32")
    engine, _, _ = make_engine(ov_dir, slots=3, kv_cache_mib=1.0, kv_cache_precision="u8", prefill_chunk=16)
    assert engine.runner.caps.kv_dtype == np.uint8 and engine.runner.kv.nbytes <= 2**20
    assert 3 * f32.runner.caps.blocks < engine.runner.caps.blocks < 4 * f32.runner.caps.blocks
    assert "u8 paged KV cache" in engine.runner.describe()
    system = engine.tokenizer.encode("def f(x): return x + 1 if x else 0 " * 8).ids[:70]
    prompts = [system, system + engine.tokenizer.encode(" import os").ids]
    got = [engine.generate_ids(p, greedy(24)) for p in prompts]
    assert engine.stats.prefix_hits == 64
    for p, tokens in zip(prompts, got):
        assert tokens == transformers_greedy(checkpoints["gpt2"], p, 24)


def test_a_cache_precision_the_runner_cannot_store_is_refused(version_dir):
    if (version_dir / "model.onnx").exists():
        for asked in ("u8", "i8"):  # OpenVINO's 8-bit cache; the export's other graph
            with pytest.raises(
                ValueError,
                match=f"kv_cache_precision {asked}: this graph's cache is float32 \\(ONNX Runtime's cache has its graph's type",
            ):
                make_engine(version_dir, slots=1, kv_cache_precision=asked)
    else:
        from engine.runners.openvino import OvRunner

        with pytest.raises(ValueError, match="kv_cache_precision must be one of f32, f16, u8, got 'i4'"):
            OvRunner(str(version_dir), 1, 64, kv_type="i4")


class _CallCounter:
    """Counts the runs of an ONNX Runtime session (the engine's companion graph)."""

    def __init__(self, session):
        self.session, self.runs = session, 0

    def io_binding(self):
        return self.session.io_binding()

    def run_with_iobinding(self, *args):
        self.runs += 1
        return self.session.run_with_iobinding(*args)


def test_a_companion_graph_sharing_the_slots_takes_the_calls_routed_to_it(exports, checkpoints, tmp_path):
    """A second graph (here the same f32 weights) bound to the same KV slots runs the prefills
    and the decode steps of 2+ rows; each request's tokens still equal transformers'."""
    d = tmp_path / "pair"
    d.mkdir()
    for name in ("model.onnx", "companion.onnx"):
        shutil.copyfile(exports["gpt2"] / "fp32" / "gpt2.onnx", d / name)
    for f in ("tokenizer.json", "model_info.json"):
        shutil.copyfile(exports["gpt2"] / "assets" / f, d / f)
    engine, _, _ = make_engine(d, slots=2, companion_prefill=True, companion_from_rows=2)
    engine.runner.companion = companion = _CallCounter(engine.runner.companion)
    main_runs = []
    real_execute = engine.runner.execute

    def execute(forward):
        if forward.phase is Phase.DECODE and forward.rows < 2:
            main_runs.append(forward.graph)
        return real_execute(forward)

    engine.runner.execute = execute
    prompts = [engine.tokenizer.encode(t).ids for t in ("The class", "import")]
    solo = engine.generate_ids(
        prompts[0], greedy(12)
    )  # 1 prefill on the companion, 11 steps on the main graph
    assert companion.runs == 1 and main_runs == ["main"] * 11
    assert solo == transformers_greedy(checkpoints["gpt2"], prompts[0], 12)
    reqs = [engine.submit(p, greedy(12)) for p in prompts]
    engine.run_until_done(reqs)
    assert companion.runs > 1 + 2  # the prefills and the steps of two rows
    assert reqs[0].tokens == solo
    assert reqs[1].tokens == transformers_greedy(checkpoints["gpt2"], prompts[1], 12)


# -- penalties, min_tokens and banned tokens (vLLM's semantics) ------------------------------


def _reference_greedy(checkpoint, prompt, n, end, min_tokens=0, presence=0.0, frequency=0.0, repetition=1.0):
    """Greedy tokens from transformers' logits, penalized by `vllm_penalize` (vLLM's formula),
    `end` masked until `min_tokens` tokens exist; stops after `end`."""
    import torch
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = hf(torch.tensor([prompt + out])).logits[0, -1].double().numpy()
            x = vllm_penalize(logits, prompt, out, presence, frequency, repetition)
            if len(out) < min_tokens:
                x[end] = -np.inf
            out.append(int(np.argmax(x)))
            if out[-1] == end:
                break
    return out


def _transformers_generate(checkpoint, prompt, n, end, **kw):
    import torch
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([prompt]),
            do_sample=False,
            max_new_tokens=n,
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            eos_token_id=end,
            pad_token_id=end,
            **kw,
        )
    return out[0, len(prompt) :].tolist()


def test_repetition_penalty_and_min_tokens_equal_transformers(version_dir, checkpoints):
    """transformers' RepetitionPenaltyLogitsProcessor (prompt and output) and
    MinNewTokensLengthLogitsProcessor against the engine's greedy path. The tiny model never
    ends a text by itself, so a token of its plain greedy output is made the end token: the
    model's EOS (the engine's), TensorRT-LLM's end_id and vLLM's stop_token_ids each."""
    engine, _, _ = make_engine(version_dir, slots=2)
    ckpt = checkpoints["gpt2"]
    for text in ("The class", "Python is"):
        ids = engine.tokenizer.encode(text).ids
        plain = engine.generate_ids(ids, greedy(24))
        # the tiny model repeats itself: the first new token after the first, else the first
        at = next((k for k, t in enumerate(plain) if k >= 1 and t not in plain[:k]), 0)
        end = plain[at]
        for r, m in [(1.3, 0), (1.3, 8), (1.0, 8), (2.0, 5)]:
            ref = _transformers_generate(ckpt, ids, 24, end, repetition_penalty=r, min_new_tokens=m)
            params = SamplingParams(max_tokens=24, repetition_penalty=r, min_tokens=m)
            assert end not in ref[:m] and (ref[-1] == end or len(ref) == 24)
            assert engine.generate_ids(ids, replace(params, end_id=end)) == ref, (text, r, m)
            assert engine.generate_ids(ids, replace(params, stop_token_ids=(end,))) == ref, (text, r, m)
            engine.eos, eos = end, engine.eos
            try:
                assert engine.generate_ids(ids, params) == ref, (text, r, m)
            finally:
                engine.eos = eos
        assert engine.generate_ids(ids, SamplingParams(max_tokens=24, end_id=end)) == plain[: at + 1]


def test_presence_and_frequency_penalties_equal_the_reference(version_dir, checkpoints):
    engine, _, _ = make_engine(version_dir, slots=2)
    ids = engine.tokenizer.encode("Python is").ids
    plain = engine.generate_ids(ids, greedy(20))
    for presence, frequency, repetition in [
        (0.8, 0.0, 1.0),
        (0.0, 0.6, 1.0),
        (0.5, 0.5, 1.2),
        (-0.5, 0.0, 1.0),
    ]:
        params = SamplingParams(
            max_tokens=20,
            ignore_eos=True,
            presence_penalty=presence,
            frequency_penalty=frequency,
            repetition_penalty=repetition,
        )
        ref = _reference_greedy(checkpoints["gpt2"], ids, 20, engine.eos, 0, presence, frequency, repetition)
        got = engine.generate_ids(ids, params)
        assert got == ref, (presence, frequency, repetition)
        if presence > 0 or frequency > 0:
            assert got != plain  # the penalty really changed the text


def test_penalized_and_banned_rows_in_a_batch_equal_their_solo_tokens(version_dir):
    """The penalized path reads its own row of the batch's logits: three requests decoding
    together (penalized greedy, plain greedy, seeded sampling with penalties) each get their
    solo tokens."""
    engine, _, _ = make_engine(version_dir, slots=3)
    prompts = [engine.tokenizer.encode(t).ids for t in ("The class", "import", "Python is")]
    params = [
        SamplingParams(max_tokens=15, ignore_eos=True, repetition_penalty=1.4, frequency_penalty=0.3),
        greedy(15),
        SamplingParams(max_tokens=15, ignore_eos=True, temperature=0.9, seed=5, presence_penalty=1.0),
    ]
    solo = [engine.generate_ids(i, p) for i, p in zip(prompts, params)]
    reqs = [engine.submit(i, p) for i, p in zip(prompts, params)]
    engine.run_until_done(reqs)
    assert [r.tokens for r in reqs] == solo


def test_bad_words_are_banned_with_and_without_a_leading_space(engine):
    ids = engine.tokenizer.encode("The class").ids
    plain = engine.generate_ids(ids, greedy(20))
    word = engine.tokenizer.decode(plain[1:2]).strip()
    assert word
    got = engine.generate_ids(ids, SamplingParams(max_tokens=20, ignore_eos=True, bad_words=(word,)))
    banned = {s[-1] for s in engine.output.bad_word_ids((word,)) if len(s) == 1}
    assert banned and not banned & set(got) and got != plain
