"""The request schema, the sampler and the detokenizer: each field's range named in its
error, vLLM's penalty formula, top-k/top-p/min-p, seeded sampling, banned tokens, and
incremental detokenizing (UTF-8 whole, stop strings, min_tokens) with a byte-level BPE
tokenizer trained here in a fraction of a second."""

from __future__ import annotations

import numpy as np
import pytest
from references import vllm_penalize

from engine.detokenizer import Detokenizer
from engine.request_schema import RequestError, SamplingParams, parse_sampling_parameters
from engine.sampler import TokenHistory, sample_token


@pytest.fixture(scope="module")
def tokenizer():
    """GPT-2's kind of tokenizer (byte-level BPE), trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["alpha beta gamma delta", "héllo 日本語 naïve", "The class of a Python object"] * 20
    tok.train_from_iterator(
        text, trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    return tok


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


def test_detokenizer_streams_only_valid_utf8(tokenizer):
    text = "héllo 日本語 🙂 naïve " * 3
    ids = tokenizer.encode(text).ids
    d = Detokenizer(tokenizer)
    deltas = [d.push(t) for t in ids] + [d.flush()]
    for delta in deltas:
        delta.encode("utf-8")  # no lone surrogates
        assert "\ufffd" not in delta
    assert "".join(deltas) == text
    assert len([x for x in deltas if x]) > 3


@pytest.mark.parametrize("stop, expected", [((" gam",), "alpha beta"), (("a b",), "alph"), (("zz",), None)])
def test_stop_strings_cut_the_output(tokenizer, stop, expected):
    text = "alpha beta gamma delta"
    d = Detokenizer(tokenizer, stop=stop)
    out = "".join(d.push(t) for t in tokenizer.encode(text).ids) + d.flush()
    assert out == (expected or text) and d.stopped == (expected is not None)


def test_penalties_follow_vllm_formula_on_fixed_logits():
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
        ref = vllm_penalize(logits, prompt, output, presence, frequency, repetition)
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


def test_stop_strings_do_not_end_the_text_before_min_tokens(tokenizer):
    ids = tokenizer.encode("alpha beta gamma beta delta").ids
    first = len(tokenizer.encode("alpha beta").ids)
    d = Detokenizer(tokenizer, stop=(" beta",), min_tokens=first + 1)
    out = "".join(d.push(t) for t in ids) + d.flush()
    assert out == "alpha beta gamma" and d.stopped
