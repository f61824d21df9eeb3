"""Log-probabilities on the fake runner: each generated token's and each prompt token's
entry equals the log-softmax of the logits a solo reference computes for its prefix, however
the prompt is chunked, mixed with decode rows, laid out in slots or blocks, or shares a
cached prefix; requests that ask for none never take their logits out."""

from __future__ import annotations

import numpy as np
import pytest

from engine import logprobs
from engine.request_schema import RequestError, SamplingParams


def _expected(setup, prompt, generated, top, prompt_top):
    """(generated entries, prompt entries) from the fake's logits of each prefix."""
    seq = list(prompt)
    gen = []
    for token in generated:
        gen.append(logprobs.entry(setup.runner.logits_of(seq), token, top))
        seq.append(token)
    prm = [None] + [
        logprobs.entry(setup.runner.logits_of(prompt[:j]), prompt[j], prompt_top)
        for j in range(1, len(prompt))
    ]
    return gen, prm


def _close(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if w is None:
            assert g is None
            continue
        assert g[0] == w[0] and g[1] == pytest.approx(w[1], abs=1e-9)
        assert [t for t, _ in g[2]] == [t for t, _ in w[2]]
        assert [lp for _, lp in g[2]] == pytest.approx([lp for _, lp in w[2]], abs=1e-9)


@pytest.mark.parametrize(
    "layout",
    [
        {},  # slots, separate prefill and decode calls
        {"block_size": 4, "mixed": True},  # blocks, mixed calls, prefix caching on
    ],
)
def test_generated_and_prompt_entries_equal_the_reference(make, layout):
    s = make(slots=3, max_len=64, prefill_chunk=5, idle_prefill_chunk=5, **layout)
    prompts = [[3, 9, 4, 1, 7, 7, 2, 8, 5, 6, 1, 2, 3], [5, 1, 2], [3, 9, 4, 1, 7, 7, 2, 8, 5, 6, 9]]
    asks = [
        SamplingParams(max_tokens=6, ignore_eos=True, logprobs=3, prompt_logprobs=2),
        SamplingParams(max_tokens=8, ignore_eos=True),  # decodes beside the others, asks nothing
        SamplingParams(max_tokens=4, ignore_eos=True, temperature=0.8, seed=1, logprobs=0, prompt_logprobs=0),
    ]
    first = s.engine.submit(prompts[0], asks[0])
    s.engine.run_until_done([first])  # its blocks are cached before the third arrives
    rest = [s.engine.submit(p, a) for p, a in zip(prompts[1:], asks[1:])]
    s.engine.run_until_done(rest)
    reqs = [first, *rest]
    for req, prompt, params in zip(reqs, prompts, asks):
        if params.logprobs is None:
            assert req.logprobs is None and req.prompt_logprobs is None
            continue
        gen, prm = _expected(s, prompt, req.tokens, params.logprobs, params.prompt_logprobs)
        _close(req.logprobs, gen)
        _close(req.prompt_logprobs, prm)
        assert all(len(e[2]) == params.logprobs for e in req.logprobs)
    assert reqs[0].tokens == s.reference(prompts[0], 6)
    if layout:  # the third shares the first's full blocks, but computes them to score them
        assert s.engine.stats.prefix_hits == 0


def test_the_entries_are_the_raw_distribution_whatever_the_sampler_does(make):
    s = make(slots=1)
    params = SamplingParams(
        max_tokens=5, ignore_eos=True, temperature=1.5, top_k=3, seed=4, repetition_penalty=1.3, logprobs=5
    )
    req = s.engine.submit([1, 2, 3], params)
    s.engine.run_until_done([req])
    gen, _ = _expected(s, [1, 2, 3], req.tokens, 5, 0)
    _close(req.logprobs, gen)
    probs = [np.exp([lp for _, lp in e[2]]) for e in req.logprobs]
    assert all(p[0] >= p[-1] for p in probs)  # most likely first


def test_logprob_fields_are_checked():
    with pytest.raises(RequestError, match="logprobs must be an integer in 0..20"):
        SamplingParams.from_dict({"logprobs": 21}, 16)
    with pytest.raises(RequestError, match="prompt_logprobs must be an integer in 0..20"):
        SamplingParams.from_dict({"prompt_logprobs": -1}, 16)
    p = SamplingParams.from_dict({"logprobs": None, "prompt_logprobs": 1}, 16)
    assert p.logprobs is None and p.prompt_logprobs == 1 and p.to_dict()["prompt_logprobs"] == 1
