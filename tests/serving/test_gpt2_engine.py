"""The server's GPT-2 generation engine without a server: parsing, sampling, detokenizing, and
the loop over KV slots (join, leave, slot reuse, chunked prefill, cancel, timeout, slot
exhaustion, memory allocated once), driven step by step with a fake clock and a recording sink."""

from __future__ import annotations

import shutil
import tracemalloc
from dataclasses import replace

import numpy as np
import pytest

from serving.triton_models.gpt2_engine import (
    EngineConfig,
    FinishReason,
    QueueFullError,
    Sink,
    Status,
    load_engine,
)
from serving.triton_models.sampling import (
    Detokenizer,
    RequestError,
    SamplingParams,
    parse_sampling_parameters,
    sample_token,
)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Recorder(Sink):
    def __init__(self):
        self.text, self.finished = {}, []

    def on_text(self, request, text):
        assert text, "the engine delivers only non-empty text"
        self.text.setdefault(id(request), []).append(text)

    def on_finish(self, request):
        self.finished.append(request)


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
    sink, clock = Recorder(), FakeClock()
    engine = load_engine(str(version_dir), EngineConfig(**config), sink, intra_op_threads=1, clock=clock)
    return engine, sink, clock


@pytest.fixture(scope="module")
def engine(version_dir):
    return make_engine(version_dir, slots=4)[0]


def greedy(n):
    return SamplingParams(max_tokens=n, ignore_eos=True)


@pytest.mark.parametrize(
    "text, field",
    [
        ("{", "JSON"),
        ("[1]", "JSON object"),
        ('{"max_tokens": 0}', "max_tokens"),
        ('{"max_tokens": 513}', "max_tokens"),
        ('{"max_tokens": 1.5}', "max_tokens"),
        ('{"temperature": -0.1}', "temperature"),
        ('{"top_k": -2}', "top_k"),
        ('{"top_p": 0}', "top_p"),
        ('{"seed": "x"}', "seed"),
        ('{"stop": [1]}', "stop"),
        ('{"ignore_eos": 1}', "ignore_eos"),
        ('{"best_of": 2}', "best_of"),
    ],
)
def test_bad_sampling_parameters_name_the_field(text, field):
    with pytest.raises(RequestError, match=field):
        parse_sampling_parameters(text, max_tokens_limit=512)


def test_sampling_defaults_are_greedy_and_round_trip():
    p = parse_sampling_parameters(None, 512)
    assert p.greedy and p.max_tokens == 64 and p.stop == ()
    q = SamplingParams(max_tokens=9, temperature=0.5, top_p=0.9, seed=4, stop=("x",))
    assert SamplingParams.from_dict(q.to_dict(), 512) == q


def test_seeded_sampling_repeats_and_top_k_1_is_greedy():
    logits = np.random.default_rng(0).standard_normal(500).astype(np.float32)
    p = SamplingParams(temperature=1.0, top_p=0.9, seed=3)
    rng_a, rng_b = np.random.Generator(np.random.PCG64(3)), np.random.Generator(np.random.PCG64(3))
    a = [sample_token(logits, p, rng_a) for _ in range(50)]
    b = [sample_token(logits, p, rng_b) for _ in range(50)]
    assert a == b and len(set(a)) > 1
    assert sample_token(logits, SamplingParams(temperature=2.0, top_k=1), None) == int(np.argmax(logits))


def test_top_p_keeps_only_the_nucleus():
    logits = np.log(np.array([0.6, 0.3, 0.05, 0.05]))
    rng = np.random.Generator(np.random.PCG64(0))
    draws = {sample_token(logits, SamplingParams(temperature=1.0, top_p=0.85), rng) for _ in range(200)}
    assert draws == {0, 1}


def test_detokenizer_streams_only_valid_utf8(engine):
    text = "héllo 日本語 🙂 naïve " * 3
    ids = engine.tokenizer.encode(text).ids
    d = Detokenizer(engine.tokenizer)
    deltas = [d.push(t) for t in ids] + [d.flush()]
    for delta in deltas:
        delta.encode("utf-8")  # no lone surrogates
        assert "\ufffd" not in delta
    assert "".join(deltas) == text
    assert len([x for x in deltas if x]) > 3


@pytest.mark.parametrize("stop, expected", [((" gam",), "alpha beta"), (("a b",), "alph"), (("zz",), None)])
def test_stop_strings_cut_the_output(engine, stop, expected):
    text = "alpha beta gamma delta"
    d = Detokenizer(engine.tokenizer, stop=stop)
    out = "".join(d.push(t) for t in engine.tokenizer.encode(text).ids) + d.flush()
    assert out == (expected or text) and d.stopped == (expected is not None)


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
    reqs, step = {}, 0
    while step < 200 and (step <= max(arrive) or engine.has_work()):
        for i in arrive.get(step, []):
            reqs[i] = engine.submit(enc[i], greedy(lengths[i]))
        engine.step()
        step += 1
    assert [reqs[i].tokens for i in range(len(texts))] == solo
    assert all(r.finish_reason is FinishReason.LENGTH for r in reqs.values())
    assert engine.free_slots == 3 and not engine.running
    for r in reqs.values():  # the streamed text is the tokens' text
        assert "".join(sink.text.get(id(r), [])) == engine.tokenizer.decode(r.tokens)


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps(version_dir):
    engine, sink, _ = make_engine(version_dir, slots=2, prefill_chunk=4, prefill_budget=0)
    short = engine.submit(engine.tokenizer.encode("x").ids, greedy(40))
    engine.step()
    assert short.status is Status.DECODING and short.generated == 2
    long_ids = engine.tokenizer.encode("word " * 30).ids
    long = engine.submit(long_ids, greedy(5))
    before = short.generated
    steps = 0
    while long.status is not Status.DECODING:
        engine.step()
        steps += 1
    # One chunk a step, and the running stream got a token every one of those steps.
    assert steps == -(-len(long_ids) // 4)
    assert short.generated == before + steps


def test_chunks_are_sized_so_a_chunk_costs_about_one_decode_step():
    from serving.triton_models.gpt2_engine import _CostFit

    fit = _CostFit()
    assert fit.tokens_within(20.0) is None  # nothing measured yet: the configured size
    for tokens in (1, 4, 16, 64, 512):
        fit.add(tokens, 11.0 + 1.5 * tokens)  # a CPU: a weight pass plus compute per token
    assert fit.tokens_within(17.0) == 4
    assert fit.tokens_within(11.0 + 1.5 * 100) == 100
    assert fit.tokens_within(5.0) == 4  # below the fixed pass: chunks stay big enough to be worth it
    flat = _CostFit()
    for tokens in (1, 16, 512):
        flat.add(tokens, 1.6)  # a GPU at this size: cost does not grow with tokens
    assert flat.tokens_within(1.6) is None
    gpu = _CostFit()
    for tokens in (1, 16, 512):
        gpu.add(tokens, 1.8 + 0.0005 * tokens)  # a pass costs more than a decode step, tokens ~nothing
    assert gpu.tokens_within(1.6) >= 512


def test_chunk_budget_grows_with_the_prompts_waiting_per_running_stream(version_dir):
    engine = make_engine(version_dir, slots=1)[0]
    assert engine._chunk_tokens(prefilling=1, decoding=4) == engine.config.prefill_chunk  # nothing measured
    for tokens in (1, 8, 64):
        engine._prefill_cost.add(tokens, 10.0 + 1.0 * tokens)
    engine._decode_ms.add(16.0)
    assert engine._chunk_tokens(prefilling=1, decoding=4) == 6  # a chunk costs about one step
    assert engine._chunk_tokens(prefilling=3, decoding=1) == 38  # three prompts: three steps' worth
    assert engine._chunk_tokens(prefilling=50, decoding=1) == engine.config.prefill_chunk


def test_requests_arriving_together_share_one_prefill_call(version_dir):
    engine, sink, _ = make_engine(version_dir, slots=4, idle_prefill_chunk=64)
    ids = engine.tokenizer.encode("def f(x): return").ids
    solo = engine.generate_ids(ids, greedy(8))
    calls = []
    real = engine.model.prefill_rows

    def spy(first_slot, rows, start):
        calls.append(rows.shape)
        return real(first_slot, rows, start)

    engine.model.prefill_rows = spy
    reqs = [engine.submit(ids, greedy(8)) for _ in range(3)]
    engine.run_until_done(reqs)
    assert calls == [(3, len(ids))]
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


def test_slot_exhaustion_queues_then_refuses_without_disturbing_the_running(version_dir):
    engine, sink, clock = make_engine(version_dir, slots=1, max_queue=1)
    ids = engine.tokenizer.encode("The class").ids
    first = engine.submit(ids, greedy(6))
    engine.step()
    queued = engine.submit(ids, greedy(6))
    with pytest.raises(QueueFullError, match=r"all 1 KV slots in use .*max_queue_size 1"):
        engine.submit(ids, greedy(6))
    engine.run_until_done([first, queued])
    assert first.tokens == queued.tokens == engine.generate_ids(ids, greedy(6))
    # A waiting request can time out too, and never takes a slot.
    engine2, _, clock2 = make_engine(version_dir, slots=1, max_queue=4, max_request_seconds=5.0)
    running = engine2.submit(ids, greedy(30))
    engine2.step()
    waiting = engine2.submit(ids, greedy(3))
    clock2.now += 6.0
    engine2.step()
    assert waiting.finish_reason is FinishReason.TIMEOUT and waiting.slot == -1
    assert running.finish_reason is FinishReason.TIMEOUT


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


def test_a_failing_model_call_fails_its_requests_and_the_engine_serves_on(version_dir, monkeypatch):
    engine, sink, _ = make_engine(version_dir, slots=2)
    ids = engine.tokenizer.encode("The class").ids
    req = engine.submit(ids, greedy(10))

    def broken(*args, **kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(engine.model, "prefill_rows", broken)  # a fault that cannot be caused for real
    engine.step()
    assert req.finish_reason is FinishReason.ERROR and "device lost" in req.error
    assert engine.free_slots == 2
    monkeypatch.undo()
    assert engine.generate_ids(ids, greedy(5))


def test_a_failing_token_step_ends_only_its_own_request(version_dir):
    victims = []

    class Flaky(Recorder):
        def on_text(self, request, text):
            if request in victims:
                raise RuntimeError("client buffer gone")
            super().on_text(request, text)

    engine, _, _ = make_engine(version_dir, slots=2)
    engine.sink = Flaky()
    ids = engine.tokenizer.encode("The class").ids
    other = engine.submit(ids, greedy(6))
    engine.step()
    victim = engine.submit(engine.tokenizer.encode("import os").ids, greedy(6))
    victims.append(victim)
    engine.run_until_done([other, victim])
    assert victim.finish_reason is FinishReason.ERROR and "client buffer gone" in victim.error
    assert other.finish_reason is FinishReason.LENGTH and other.tokens == engine.generate_ids(ids, greedy(6))
    assert engine.free_slots == 2


def test_memory_is_allocated_once_over_a_thousand_requests(version_dir):
    """Slots are the same buffers throughout; a thousand requests (a third cancelled) leave no
    growth in what Python and numpy hold."""
    engine, sink, _ = make_engine(version_dir, slots=4)
    ptrs = list(engine.model.kv.ptrs)
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
    assert engine.model.kv.ptrs == ptrs and engine.free_slots == 4


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
    engine.model.companion = companion = _CallCounter(engine.model.companion)
    main_runs = []
    real_decode = engine.model.decode

    def decode(tokens, positions):
        if len(tokens) < 2:
            main_runs.append(len(tokens))
        return real_decode(tokens, positions)

    engine.model.decode = decode
    prompts = [engine.tokenizer.encode(t).ids for t in ("The class", "import")]
    solo = engine.generate_ids(
        prompts[0], greedy(12)
    )  # 1 prefill on the companion, 11 steps on the main graph
    assert companion.runs == 1 and len(main_runs) == 11
    assert solo == transformers_greedy(checkpoints["gpt2"], prompts[0], 12)
    reqs = [engine.submit(p, greedy(12)) for p in prompts]
    engine.run_until_done(reqs)
    assert companion.runs > 1 + 2  # the prefills and the steps of two rows
    assert reqs[0].tokens == solo
    assert reqs[1].tokens == transformers_greedy(checkpoints["gpt2"], prompts[1], 12)


# -- penalties, min_tokens and banned tokens (vLLM's semantics) ------------------------------


def _vllm_penalize(logits, prompt, output, presence, frequency, repetition):
    """vLLM's apply_penalties on (V,) logits, written over the whole vocabulary: repetition
    over prompt and output tokens, then frequency x count and presence over the output."""
    x = logits.astype(np.float64).copy()
    counts = np.bincount(np.asarray(output, np.int64), minlength=x.size)[: x.size]
    seen = (np.bincount(np.asarray(prompt, np.int64), minlength=x.size)[: x.size] > 0) | (counts > 0)
    x = np.where(seen, np.where(x > 0, x / repetition, x * repetition), x)
    x -= frequency * counts
    x -= presence * (counts > 0)
    return x


def test_penalties_follow_vllm_formula_on_fixed_logits():
    from serving.triton_models.sampling import TokenHistory

    rng = np.random.default_rng(0)
    logits = rng.standard_normal(300).astype(np.float32) * 3
    prompt = [5, 9, 9, 200]
    output = [9, 17, 17, 17, 250, 5, 17]
    for presence, frequency, repetition in [
        (0.5, 0.0, 1.0),
        (0.0, 0.7, 1.0),
        (-1.0, 0.3, 1.7),
        (1.5, -0.5, 0.6),
    ]:
        params = SamplingParams(
            presence_penalty=presence, frequency_penalty=frequency, repetition_penalty=repetition
        )
        history = TokenHistory(prompt)
        for t in output:
            history.add(t)
        x = logits.astype(np.float64)
        history.apply(x, params)
        ref = _vllm_penalize(logits, prompt, output, presence, frequency, repetition)
        np.testing.assert_allclose(x, ref, rtol=0, atol=1e-12)
        assert sample_token(logits, params, None, history) == int(np.argmax(ref))
    # the greedy pick moves off a token the penalty hits
    top = int(np.argmax(logits))
    history = TokenHistory([])
    for _ in range(3):
        history.add(top)
    assert sample_token(logits, SamplingParams(frequency_penalty=2.0), None, history) != top
    assert sample_token(logits, SamplingParams(), None, history) == top  # no penalty: plain argmax


def test_banned_tokens_are_never_sampled():
    logits = np.log(np.array([0.7, 0.2, 0.05, 0.05]))
    rng = np.random.Generator(np.random.PCG64(0))
    params = SamplingParams(temperature=1.0)
    assert {sample_token(logits, params, rng, banned=[0]) for _ in range(200)} == {1, 2, 3}
    assert sample_token(logits, SamplingParams(), None, banned=[0]) == 1
    keep = SamplingParams(temperature=1.0, min_p=0.2)  # min_p: at least 0.2 x the top probability
    assert {sample_token(logits, keep, rng) for _ in range(200)} == {0, 1}


def test_stop_strings_do_not_end_the_text_before_min_tokens(engine):
    ids = engine.tokenizer.encode("alpha beta gamma beta delta").ids
    first = len(engine.tokenizer.encode("alpha beta").ids)
    d = Detokenizer(engine.tokenizer, stop=(" beta",), min_tokens=first + 1)
    out = "".join(d.push(t) for t in ids) + d.flush()
    assert out == "alpha beta gamma" and d.stopped


def _reference_greedy(checkpoint, prompt, n, end, min_tokens=0, presence=0.0, frequency=0.0, repetition=1.0):
    """Greedy tokens from transformers' logits, penalized by `_vllm_penalize` (vLLM's formula),
    `end` masked until `min_tokens` tokens exist; stops after `end`."""
    import torch
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = hf(torch.tensor([prompt + out])).logits[0, -1].double().numpy()
            x = _vllm_penalize(logits, prompt, out, presence, frequency, repetition)
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
    banned = {s[-1] for s in engine._bad_word_ids((word,)) if len(s) == 1}
    assert banned and not banned & set(got) and got != plain
