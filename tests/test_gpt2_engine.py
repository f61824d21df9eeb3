"""The server's GPT-2 generation engine without a server: parsing, sampling, detokenizing,
and in-flight batching giving each request exactly its solo greedy tokens."""

from __future__ import annotations

import numpy as np
import pytest

from serving.triton_models.gpt2_engine import (
    Detokenizer,
    Gpt2Engine,
    RequestError,
    SamplingParams,
    parse_sampling_parameters,
    sample_token,
)


@pytest.fixture(scope="module")
def engine(exports, tmp_path_factory):
    import shutil

    d = tmp_path_factory.mktemp("engine")
    shutil.copyfile(exports["gpt2"] / "fp32" / "gpt2.onnx", d / "model.onnx")
    for f in ("tokenizer.json", "model_info.json"):
        shutil.copyfile(exports["gpt2"] / "assets" / f, d / f)
    return Gpt2Engine(str(d), intra_op_threads=1)


@pytest.mark.parametrize(
    "text, field",
    [
        ("{", "JSON"),
        ("[1]", "JSON object"),
        ('{"max_tokens": 0}', "max_tokens"),
        ('{"max_tokens": 513}', "max_tokens"),
        ('{"max_tokens": 1.5}', "max_tokens"),
        ('{"temperature": -0.1}', "temperature"),
        ('{"top_k": -1}', "top_k"),
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


def test_sampling_defaults_are_greedy():
    p = parse_sampling_parameters(None, 512)
    assert p.greedy and p.max_tokens == 64 and p.stop == []


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
    text = "héllo 日本語 🙂 naïve"
    ids = engine.tokenizer.encode(text).ids
    d = Detokenizer(engine.tokenizer)
    deltas = [d.push(t) for t in ids] + [d.flush()]
    for delta in deltas:
        delta.encode("utf-8")  # no lone surrogates
        assert "\ufffd" not in delta
    assert "".join(deltas) == text
    assert len([x for x in deltas if x]) > 1


def test_stop_strings_cut_the_output(engine):
    ids = engine.tokenizer.encode("alpha beta gamma delta").ids
    d = Detokenizer(engine.tokenizer, stop=[" gam"])
    out = "".join(d.push(t) for t in ids) + d.flush()
    assert out == "alpha beta" and d.stopped


def test_prompt_limits_name_the_field(engine):
    with pytest.raises(RequestError, match="text_input"):
        engine.encode_prompt("", SamplingParams())
    with pytest.raises(RequestError, match="text_input"):
        engine.encode_prompt("word " * 500, SamplingParams())
    with pytest.raises(RequestError, match="max_tokens"):
        engine.encode_prompt("word " * 20, SamplingParams(max_tokens=120))


def test_engine_greedy_equals_transformers(engine, checkpoints):
    import torch
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(checkpoints["gpt2"]).eval()
    ids = engine.tokenizer.encode("The class of").ids
    mine = engine.generate_ids(ids, SamplingParams(max_tokens=30, ignore_eos=True))
    with torch.no_grad():
        ref = hf.generate(
            torch.tensor([ids]),
            do_sample=False,
            max_new_tokens=30,
            min_new_tokens=30,
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            pad_token_id=0,
        )
    assert mine == ref[0, len(ids) :].tolist()


def test_batched_prefill_finishes_one_token_requests_without_joining(engine):
    seqs = [
        engine.new_sequence(i, engine.tokenizer.encode(p).ids, SamplingParams(max_tokens=n, ignore_eos=True))
        for i, (p, n) in enumerate([("The class", 1), ("import os and sys", 3)])
    ]
    solo = [engine.generate_ids(s.prompt_ids, s.params) for s in seqs]
    first = engine.add_many(seqs)
    assert [first[0]] == solo[0] and len(engine.active) == 1
    rest = []
    while engine.active:
        ((seq, token),) = engine.step()
        rest.append(token)
        engine.remove([seq] if seq.finished else [])
    assert [first[1], *rest] == solo[1]


def test_batched_decoding_equals_solo_with_requests_joining_and_leaving(engine):
    prompts = ["The class", "def f(x): return", "import os", "x", "Python is a language"]
    lengths = [20, 6, 14, 25, 9]
    enc = [engine.tokenizer.encode(p).ids for p in prompts]
    solo = [
        engine.generate_ids(ids, SamplingParams(max_tokens=n, ignore_eos=True))
        for ids, n in zip(enc, lengths)
    ]
    seqs = [
        engine.new_sequence(i, ids, SamplingParams(max_tokens=n, ignore_eos=True))
        for i, (ids, n) in enumerate(zip(enc, lengths))
    ]
    out = {i: [] for i in range(len(prompts))}
    join_at = {0: [0, 1], 2: [2], 5: [3, 4]}  # step -> sequences joining then (prefilled together)
    step = 0
    while step < 100:
        joining = join_at.get(step, [])
        if joining:
            for i, token in zip(joining, engine.add_many([seqs[i] for i in joining])):
                out[i].append(token)
        if not engine.active and step > max(join_at):
            break
        results = engine.step()
        for seq, token in results:
            out[seq.request_id].append(token)
        engine.remove([s for s, _ in results if s.finished])
        step += 1
    assert [out[i] for i in range(len(prompts))] == solo
    assert engine.active == [] and engine.mask.shape == (0, 0)
