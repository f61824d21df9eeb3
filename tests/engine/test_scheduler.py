"""The scheduler and the engine's loop on the fake runner and the fake clock: admission,
queue limits, chunk sizes and the chunk-cost fit, cancel and timeout, slot accounting,
fairness, the companion routing, failures, and the plan itself as data. No model, no export:
the fake's logits depend on everything its slot holds, so a request's tokens equal the
solo reference only if every chunk and step was written where it belongs."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from engine.cost import CostFit
from engine.plan import COMPANION, MAIN, Phase
from engine.request_schema import SamplingParams
from engine.runners.fake import FakeCost
from engine.scheduler import PADDING_LIMIT
from engine.types import FinishReason, QueueFullError, Status


def greedy(n, **kw):
    return SamplingParams(max_tokens=n, ignore_eos=True, **kw)


def prompt(n, seed=0):
    return [int(t) for t in np.random.default_rng(seed).integers(1, 60, n)]


# -- the plan -------------------------------------------------------------------------------


def test_schedule_returns_the_step_as_data_without_running_anything(make):
    s = make(slots=2)
    req = s.engine.submit(prompt(5), greedy(3))
    plan = s.engine.scheduler.schedule()
    assert s.runner.calls == []  # planning runs nothing
    (fwd,) = plan.forwards
    assert fwd.phase is Phase.PREFILL and fwd.slots == (0,) and fwd.starts.tolist() == [0]
    assert fwd.matrix().tolist() == [req.prompt_ids] and fwd.requests == (req,) and fwd.graph == MAIN
    assert req.status is Status.PREFILLING and req.filled == 0  # advanced only by update


def test_a_step_plans_the_prefill_before_the_decode_rows(make):
    s = make(slots=2)
    a = s.engine.submit(prompt(4), greedy(5))
    s.engine.step()
    b = s.engine.submit(prompt(6, 1), greedy(5))
    plan = s.engine.scheduler.schedule()
    assert [f.phase for f in plan.forwards] == [Phase.PREFILL, Phase.DECODE]
    assert plan.forwards[0].requests == (b,) and plan.forwards[1].requests[0] is a


def test_a_completed_prompt_gives_its_first_token_and_decodes_from_the_next_step(make):
    s = make(slots=1)
    req = s.engine.submit(prompt(8), greedy(4))
    s.engine.step()
    assert req.status is Status.DECODING and req.generated == 1 and req.filled == 8
    assert [c.phase for c in s.runner.calls] == [Phase.PREFILL]
    s.engine.step()
    assert req.generated == 2 and s.runner.calls[-1].phase is Phase.DECODE
    assert s.runner.calls[-1].starts == (8,) and s.runner.calls[-1].ids == ((req.tokens[0],),)


def test_a_decode_call_covers_slots_from_zero_and_pads_a_prefilling_slot_where_it_writes_next(make):
    s = make(slots=2, prefill_chunk=4, idle_prefill_chunk=4, prefill_budget=0)
    first = s.engine.submit(prompt(2), greedy(2))  # slot 0, ends soon
    stream = s.engine.submit(prompt(2, 1), greedy(30))  # slot 1, keeps decoding
    s.engine.run_until_done([first])
    long = s.engine.submit(prompt(12, 2), greedy(3))  # slot 0 again, prefilled 4 a step
    plan = s.engine.scheduler.schedule()
    prefill, decode = plan.forwards
    assert prefill.slots == (0,) and decode.slots == (0, 1)
    assert decode.requests == (None, stream)  # slot 0 is a padding row ...
    assert decode.starts.tolist() == [4, stream.filled]  # ... written where long's 5th token goes
    for forward in plan.forwards:
        s.engine.scheduler.update(forward, s.engine._execute(forward))
    s.engine.run_until_done([long, stream])
    assert long.tokens == s.reference(long.prompt_ids, 3) and stream.tokens == s.reference(
        stream.prompt_ids, 30
    )


# -- exact tokens however the requests are scheduled ------------------------------------------


def test_greedy_tokens_equal_the_solo_reference(make):
    s = make()
    ids = prompt(7)
    assert s.engine.generate_ids(ids, greedy(20)) == s.reference(ids, 20)


@pytest.mark.parametrize(
    "mixed, block_size", [(False, 0), (True, 0), (True, 4)], ids=["one-phase-calls", "mixed-calls", "blocks"]
)
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_requests_joining_leaving_and_reusing_slots_in_chunks_equal_their_references(
    make, chunk, mixed, block_size
):
    s = make(
        slots=3,
        prefill_chunk=chunk,
        idle_prefill_chunk=chunk,
        prefill_budget=0,
        mixed=mixed,
        block_size=block_size,
    )
    lengths = [20, 6, 14, 25, 9, 3]
    prompts = [prompt(n, seed) for seed, n in enumerate([2, 11, 1, 1, 5, 9])]
    arrive = {0: [0, 1], 2: [2], 5: [3, 4, 5]}
    reqs, step = {}, 0
    while step < 400 and (step <= max(arrive) or s.engine.has_work()):
        for i in arrive.get(step, []):
            reqs[i] = s.engine.submit(prompts[i], greedy(lengths[i]))
        s.engine.step()
        step += 1
    assert [reqs[i].tokens for i in range(6)] == [s.reference(p, n) for p, n in zip(prompts, lengths)]
    assert all(r.finish_reason is FinishReason.LENGTH for r in reqs.values())
    assert bool(s.calls(Phase.MIXED)) == mixed
    assert s.engine.free_slots == 3 and not s.engine.running
    for r in reqs.values():  # the streamed text is the tokens' text
        assert "".join(s.sink.text[id(r)]) == s.engine.tokenizer.decode(r.tokens)


def test_sampled_and_penalized_rows_in_a_batch_equal_their_solo_runs(make):
    s = make(slots=3)
    ids = [prompt(4, i) for i in range(3)]
    params = [
        greedy(12, repetition_penalty=1.4, frequency_penalty=0.3),
        greedy(12),
        greedy(12, temperature=0.9, seed=5, presence_penalty=1.0),
    ]
    solo = [s.engine.generate_ids(i, p) for i, p in zip(ids, params)]
    reqs = [s.engine.submit(i, p) for i, p in zip(ids, params)]
    s.engine.run_until_done(reqs)
    assert [r.tokens for r in reqs] == solo


# -- chunks ---------------------------------------------------------------------------------


def test_with_nothing_decoding_a_prompt_goes_in_idle_sized_chunks(make):
    s = make(slots=1, idle_prefill_chunk=16)
    req = s.engine.submit(prompt(40), greedy(2))
    s.engine.run_until_done([req])
    assert [len(c.ids[0]) for c in s.calls(Phase.PREFILL)] == [16, 16, 8]
    assert [c.starts for c in s.calls(Phase.PREFILL)] == [(0,), (16,), (32,)]


def test_a_long_prompt_is_prefilled_in_chunks_while_the_running_stream_gets_a_token_every_step(make):
    s = make(slots=2, prefill_chunk=4, prefill_budget=0)
    short = s.engine.submit(prompt(1), greedy(40))
    s.engine.step()
    long = s.engine.submit(prompt(30, 3), greedy(5))
    before, steps = short.generated, 0
    while long.status is not Status.DECODING:
        s.engine.step()
        steps += 1
    assert steps == -(-30 // 4)
    assert short.generated == before + steps


def test_requests_arriving_together_share_one_prefill_call(make):
    s = make(slots=4, idle_prefill_chunk=64)
    ids = prompt(9)
    reqs = [s.engine.submit(ids, greedy(5)) for _ in range(3)]
    s.engine.run_until_done(reqs)
    (call,) = s.calls(Phase.PREFILL)
    assert call.slots == (0, 1, 2) and len(call.ids[0]) == 9
    assert [r.tokens for r in reqs] == [s.reference(ids, 5)] * 3


def test_prompts_of_other_lengths_do_not_share_a_call(make):
    s = make(slots=3, idle_prefill_chunk=64)
    reqs = [s.engine.submit(prompt(n), greedy(2)) for n in (5, 5, 6)]
    s.engine.run_until_done(reqs)
    assert [c.slots for c in s.calls(Phase.PREFILL)] == [(0, 1), (2,)]


def test_a_shared_call_stays_within_the_chunk_budget(make):
    s = make(slots=4, idle_prefill_chunk=20)
    reqs = [s.engine.submit(prompt(10), greedy(1)) for _ in range(4)]
    s.engine.run_until_done(reqs)
    assert [c.slots for c in s.calls(Phase.PREFILL)] == [(0, 1), (2, 3)]


def test_chunk_size_without_measurements_is_the_configured_one(make):
    s = make(prefill_chunk=48)
    assert s.engine.scheduler.chunk_tokens(prefilling=1, decoding=4) == 48


def test_chunk_budget_grows_with_the_prompts_waiting_per_running_stream(make):
    sched = make(slots=1).engine.scheduler
    for tokens in (1, 8, 64):
        sched.prefill_cost.add(tokens, 10.0 + 1.0 * tokens)
    sched.decode_ms.add(16.0)
    assert sched.chunk_tokens(prefilling=1, decoding=4) == 6  # a chunk costs about one step
    assert sched.chunk_tokens(prefilling=3, decoding=1) == 38  # three prompts: three steps' worth
    assert sched.chunk_tokens(prefilling=50, decoding=1) == sched.config.prefill_chunk


def test_the_cost_fit_learns_the_runner_on_the_engines_clock_and_sizes_chunks_by_it(make):
    """Prefill costs 4 + 0.5 ms a token and a decode step 8 + 0.5 ms a row: a chunk while two
    streams decode is the most tokens costing one decode step, (9 - 4) / 0.5 = 10 (the step's
    fading mean still holds some cheaper one-row steps: 9 or 10)."""
    cost = FakeCost(prefill_fixed=4.0, prefill_per_token=0.5, decode_fixed=8.0, decode_per_row=0.5)
    s = make(slots=3, cost=cost, idle_prefill_chunk=64, prefill_chunk=64)
    a = s.engine.submit(prompt(3), greedy(60))
    b = s.engine.submit(prompt(5, 1), greedy(60))
    s.engine.run_until_done([s.engine.submit(prompt(7, 3), greedy(1))])  # three sizes: a line
    for _ in range(20):
        s.engine.step()
    step_ms = s.engine.scheduler.decode_ms.value
    assert step_ms == pytest.approx(9.0, abs=0.2)  # 2 rows, a fading mean
    c = s.engine.submit(prompt(40, 2), greedy(3))
    while c.status is not Status.DECODING:
        s.engine.step()
    chunks = [len(x.ids[0]) for x in s.calls(Phase.PREFILL)[3:]]
    expected = int((step_ms - 4.0) / 0.5 + 1e-6)
    assert expected in (9, 10) and chunks[:4] == [expected] * 4 and sum(chunks) == 40
    s.engine.run_until_done([a, b, c])
    assert c.tokens == s.reference(c.prompt_ids, 3)


def test_prompts_arriving_together_are_priced_at_the_step_of_the_batch_decoding_now(make):
    """32 users arrive at once on a runner that mixes (a prompt token and a decode row cost
    1 ms each, a call 8 ms more). The idle prefill takes 16; the other 16 ride in the decode
    calls, which decode more rows each step. A chunk is half a step of the rows decoding
    then (a mixed call's decode part: the call less its prompt tokens at the prefill calls'
    rate; it fades in over a few calls), not half the one-row step measured before they
    came: 4 tokens a step, 64 steps. (The pricing alone: a burst's short prompts would go in
    whole, `waiting_served_ratio`.)"""
    cost = FakeCost(prefill_fixed=4.0, prefill_per_token=1.0, decode_fixed=8.0, decode_per_row=1.0)
    s = mixed_slots(
        make,
        slots=32,
        max_len=96,
        cost=cost,
        prefill_chunk=64,
        idle_prefill_chunk=256,
        waiting_served_ratio=0,
    )
    s.engine.run_until_done([s.engine.submit(prompt(16, 90), greedy(20))])  # one-row steps: 9 ms
    s.engine.run_until_done([s.engine.submit(prompt(5, 91), greedy(2))])  # a second prefill size
    users = [s.engine.submit(prompt(16, 100 + i), greedy(48)) for i in range(32)]
    s.engine.step()
    assert [len(c.slots) for c in s.calls(Phase.PREFILL)[-1:]] == [16]
    steps = 0
    while any(u.generated == 0 for u in users):
        s.engine.step()
        steps += 1
    chunks = [len(c.ids[-1]) for c in s.calls(Phase.MIXED)]
    assert chunks[0] == int(0.5 * 9.0)  # priced at the step measured before they came
    assert max(chunks) == 16 and steps <= 36  # at that price throughout: 4 a step, 64 steps
    s.engine.run_until_done(users)
    assert all(u.tokens == s.reference(u.prompt_ids, 48) for u in users)


def _burst(make, **kw):
    """32 users at once on a slot runner that mixes, after two requests that measured the
    costs (a prompt token and a decode row 1 ms each): the idle prefill takes 16 of them."""
    cost = FakeCost(prefill_fixed=4.0, prefill_per_token=1.0, decode_fixed=8.0, decode_per_row=1.0)
    s = mixed_slots(make, slots=32, max_len=96, cost=cost, prefill_chunk=64, idle_prefill_chunk=256, **kw)
    s.engine.run_until_done([s.engine.submit(prompt(16, 90), greedy(20))])
    s.engine.run_until_done([s.engine.submit(prompt(5, 91), greedy(2))])
    users = [s.engine.submit(prompt(16, 100 + i), greedy(48)) for i in range(32)]
    s.engine.step()
    assert len(s.calls(Phase.PREFILL)[-1].slots) == 16
    return s, users


def test_a_burst_of_short_prompts_goes_in_whole_beside_the_streams_decoding(make):
    """The 16 users the idle prefill left (16 waiting per 16 decoding: past the 0.5 of
    `waiting_served_ratio`) go in whole in the next call, beside the 16 decode rows, instead
    of 4 tokens a step: every user has its first token after two steps, and the same tokens."""
    s, users = _burst(make)
    s.engine.step()
    (call,) = s.calls(Phase.MIXED)
    assert [len(row) for row in call.ids] == [1] * 16 + [16] * 16
    assert all(u.generated >= 1 for u in users)
    s.engine.run_until_done(users)
    assert all(u.tokens == s.reference(u.prompt_ids, 48) for u in users)


def test_below_the_ratio_a_burst_goes_in_at_the_running_streams_share(make):
    """With `waiting_served_ratio` 2, 16 waiting per 16 decoding is no burst: a chunk of
    half the step, as before."""
    s, users = _burst(make, waiting_served_ratio=2)
    s.engine.step()
    assert sum(map(len, s.calls(Phase.MIXED)[-1].ids)) == 16 + int(0.5 * 9.0)


def test_a_burst_goes_on_until_its_prompts_are_in_then_a_single_one_goes_at_the_share(make):
    """The idle prefill takes 8 of 32 users (128 tokens); the rest go in 8 a call beside the
    rows decoding, though after two such calls 8 waiting per 24 decoding is below the 0.5
    ratio: a burst, once begun, goes on while two or more of its prompts wait. Once they are
    in, a prompt arriving alone is no burst: it goes in at the share."""
    cost = FakeCost(prefill_fixed=4.0, prefill_per_token=1.0, decode_fixed=8.0, decode_per_row=1.0)
    s = mixed_slots(make, slots=33, max_len=128, cost=cost, prefill_chunk=64, idle_prefill_chunk=128)
    for n in (16, 5):  # the costs measured: prefill sizes and one-row steps
        s.engine.run_until_done([s.engine.submit(prompt(n, 90 + n), greedy(20))])
    users = [s.engine.submit(prompt(16, 100 + i), greedy(40)) for i in range(32)]
    for _ in range(4):
        s.engine.step()
    assert all(u.generated >= 1 for u in users)
    prompt_rows = [[len(row) for row in c.ids if len(row) > 1] for c in s.calls(Phase.MIXED)]
    assert prompt_rows == [[16] * 8] * 3
    late = s.engine.submit(prompt(16, 200), greedy(2))
    s.engine.step()
    assert not s.engine.scheduler.bursting and len(s.calls(Phase.MIXED)[-1].ids[-1]) < 16
    s.engine.run_until_done([*users, late])
    assert all(u.tokens == s.reference(u.prompt_ids, 40) for u in users)


def test_a_long_prompt_or_a_single_one_goes_in_at_the_share_whatever_waits(make):
    """One stream decodes. A 40-token prompt alone is no burst (one prompt); two 200-token
    prompts are long (past `prefill_chunk`): each goes in a chunk of half a step at a time,
    not whole (a whole one would stall the stream for its prefill)."""
    cost = FakeCost(prefill_fixed=4.0, prefill_per_token=1.0, decode_fixed=8.0, decode_per_row=1.0)
    s = mixed_slots(make, slots=4, max_len=256, cost=cost, prefill_chunk=64, idle_prefill_chunk=256)
    for n in (5, 9):  # prefill sizes for the fit
        s.engine.run_until_done([s.engine.submit(prompt(n, 91), greedy(2))])
    running = s.engine.submit(prompt(16, 90), greedy(100))
    s.engine.step()
    for _ in range(3):
        s.engine.step()  # one-row steps measured alone: 9 ms
    one = s.engine.submit(prompt(40, 1), greedy(2))
    s.engine.step()
    assert [len(row) for row in s.calls(Phase.MIXED)[-1].ids] == [1, int(0.5 * 9.0)]
    s.engine.run_until_done([one])
    longs = [s.engine.submit(prompt(200, 2 + i), greedy(2)) for i in range(2)]
    s.engine.step()
    decode_row, *chunks = map(len, s.calls(Phase.MIXED)[-1].ids)
    assert decode_row == 1 and chunks and all(c <= 64 for c in chunks)
    s.engine.run_until_done([running, *longs])
    assert [r.tokens for r in longs] == [s.reference(r.prompt_ids, 2) for r in longs]


def test_a_burst_on_a_block_runner_goes_in_as_far_as_its_blocks_allow(make):
    """A block runner (OpenVINO's paged attention): two streams decode when six prompts of
    9 to 14 tokens arrive. Its rows may be of any length, so they go in whole, several in one
    call whatever their lengths (fewest tokens first), as far as the free blocks go beside the
    streams' growth; the rest follow, and every request gets the tokens it gets alone."""
    s = make(
        slots=8, max_len=64, mixed=True, block_size=4, blocks=20, idle_prefill_chunk=64, prefill_chunk=16
    )
    running = [s.engine.submit(prompt(8, i), greedy(24)) for i in range(2)]
    s.engine.step()
    s.engine.step()
    burst = [s.engine.submit(prompt(n, 10 + n), greedy(4)) for n in (12, 9, 14, 10, 13, 11)]
    s.engine.step()
    rows = [len(r) for r in s.calls(Phase.MIXED)[-1].ids]
    assert rows[:2] == [1, 1] and len(rows) >= 4 and rows[2:] == sorted(rows[2:])
    assert rows[2:] == [9, 10, 11, 12, 13, 14][: len(rows) - 2]  # whole prompts, fewest tokens first
    s.engine.run_until_done(running + burst)
    assert all(r.tokens == s.reference(r.prompt_ids, r.params.max_tokens) for r in running + burst)


def _varied_burst(make, padded_prompts=True, **kw):
    """Four streams decode on a slot runner that mixes (ONNX Runtime's mixed graph) when 16
    prompts of 4 to 19 tokens arrive, a burst; steps until each has its first token."""
    cost = FakeCost(prefill_fixed=4.0, prefill_per_token=1.0, decode_fixed=8.0, decode_per_row=1.0)
    s = mixed_slots(
        make, slots=20, max_len=96, cost=cost, prefill_chunk=64, idle_prefill_chunk=128,
        padded_prompts=padded_prompts, **kw,
    )  # fmt: skip
    running = [s.engine.submit(prompt(6, i), greedy(40)) for i in range(4)]
    s.engine.step()
    lengths = np.random.default_rng(3).permutation(np.arange(4, 20))
    burst = [s.engine.submit(prompt(int(n), 50 + i), greedy(6)) for i, n in enumerate(lengths)]
    steps = 0
    while not all(r.generated for r in burst):
        s.engine.step()
        steps += 1
    return s, running, burst, steps


@pytest.mark.parametrize("layout", ["slots", "slots by use"])
def test_a_burst_of_prompts_of_different_lengths_goes_in_padded_rows(make, layout):
    """The 16 prompts share calls beside the decode rows, each whole in a row padded on the
    right to the call's longest (what the padding writes lands past each row's end, and on
    memory by use is counted: the fake checks both). The padded rows fit the budget and hold
    at most twice their real tokens; every request gets the tokens it gets alone."""
    by_use = {"block_size": 8, "block_tables": False, "blocks": 200} if layout == "slots by use" else {}
    s, running, burst, steps = _varied_burst(make, **by_use)
    assert steps <= 4
    prompt_rows = [[len(row) for row in c.ids[c.decode_rows :]] for c in s.calls(Phase.MIXED)]
    padded = [rows for rows in prompt_rows if len(set(rows)) > 1]
    assert padded
    for prompts in padded:
        assert len(prompts) * max(prompts) <= min(128, PADDING_LIMIT * sum(prompts))
    s.engine.run_until_done(running + burst)
    assert all(r.tokens == s.reference(r.prompt_ids, r.params.max_tokens) for r in running + burst)


def test_without_padded_rows_prompts_of_different_lengths_go_in_one_a_step(make):
    """The runner that cannot pad (a GPU's, or the calls of one phase each) gets the same
    burst one prompt a call: 16 steps before the last has its first token."""
    s, running, burst, steps = _varied_burst(make, padded_prompts=False)
    assert steps >= 16
    s.engine.run_until_done(running + burst)
    assert all(r.tokens == s.reference(r.prompt_ids, r.params.max_tokens) for r in running + burst)


def test_prompts_past_position_0_or_asking_prompt_logprobs_are_not_padded(make):
    """A prompt that asks for every position's logits goes in a call of its own, and one that
    starts from a prefix another slot holds (past position 0) at its own length: neither is a
    padded row."""
    cost = FakeCost(prefill_fixed=4.0, prefill_per_token=1.0, decode_fixed=8.0, decode_per_row=1.0)
    s = mixed_slots(
        make, slots=8, max_len=64, cost=cost, idle_prefill_chunk=128, padded_prompts=True, prefix_caching=True
    )
    shared = prompt(20, 7)  # MIN_SHARED_PREFIX 16 tokens or more
    running = [s.engine.submit(p, greedy(30)) for p in (shared, prompt(5, 1), prompt(5, 2))]
    while not all(r.generated for r in running):
        s.engine.step()
    asking = s.engine.submit(prompt(9, 20), greedy(3, prompt_logprobs=1))
    reusing = s.engine.submit(shared + prompt(3, 21), greedy(3))
    others = [s.engine.submit(prompt(n, 30 + n), greedy(3)) for n in (7, 11, 4)]
    everyone = running + [asking, reusing] + others
    seen, padded = len(s.runner.calls), 0
    while s.engine.has_work():
        s.engine.step()
        for call in s.runner.calls[seen:]:  # checked while the two hold their slots
            rows = list(zip(call.slots, call.starts, call.ids))[call.decode_rows :]
            if len({len(ids) for _, _, ids in rows}) > 1:
                padded += 1
                assert {slot for slot, _, _ in rows}.isdisjoint({asking.slot, reusing.slot})
                assert all(start == 0 for _, start, _ in rows)
        seen = len(s.runner.calls)
    assert padded  # the three others went in padded rows
    assert s.runner.copies  # the reusing prompt started from the running request's prefix
    assert all(r.tokens == s.reference(r.prompt_ids, r.params.max_tokens) for r in everyone)


def test_a_zero_budget_means_fixed_chunks(make):
    s = make(slots=2, prefill_chunk=5, prefill_budget=0)
    s.engine.submit(prompt(2), greedy(30))
    s.engine.step()
    s.engine.submit(prompt(23, 1), greedy(1))
    for _ in range(6):
        s.engine.step()
    assert [len(c.ids[0]) for c in s.calls(Phase.PREFILL)[1:]] == [5, 5, 5, 5, 3]


def test_cost_fit_sizes_a_chunk_to_the_budget_and_keeps_it_worth_a_weight_pass():
    fit = CostFit()
    assert fit.tokens_within(20.0) is None  # nothing measured yet: the configured size
    for tokens in (1, 4, 16, 64, 512):
        fit.add(tokens, 11.0 + 1.5 * tokens)  # a CPU: a weight pass plus compute per token
    assert fit.tokens_within(17.0) == 4
    assert fit.tokens_within(11.0 + 1.5 * 100) == 100
    assert fit.tokens_within(5.0) == 4  # below the fixed pass: chunks stay big enough to be worth it
    flat = CostFit()
    for tokens in (1, 16, 512):
        flat.add(tokens, 1.6)  # a GPU at this size: cost does not grow with tokens
    assert flat.tokens_within(1.6) is None
    gpu = CostFit()
    for tokens in (1, 16, 512):
        gpu.add(tokens, 1.8 + 0.0005 * tokens)
    assert gpu.tokens_within(1.6) >= 512


# -- admission, queue limits, slots ---------------------------------------------------------


def test_requests_beyond_the_free_slots_wait_and_are_admitted_in_arrival_order(make):
    s = make(slots=2)
    reqs = [s.engine.submit(prompt(3, i), greedy(2 + i)) for i in range(5)]
    s.engine.step()
    assert [r.slot for r in reqs[:2]] == [0, 1] and s.engine.waiting == 3
    assert all(r.status is Status.WAITING and r.slot == -1 for r in reqs[2:])
    admitted = []
    while s.engine.has_work():
        s.engine.step()
        admitted += [r for r in reqs if r.status is not Status.WAITING and r not in admitted]
    assert admitted == reqs  # first come, first admitted
    assert [r.tokens for r in reqs] == [s.reference(r.prompt_ids, 2 + i) for i, r in enumerate(reqs)]


def test_a_full_queue_refuses_new_requests_without_disturbing_the_running(make):
    s = make(slots=1, max_queue=1)
    first = s.engine.submit(prompt(3), greedy(6))
    s.engine.step()
    queued = s.engine.submit(prompt(3), greedy(6))
    with pytest.raises(QueueFullError, match=r"all 1 KV slots in use and 1 requests waiting \(max_queue 1\)"):
        s.engine.submit(prompt(3), greedy(6))
    s.engine.run_until_done([first, queued])
    assert first.tokens == queued.tokens == s.reference(prompt(3), 6)


def test_max_queue_zero_refuses_as_soon_as_every_slot_is_taken(make):
    s = make(slots=2, max_queue=0)
    s.engine.submit(prompt(3), greedy(4))
    s.engine.submit(prompt(3), greedy(4))
    with pytest.raises(QueueFullError):
        s.engine.submit(prompt(3), greedy(4))


def test_the_lowest_free_slot_is_taken_first_so_decode_rows_stay_packed(make):
    s = make(slots=4)
    reqs = [s.engine.submit(prompt(2, i), greedy(30)) for i in range(4)]
    s.engine.step()
    s.engine.cancel(reqs[1])
    s.engine.cancel(reqs[2])
    s.engine.step()
    late = s.engine.submit(prompt(2, 9), greedy(3))
    s.engine.step()
    assert late.slot == 1


def test_rows_left_above_free_slots_move_down_and_the_decode_call_shrinks(make):
    """Four streams; the two in slots 0 and 1 end together and nothing arrives: once those
    slots have been free COMPACT_AFTER_STEPS steps, the streams in slots 3 and 2 move down
    (their caches copied) and the decode call covers two rows instead of four, with the
    same tokens."""
    from engine.scheduler import COMPACT_AFTER_STEPS

    s = make(slots=4, prefix_caching=False)
    lengths = (3, 3, 40, 40)
    reqs = [s.engine.submit(prompt(4, i), greedy(n)) for i, n in enumerate(lengths)]
    s.engine.run_until_done(reqs[:2])
    ended = len(s.runner.calls)
    s.engine.run_until_done(reqs)
    decodes = [c for c in s.runner.calls[ended:] if c.phase is Phase.DECODE]
    rows = [len(c.slots) for c in decodes]
    waited = COMPACT_AFTER_STEPS - 1
    assert rows == [4] * waited + [2] * (len(rows) - waited)
    assert all(c.real_rows == 2 for c in decodes)
    first, second = s.runner.copies
    assert (first.src, first.dst, second.src, second.dst) == (3, 0, 2, 1)
    assert first.positions == second.positions == 4 + 2 + waited  # prompt, tokens before, waits
    assert s.engine.stats.rows_moved == 2 and (reqs[2].slot, reqs[3].slot) == (1, 0)
    assert [r.tokens for r in reqs] == [s.reference(r.prompt_ids, n) for r, n in zip(reqs, lengths)]
    assert s.engine.free_slots == 4 and not s.engine.running
    off = make(slots=4, prefix_caching=False, compact_rows=False)  # --no-compact-rows
    reqs = [off.engine.submit(prompt(4, i), greedy(n)) for i, n in enumerate(lengths)]
    off.engine.run_until_done(reqs)
    assert off.runner.copies == [] and {len(c.slots) for c in off.calls(Phase.DECODE)} == {4}
    assert [r.tokens for r in reqs] == [off.reference(r.prompt_ids, n) for r, n in zip(reqs, lengths)]


def test_a_failed_row_move_ends_that_request_only(make):
    from engine.scheduler import COMPACT_AFTER_STEPS

    s = make(slots=3, prefix_caching=False)
    a = s.engine.submit(prompt(4), greedy(2))
    b = s.engine.submit(prompt(4, 1), greedy(30))
    c = s.engine.submit(prompt(4, 2), greedy(30))
    s.engine.run_until_done([a])
    for _ in range(COMPACT_AFTER_STEPS - 1):
        s.engine.step()
    s.runner.fail_next = "device lost"  # the next runner operation: the move of c into slot 0
    s.engine.run_until_done([b, c])
    assert c.finish_reason is FinishReason.ERROR and "copying KV cache between slots" in c.error
    # b serves on, and later moves into the slot c's failure freed
    assert b.tokens == s.reference(b.prompt_ids, 30)
    assert [(m.src, m.dst) for m in s.runner.copies] == [(1, 0)]
    assert s.engine.free_slots == 3 and not s.engine.running


def test_a_row_about_to_end_or_waiting_arrivals_leave_the_slots_as_they_are(make):
    from engine.scheduler import COMPACT_AFTER_STEPS

    s = make(slots=3, prefix_caching=False)
    a = s.engine.submit(prompt(4), greedy(2))
    b = s.engine.submit(prompt(4, 1), greedy(COMPACT_AFTER_STEPS + 3))  # ends as it could move
    s.engine.run_until_done([a, b])
    assert s.runner.copies == [] and b.tokens == s.reference(b.prompt_ids, len(b.tokens))
    # a freed slot that an arrival takes at once is filled, not compacted into
    long = [s.engine.submit(prompt(4, i), greedy(30)) for i in range(3)]
    s.engine.step()
    s.engine.cancel(long[0])
    for _ in range(2):
        s.engine.step()
    late = s.engine.submit(prompt(4, 7), greedy(30))
    s.engine.run_until_done([late, *long[1:]])
    assert late.slot == 0 and s.runner.copies == [] and s.engine.stats.rows_moved == 0


def test_slot_accounting_under_churn_of_cancels_timeouts_and_completions(make):
    s = make(slots=3, max_queue=100, max_request_seconds=5.0)
    rng = np.random.default_rng(0)
    live = []
    for i in range(300):
        if rng.random() < 0.5:
            live.append(s.engine.submit(prompt(int(rng.integers(1, 20)), i), greedy(int(rng.integers(1, 8)))))
        if live and rng.random() < 0.2:
            s.engine.cancel(live[int(rng.integers(len(live)))])
        if rng.random() < 0.05:
            s.clock.advance(6.0)  # everything in flight times out
        s.engine.step()
        slots = [r.slot for r in s.engine.running]
        assert len(slots) == len(set(slots)) and s.engine.free_slots == 3 - len(slots)
    while s.engine.has_work():
        s.engine.step()
    assert s.engine.free_slots == 3 and all(r.status is Status.FINISHED for r in live)
    assert {r.finish_reason for r in live} >= {
        FinishReason.LENGTH,
        FinishReason.CANCELLED,
        FinishReason.TIMEOUT,
    }


def test_releasing_a_slot_twice_is_an_error():
    from engine.kv import SlotPool

    pool = SlotPool(2)
    slot = pool.acquire()
    pool.release(slot)
    with pytest.raises(ValueError, match="not held"):
        pool.release(slot)


# -- cancel and timeout ---------------------------------------------------------------------


def test_cancel_frees_the_slot_at_the_next_step_and_the_slot_serves_the_next_request_cleanly(make):
    s = make(slots=1)
    a = s.engine.submit(prompt(6), greedy(40))
    s.engine.step()
    s.engine.step()
    s.engine.cancel(a)
    s.engine.step()
    assert a.finish_reason is FinishReason.CANCELLED and s.engine.free_slots == 1 and s.sink.finished == [a]
    b = s.engine.submit(prompt(3, 1), greedy(10))
    s.engine.run_until_done([b])
    assert b.slot == 0 and b.tokens == s.reference(prompt(3, 1), 10)


def test_a_cancelled_waiting_request_never_takes_a_slot(make):
    s = make(slots=1)
    s.engine.submit(prompt(3), greedy(10))
    s.engine.step()
    waiting = s.engine.submit(prompt(3), greedy(10))
    s.engine.cancel(waiting)
    s.engine.step()
    assert waiting.finish_reason is FinishReason.CANCELLED and waiting.slot == -1 and s.engine.waiting == 0


def test_running_and_waiting_requests_time_out_on_the_engines_clock(make):
    s = make(slots=1, max_request_seconds=5.0)
    running = s.engine.submit(prompt(3), greedy(50))
    s.engine.step()
    waiting = s.engine.submit(prompt(3), greedy(3))
    s.clock.advance(6.0)
    s.engine.step()
    for r in (running, waiting):
        assert r.finish_reason is FinishReason.TIMEOUT and "max_request_seconds (5 s)" in r.error
    assert waiting.slot == -1 and s.engine.free_slots == 1 and not s.engine.has_work()


# -- fairness -------------------------------------------------------------------------------


def test_running_streams_are_not_stalled_by_a_long_prompt(make):
    """On the fake clock, a running stream's gap between tokens while a 60-token prompt goes
    in stays within a decode step plus one budget-sized chunk."""
    cost = FakeCost(prefill_fixed=4.0, prefill_per_token=0.5, decode_fixed=8.0, decode_per_row=0.5)
    s = make(slots=2, cost=cost, max_len=128)
    stream = s.engine.submit(prompt(3), greedy(100))
    for n in (5, 7):  # three prefill sizes for the cost fit
        s.engine.submit(prompt(n, n), greedy(1))
    for _ in range(6):
        s.engine.step()
    times = []
    long = s.engine.submit(prompt(60, 2), greedy(2))
    while long.status is not Status.FINISHED:
        before = stream.generated
        s.engine.step()
        if stream.generated > before:
            times.append(s.clock())
    gaps = np.diff(times) * 1e3
    # a step is a decode (8.5-9 ms) and a chunk within one decode step's cost
    assert len(gaps) >= 6 and gaps.max() <= 2 * 9.0 + 1e-6


def test_the_oldest_prompt_is_prefilled_first(make):
    s = make(slots=3, idle_prefill_chunk=4, prefill_chunk=4, prefill_budget=0)
    a = s.engine.submit(prompt(8), greedy(1))
    b = s.engine.submit(prompt(6, 1), greedy(1))
    s.engine.run_until_done([a, b])
    order = [c.slots for c in s.calls(Phase.PREFILL)]
    assert order == [(0,), (0,), (1,), (1,)]


# -- one call a step where the runner takes mixed rows ----------------------------------------


def test_a_mixed_runner_gets_the_decode_rows_and_the_prompt_chunk_in_one_call(make):
    s = make(slots=3, mixed=True, prefill_chunk=4, prefill_budget=0)
    a = s.engine.submit(prompt(3), greedy(30))
    b = s.engine.submit(prompt(2, 1), greedy(30))
    s.engine.run_until_done([s.engine.submit(prompt(1, 2), greedy(1))])  # frees slot 2
    while b.status is not Status.DECODING:
        s.engine.step()
    long = s.engine.submit(prompt(10, 3), greedy(3))
    plan = s.engine.scheduler.schedule()
    (call,) = plan.forwards  # one call: both streams' next tokens and the chunk
    assert call.phase is Phase.MIXED and call.slots == (0, 1, 2)
    assert call.lens.tolist() == [1, 1, 4] and call.starts.tolist() == [a.filled, b.filled, 0]
    assert call.row(2).tolist() == long.prompt_ids[:4] and call.requests == (a, b, long)
    for forward in plan.forwards:
        s.engine.scheduler.update(forward, s.engine._execute(forward))
    s.engine.run_until_done([a, b, long])
    for r, n in ((a, 30), (b, 30), (long, 3)):
        assert r.tokens == s.reference(r.prompt_ids, n)
    assert all(len(c.slots) <= 3 for c in s.runner.calls)


def test_a_mixed_call_chunk_costs_what_the_budget_allows_on_top_of_the_decode_step(make):
    """Decode 8.5 ms a step for one row, prompt tokens 0.5 ms each on top: with a budget of
    one decode step, a chunk of 17 tokens rides on each step once the first mixed call has
    shown what a prompt token costs, and the running stream's gap stays at two steps."""
    cost = FakeCost(prefill_fixed=4.0, prefill_per_token=0.5, decode_fixed=8.0, decode_per_row=0.5)
    s = make(slots=2, cost=cost, mixed=True, max_len=128, prefill_chunk=64, mixed_prefill_budget=1.0)
    stream = s.engine.submit(prompt(3), greedy(100))
    for _ in range(3):
        s.engine.step()
    long = s.engine.submit(prompt(100, 1), greedy(2))
    times = []
    while long.status is not Status.DECODING:
        before = stream.generated
        s.engine.step()
        if stream.generated > before:
            times.append(s.clock())
    # nothing fitted at first: the configured chunk; then 17; then the prompt's rest
    assert [len(c.ids[-1]) for c in s.calls(Phase.MIXED)] == [64, 17, 17, 2]
    assert not s.calls(Phase.PREFILL)[1:]  # after the first stream's own prompt, no call of its own
    assert list(np.diff(times) * 1e3) == pytest.approx([17.0, 17.0, 8.5 + 0.5 * 2])
    s.engine.run_until_done([stream, long])
    assert long.tokens == s.reference(long.prompt_ids, 2) and stream.tokens == s.reference(prompt(3), 100)


def test_a_mixed_runner_still_prefills_alone_when_nothing_decodes(make):
    s = make(slots=2, mixed=True, idle_prefill_chunk=8)
    req = s.engine.submit(prompt(12), greedy(3))
    s.engine.run_until_done([req])
    assert [c.phase for c in s.runner.calls][:2] == [Phase.PREFILL, Phase.PREFILL]
    assert req.tokens == s.reference(prompt(12), 3)


def mixed_slots(make, **kw):
    """A slot runner that takes a step's decode call and prefill call as one (ONNX Runtime's
    mixed graph on the CPU)."""
    return make(mixed=True, mixed_slots=True, **kw)


def test_a_slot_runner_that_mixes_gets_its_decode_call_then_its_prefill_call_in_one(make):
    """Slot 1's request is still prefilling while slot 2's decodes: the decode part covers
    slots 0..2 with a padding row at slot 1, written past the chunk, and the chunk part
    is the prompt's next rows; every request still gets its reference tokens."""
    s = mixed_slots(make, slots=4, prefill_chunk=4, prefill_budget=0, mixed_prefill_budget=0)
    a = s.engine.submit(prompt(3), greedy(30))
    b = s.engine.submit(prompt(3, 4), greedy(2))
    c = s.engine.submit(prompt(2, 2), greedy(30))
    s.engine.run_until_done([b])  # slot 1 free, below a decoding row
    long = s.engine.submit(prompt(13, 1), greedy(3))
    s.engine.step()
    assert long.slot == 1 and long.status is Status.PREFILLING and long.filled == 4
    plan = s.engine.scheduler.schedule()
    (call,) = plan.forwards
    assert call.phase is Phase.MIXED and call.decode_rows == 3 and call.graph == MAIN
    assert call.slots == (0, 1, 2, 1) and call.lens.tolist() == [1, 1, 1, 4]
    assert call.requests == (a, None, c, long)
    chunk_at = long.filled
    assert call.starts.tolist() == [a.filled, chunk_at + 4, c.filled, chunk_at]
    assert call.row(3).tolist() == long.prompt_ids[chunk_at : chunk_at + 4]
    for forward in plan.forwards:
        s.engine.scheduler.update(forward, s.engine._execute(forward))
    s.engine.run_until_done([a, long, c])
    for r, n in ((a, 30), (b, 2), (long, 3), (c, 30)):
        assert r.tokens == s.reference(r.prompt_ids, n)
    mixed = s.calls(Phase.MIXED)
    assert mixed and not [c for c in s.calls(Phase.PREFILL) if c.at > mixed[0].at]  # no prefill call of its own


def test_prompts_that_arrive_together_ride_in_the_decode_call_as_one_rectangle(make):
    s = mixed_slots(make, slots=4, prefill_chunk=12, prefill_budget=0, mixed_prefill_budget=0)
    a = s.engine.submit(prompt(3), greedy(20))
    s.engine.step()
    pair = [s.engine.submit(prompt(6, i), greedy(4)) for i in (1, 2)]
    plan = s.engine.scheduler.schedule()
    (call,) = plan.forwards
    assert call.decode_rows == 1 and call.slots == (0, 1, 2) and call.lens.tolist() == [1, 6, 6]
    for forward in plan.forwards:
        s.engine.scheduler.update(forward, s.engine._execute(forward))
    s.engine.run_until_done([a, *pair])
    assert [r.tokens for r in (a, *pair)] == [s.reference(r.prompt_ids, r.params.max_tokens) for r in (a, *pair)]


def test_a_prompt_that_wants_its_logprobs_gets_a_prefill_call_of_its_own_beside_the_decode_call(make):
    s = mixed_slots(make, slots=3, prefill_chunk=8, prefill_budget=0, mixed_prefill_budget=0)
    a = s.engine.submit(prompt(3), greedy(20))
    s.engine.step()
    scored = s.engine.submit(prompt(5, 1), greedy(2, prompt_logprobs=0))
    plan = s.engine.scheduler.schedule()
    assert [f.phase for f in plan.forwards] == [Phase.PREFILL, Phase.DECODE]
    assert plan.forwards[0].all_logits == (0,)
    for forward in plan.forwards:
        s.engine.scheduler.update(forward, s.engine._execute(forward))
    s.engine.run_until_done([a, scored])
    assert scored.tokens == s.reference(scored.prompt_ids, 2) and len(scored.prompt_logprobs) == 5


def test_by_default_a_chunk_in_the_decode_call_widens_the_running_streams_gaps_by_at_most_half(make):
    """The default `mixed_prefill_budget`: a 200-token prompt rides in the decode calls of
    four running streams, their gaps at most 1.5x a step without it, and it still goes in
    within a bounded number of steps."""
    cost = FakeCost(prefill_fixed=6.0, prefill_per_token=0.4, decode_fixed=8.0, decode_per_row=0.5)
    s = mixed_slots(make, slots=6, max_len=256, cost=cost, prefill_chunk=64)
    streams = [s.engine.submit(prompt(3, i), greedy(200)) for i in range(4)]
    for _ in range(5):
        s.engine.step()
    step_ms = 8.0 + 0.5 * 4
    long = s.engine.submit(prompt(200, 9), greedy(2))
    stamps = []
    while long.status is not Status.DECODING:
        s.engine.step()
        stamps.append(s.clock())
    gaps = np.diff(stamps) * 1e3
    first_fitted = 2  # the first mixed call takes the configured chunk: nothing measured yet
    assert max(gaps[first_fitted:]) <= 1.5 * step_ms + 1e-9
    assert len(stamps) < 50  # about 12 tokens a step on top of 10 ms
    s.engine.run_until_done([*streams, long])
    assert long.tokens == s.reference(long.prompt_ids, 2)
    assert all(r.tokens == s.reference(r.prompt_ids, 200) for r in streams)


def four_streams_and_a_measured_mixed_call(make, tokens: int):
    """Four streams decoding (a 10 ms step) on a slot runner that mixes, after one prompt
    rode in their decode calls (what a prompt token costs is measured)."""
    cost = FakeCost(prefill_fixed=6.0, prefill_per_token=0.4, decode_fixed=8.0, decode_per_row=0.5)
    s = mixed_slots(make, slots=8, max_len=256, cost=cost, prefill_chunk=64)
    streams = [s.engine.submit(prompt(3, i), greedy(tokens)) for i in range(4)]
    for _ in range(3):
        s.engine.step()
    s.engine.run_until_done([s.engine.submit(prompt(30, 7), greedy(1))])
    return s, streams


def test_a_short_prompt_does_not_wait_behind_a_long_one_going_in_a_little_each_step(make):
    s, streams = four_streams_and_a_measured_mixed_call(make, 150)
    long = s.engine.submit(prompt(200, 9), greedy(2))
    for _ in range(5):
        s.engine.step()
    assert long.status is Status.PREFILLING
    short = s.engine.submit(prompt(12, 8), greedy(2))
    steps = 0
    while short.status is not Status.DECODING:
        s.engine.step()
        steps += 1
    # the prompt with fewer tokens left goes first: its chunks, then the long one's again
    assert steps <= 3 and long.status is Status.PREFILLING
    s.engine.run_until_done([*streams, long, short])
    assert long.tokens == s.reference(long.prompt_ids, 2) and short.tokens == s.reference(short.prompt_ids, 2)


def test_slots_by_use_with_mixed_calls_preempt_and_recompute_exactly(make):
    s = make(
        slots=8, max_len=64, block_size=4, blocks=20, block_tables=False, prefix_caching=False,
        prefill_chunk=8, mixed=True, mixed_slots=True,
    )
    reqs = [s.engine.submit(prompt(4 + i, i), greedy(20)) for i in range(8)]
    for _ in range(600):
        if all(r.status is Status.FINISHED for r in reqs):
            break
        s.engine.step()
    assert s.engine.stats.preemptions >= 1 and s.calls(Phase.MIXED)
    assert [r.tokens for r in reqs] == [s.reference(r.prompt_ids, 20) for r in reqs]


# -- KV blocks taken by use (a block runner) ------------------------------------------------


def run_counting_blocks(s, reqs, steps=600):
    """Step until `reqs` end, checking after every step that no block is held twice and
    that the held and free blocks make the whole pool."""
    pool = s.engine.scheduler.kv_blocks
    for _ in range(steps):
        if all(r.status is Status.FINISHED for r in reqs):
            return
        s.engine.step()
        held = [b for r in s.engine.running for b in r.blocks]
        assert len(held) == len(set(held)) and len(held) + pool.free == pool.total
    raise AssertionError(f"requests still running after {steps} steps")


def test_a_request_takes_blocks_as_it_grows_and_returns_them_when_it_ends(make):
    s = make(slots=2, mixed=True, block_size=4, blocks=16, idle_prefill_chunk=64)
    pool = s.engine.scheduler.kv_blocks
    req = s.engine.submit(prompt(6), greedy(7))
    s.engine.step()  # the prompt: positions 0..5, two blocks
    assert len(req.blocks) == 2 and pool.free == 14
    held = []
    while req.status is not Status.FINISHED:
        s.engine.step()
        held.append(len(req.blocks))
    # six decode steps write positions 6..11 (a third block from position 8); the last one
    # makes the seventh token and the request ends, its blocks returned
    assert held == [2, 2, 3, 3, 3, 0]
    assert pool.free == 16 and req.tokens == s.reference(prompt(6), 7)


def test_concurrency_is_bounded_by_blocks_in_use_not_slots_times_the_window(make):
    """A pool of two 64-position windows serves eight short requests at once."""
    s = make(slots=8, max_len=64, mixed=True, block_size=4, blocks=32)
    reqs = [s.engine.submit(prompt(5, i), greedy(6)) for i in range(8)]
    s.engine.step()
    for _ in range(3):
        s.engine.step()
    assert len(s.engine.running) == 8 and s.engine.stats.preemptions == 0
    s.engine.run_until_done(reqs)
    assert [r.tokens for r in reqs] == [s.reference(r.prompt_ids, 6) for r in reqs]
    assert s.engine.scheduler.kv_blocks.free == 32


def test_when_blocks_run_out_the_newest_request_is_preempted_and_recomputed_exactly(make):
    """Three streams growing past what the pool holds: the newest gives its blocks back and
    starts again from a prefill of all it had; every request still gets its reference
    tokens and its text streams on without a repeat."""
    s = make(slots=3, max_len=64, mixed=True, block_size=4, blocks=20, prefill_chunk=8, idle_prefill_chunk=8)
    reqs = [s.engine.submit(prompt(4, i), greedy(24)) for i in range(3)]
    run_counting_blocks(s, reqs)
    assert s.engine.stats.preemptions >= 1
    # the preempted one had output: it was written again with its prompt, in chunks of 8
    assert max(len(row) for c in s.runner.calls for row in c.ids) == 8
    assert all(r.finish_reason is FinishReason.LENGTH for r in reqs)
    assert [r.tokens for r in reqs] == [s.reference(r.prompt_ids, 24) for r in reqs]
    for r in reqs:
        assert "".join(s.sink.text[id(r)]) == s.engine.tokenizer.decode(r.tokens)
    assert s.engine.scheduler.kv_blocks.free == 20


def test_a_prompt_waits_for_blocks_instead_of_preempting_a_running_stream(make):
    s = make(slots=2, max_len=64, mixed=True, block_size=4, blocks=16, idle_prefill_chunk=64)
    stream = s.engine.submit(prompt(40), greedy(20))  # 10 blocks for its prompt, growing to 15
    s.engine.step()
    late = s.engine.submit(prompt(30, 1), greedy(2))  # needs 8: waits
    for _ in range(5):
        s.engine.step()
    assert stream.status is Status.DECODING and late.filled == 0 and s.engine.stats.preemptions == 0
    s.engine.run_until_done([stream, late])
    assert stream.tokens == s.reference(prompt(40), 20) and late.tokens == s.reference(prompt(30, 1), 2)


# -- slots committed by use (ONNX Runtime on the CPU) ------------------------------------------


def by_use(make, slots=8, blocks=32, **kw):
    """A slot runner (one-phase calls, a decode call over rows 0..n-1) whose memory is
    counted in blocks of 4 positions, `blocks` of them."""
    return make(slots=slots, max_len=64, block_size=4, blocks=blocks, block_tables=False, **kw)


def test_slots_by_use_take_pages_as_requests_grow_and_give_them_back_at_the_end_of_their_step(make):
    s = by_use(make, prefix_caching=False, idle_prefill_chunk=64)
    pool = s.engine.scheduler.kv_blocks
    reqs = [s.engine.submit(prompt(6, i), greedy(7)) for i in range(3)]
    s.engine.step()  # the three prompts together: positions 0..5, two blocks each
    assert [len(r.blocks) for r in reqs] == [2, 2, 2] and pool.free == 32 - 6
    (prefill,) = s.calls(Phase.PREFILL)
    assert prefill.slots == (0, 1, 2)  # rows are slots, as without blocks
    held = []
    while any(r.status is not Status.FINISHED for r in reqs):
        s.engine.step()
        held.append(len(reqs[0].blocks))
    assert held == [2, 2, 3, 3, 3, 0]
    # the slots' pages went back as the step that ended them did, after its last call: not in
    # the next step's plan, where a request arriving then would wait for them
    assert sorted(s.runner.releases) == [0, 1, 2] and pool.free == 32
    calls = len(s.runner.calls)
    assert not s.engine.step() and len(s.runner.calls) == calls and sorted(s.runner.releases) == [0, 1, 2]
    assert [r.tokens for r in reqs] == [s.reference(r.prompt_ids, 7) for r in reqs]


def test_slots_by_use_serve_more_requests_than_windows_fit_and_preempt_the_newest_exactly(make):
    """Eight rows over 20 blocks of 4 positions (a 64-position window is 16): all eight
    short requests start at once; as they grow past the pool the newest are preempted,
    their slots given back, and recomputed: every request gets its reference tokens."""
    s = by_use(make, blocks=20, prefix_caching=False, prefill_chunk=8)
    reqs = [s.engine.submit(prompt(4, i), greedy(20)) for i in range(8)]
    s.engine.step()
    assert len(s.engine.running) == 8
    run_counting_blocks(s, reqs)
    assert s.engine.stats.preemptions >= 1 and s.runner.releases
    assert [r.tokens for r in reqs] == [s.reference(r.prompt_ids, 20) for r in reqs]
    for r in reqs:
        assert "".join(s.sink.text[id(r)]) == s.engine.tokenizer.decode(r.tokens)


def test_a_moved_row_keeps_its_blocks_and_its_old_slots_pages_go_back_after_the_copy(make):
    """Slots by use: a stream moved down keeps the blocks it holds; the slot it leaves gives
    its pages back at the next step (after the copy has read them); a free slot that keeps
    an ended prompt for reuse is moved into only once it has kept it unread for long."""
    from engine.scheduler import COMPACT_AFTER_STEPS, COMPACT_KEPT_AFTER_STEPS

    s = make(slots=4, max_len=256, block_size=4, blocks=128, block_tables=False, idle_prefill_chunk=64)
    scheduler, pool = s.engine.scheduler, s.engine.scheduler.kv_blocks
    short = s.engine.submit(prompt(20), greedy(2))  # slot 0: its 21 positions kept for reuse
    stream = s.engine.submit(prompt(4, 1), greedy(COMPACT_KEPT_AFTER_STEPS + 20))  # slot 1
    s.engine.run_until_done([short])
    assert list(scheduler.kept_blocks) == [0]
    for _ in range(COMPACT_KEPT_AFTER_STEPS - 2):
        s.engine.step()
    assert stream.slot == 1 and s.runner.copies == []  # the kept prefix is still young
    held = list(stream.blocks)
    for _ in range(3):
        s.engine.step()
    (copy,) = s.runner.copies
    assert (copy.src, copy.dst) == (1, 0) and stream.slot == 0 and stream.blocks[: len(held)] == held
    assert 0 not in scheduler.retained and 0 in s.runner.releases  # the kept pages went first
    s.engine.run_until_done([stream])
    assert 1 in s.runner.releases and s.runner.releases.index(1) > s.runner.releases.index(0)
    s.engine.step()
    assert pool.free + sum(len(b) for b in scheduler.kept_blocks.values()) == pool.total
    assert stream.tokens == s.reference(stream.prompt_ids, len(stream.tokens))
    assert COMPACT_AFTER_STEPS < COMPACT_KEPT_AFTER_STEPS


def test_a_free_slot_keeps_its_pages_for_reuse_until_the_pool_needs_them(make):
    """With prefix caching a free slot keeps what its request wrote, and the blocks that
    holds: a later prompt starting the same way takes the slot and its blocks; when the
    pool runs short, the oldest kept slot gives its blocks back (its pages released) before
    any running request is preempted."""
    s = by_use(make, slots=4, blocks=20, idle_prefill_chunk=64)
    scheduler, pool = s.engine.scheduler, s.engine.scheduler.kv_blocks
    system = prompt(24)
    a = s.engine.submit(system + [5, 6], greedy(4))  # 29 positions written: 8 blocks
    b = s.engine.submit(prompt(20, 5), greedy(8))  # 27: 7 blocks
    s.engine.run_until_done([a, b])
    s.engine.step()
    assert s.runner.releases == [] and list(scheduler.kept_blocks) == [0, 1] and pool.free == 5
    c = s.engine.submit(system + [7], greedy(4))
    s.engine.run_until_done([c])
    assert c.slot == 0 and s.engine.stats.prefix_hits == 24  # a's slot: the prefix is read
    assert list(scheduler.kept_blocks) == [1, 0] and pool.free == 5  # c took a's 8 blocks
    # 60 positions (15 blocks): slot 0's 8 and 7 more, which slot 1 (b's, the oldest) gives back
    d = s.engine.submit(prompt(40, 3), greedy(20))
    s.engine.run_until_done([d])
    assert s.runner.releases == [1] and s.engine.stats.preemptions == 0
    assert 1 not in scheduler.retained and list(scheduler.kept_blocks) == [0]
    assert [r.tokens for r in (a, b, c, d)] == [
        s.reference(r.prompt_ids, len(r.tokens)) for r in (a, b, c, d)
    ]


# -- prefix caching -----------------------------------------------------------------------


def test_a_repeated_prefix_is_read_from_the_cache_not_computed(make):
    cost = FakeCost(prefill_fixed=10.0, prefill_per_token=1.0)
    s = make(slots=2, max_len=640, mixed=True, block_size=32, blocks=40, idle_prefill_chunk=512, cost=cost)
    system = prompt(512)
    first = s.engine.submit(system, greedy(4))
    s.engine.run_until_done([first])
    calls = len(s.runner.calls)
    second = s.engine.submit(list(system), greedy(4))  # the same 512 tokens
    s.engine.run_until_done([second])
    (call,) = [c for c in s.runner.calls[calls:] if c.phase is Phase.PREFILL]
    assert call.starts == (480,) and len(call.ids[0]) == 32  # 15 of its 16 blocks cached
    assert second.tokens == first.tokens == s.reference(system, 4)
    ttft = [r.first_token_at - r.arrived for r in (first, second)]
    assert ttft[1] <= 0.25 * ttft[0]  # 42 ms against 522 on the fake clock
    assert s.engine.stats.prefix_hits == 480 and s.engine.stats.prefix_queries == 1024


def test_a_shared_prefix_with_other_endings_reuses_only_the_common_full_blocks(make):
    s = make(slots=2, max_len=64, mixed=True, block_size=4, blocks=32, idle_prefill_chunk=64)
    head = prompt(10)
    a = s.engine.submit(head + [1, 2, 3], greedy(5))
    s.engine.run_until_done([a])
    calls = len(s.runner.calls)
    b = s.engine.submit(head + [7, 8], greedy(5))  # blocks 0-1 (8 tokens) are a's
    s.engine.run_until_done([b])
    (prefill,) = [c for c in s.runner.calls[calls:] if c.phase is Phase.PREFILL]
    assert prefill.starts == (8,) and prefill.ids == ((*head[8:], 7, 8),)  # only the rest computed
    assert b.tokens == s.reference(head + [7, 8], 5) and a.tokens == s.reference(head + [1, 2, 3], 5)
    assert s.engine.stats.prefix_hits == 8


def test_cached_blocks_are_evicted_least_recently_used_first(make):
    s = make(slots=1, max_len=64, mixed=True, block_size=4, blocks=12, idle_prefill_chunk=64)
    a, b, c = prompt(17, 1), prompt(17, 2), prompt(17, 3)  # 4 full blocks cached each
    for ids in (a, b):
        s.engine.run_until_done([s.engine.submit(ids, greedy(1))])
    assert s.engine.scheduler.kv_blocks.cached == 8
    s.engine.run_until_done([s.engine.submit(b, greedy(1))])  # b used again: a is the oldest
    hits = s.engine.stats.prefix_hits
    s.engine.run_until_done([s.engine.submit(c, greedy(1))])  # needs 5 blocks: 4 free + a's oldest
    s.engine.run_until_done([s.engine.submit(b, greedy(1))])
    assert s.engine.stats.prefix_hits == hits + 16  # b is still cached whole
    before = s.engine.stats.prefix_hits
    again = s.engine.submit(a, greedy(3))
    s.engine.run_until_done([again])
    assert s.engine.stats.prefix_hits - before < 16 and again.tokens == s.reference(a, 3)


def test_prefix_caching_off_computes_every_prompt(make):
    s = make(slots=1, mixed=True, block_size=4, blocks=16, prefix_caching=False)
    ids = prompt(13)
    first = s.engine.generate_ids(ids, greedy(3))
    assert s.engine.generate_ids(ids, greedy(3)) == first == s.reference(ids, 3)
    assert s.engine.stats.prefix_hits == 0 and s.engine.scheduler.kv_blocks.cached == 0


def _prefill_calls_since(s, n):
    return [c for c in s.runner.calls[n:] if c.phase is Phase.PREFILL]


def test_a_slot_runner_reads_a_prefix_its_free_slot_still_holds(make):
    s = make(slots=2, max_len=128, idle_prefill_chunk=128)
    system = prompt(40)
    a = s.engine.submit(system + [1, 2], greedy(4))
    s.engine.run_until_done([a])
    calls = len(s.runner.calls)
    b = s.engine.submit(system + [7, 8, 9], greedy(4))  # into a's old slot: 40 tokens read
    s.engine.run_until_done([b])
    (prefill,) = _prefill_calls_since(s, calls)
    assert prefill.slots == (a.slot,) and prefill.starts == (40,) and prefill.ids == ((7, 8, 9),)
    assert b.tokens == s.reference(system + [7, 8, 9], 4) and s.runner.copies == []
    assert s.engine.stats.prefix_hits == 40
    # the whole of a's sequence is kept, its output too: a follow-up turn reads all of it
    turn = system + [1, 2] + a.tokens[:3] + [5]
    c = s.engine.submit(turn, greedy(2))
    s.engine.run_until_done([c])
    assert c.tokens == s.reference(turn, 2) and s.engine.stats.prefix_hits == 40 + 40


def test_a_prompt_starting_as_a_running_ones_copies_its_prefix_and_computes_the_rest(make):
    s = make(slots=3, max_len=128, idle_prefill_chunk=128, prefill_budget=0, prefill_chunk=128)
    system = prompt(48)
    a = s.engine.submit(system + [3], greedy(30))
    s.engine.step()
    s.engine.step()  # a decodes
    calls = len(s.runner.calls)
    b = s.engine.submit(system + [4, 5], greedy(6))
    plan = s.engine.scheduler.schedule()
    (copy,) = plan.copies
    assert (copy.src, copy.dst, copy.positions) == (a.slot, b.slot, 48) and b.filled == 48
    s.engine.runner.copy_slot(copy)
    for forward in plan.forwards:
        s.engine.scheduler.update(forward, s.engine._execute(forward))
    s.engine.run_until_done([a, b])
    (prefill,) = _prefill_calls_since(s, calls)
    assert prefill.starts == (48,) and prefill.ids == ((4, 5),)
    assert b.tokens == s.reference(system + [4, 5], 6) and a.tokens == s.reference(system + [3], 30)


def test_samples_of_one_prompt_after_its_first_token_compute_it_once(make):
    """`n` > 1 as the frontend sends it: the later samples arrive once the first has its
    first token, and copy its prompt instead of computing it again."""
    s = make(slots=4, max_len=128, idle_prefill_chunk=128, prefill_budget=0)
    ids = prompt(60)
    first = s.engine.submit(ids, greedy(8, temperature=1.0, seed=0))
    s.engine.step()
    rest = [s.engine.submit(ids, greedy(8, temperature=1.0, seed=j)) for j in (1, 2, 3)]
    s.engine.run_until_done([first, *rest])
    prompt_tokens = sum(len(c.ids[0]) * len(c.ids) for c in s.calls(Phase.PREFILL))
    assert prompt_tokens == 60 + 3 * 1 and len(s.runner.copies) == 3
    alone = make(slots=1, max_len=128)
    for j, r in enumerate([first, *rest]):
        assert r.tokens == alone.engine.generate_ids(ids, greedy(8, temperature=1.0, seed=j))


@pytest.mark.parametrize("mixed", [False, True])
def test_prompts_arriving_together_with_one_document_compute_it_once(make, mixed):
    """Four requests about one 40-token document arrive at once: none has a prefix to copy
    when admitted; the first computes it, and the others copy it from its slot as soon as
    it holds more of it than they do, computing only their own tails."""
    s = make(
        slots=5, max_len=128, idle_prefill_chunk=16, prefill_chunk=16, prefill_budget=0,
        mixed_prefill_budget=0, mixed=mixed, mixed_slots=mixed,
    )
    stream = s.engine.submit(prompt(3, 5), greedy(60))  # decoding: the prompts go in 16 at a time
    s.engine.step()
    doc = prompt(40)
    reqs = [s.engine.submit(doc + [t], greedy(3)) for t in (1, 2, 3, 4)]
    s.engine.run_until_done([stream, *reqs])
    # prompt rows of more than one token: the stream's prompt and one document, in chunks of
    # 16; the others waited for it and computed their last token only
    assert sum(len(row) for c in s.runner.calls for row in c.ids if len(row) > 1) == 3 + 41
    assert [(c.src, c.positions) for c in s.runner.copies] == [(reqs[0].slot, 40)] * 3
    assert s.engine.stats.prefix_hits >= 3 * 40
    assert [r.tokens for r in reqs] == [s.reference(r.prompt_ids, 3) for r in reqs]
    assert stream.tokens == s.reference(prompt(3, 5), 60)


@pytest.mark.parametrize("group_past", [False, True])
def test_prompts_resuming_past_position_zero_share_a_call_only_where_the_runner_takes_it(make, group_past):
    """ONNX Runtime's CPU attention takes one row when a chunk starts past position 0: prompts
    that copied a shared prefix are then prefilled a row a call (the fake refuses otherwise)."""
    s = make(slots=4, max_len=128, idle_prefill_chunk=128, prefill_budget=0, group_past=group_past)
    system = prompt(40)
    first = s.engine.submit(system + [1], greedy(10))
    s.engine.step()
    calls = len(s.runner.calls)
    tails = [[2, 3, 4, 5, 6], [7, 8, 9, 10, 11], [12, 13, 14, 15, 16]]
    rest = [s.engine.submit(system + t, greedy(4)) for t in tails]
    s.engine.run_until_done([first, *rest])
    prefills = _prefill_calls_since(s, calls)
    assert [len(c.slots) for c in prefills] == ([3] if group_past else [1, 1, 1])
    assert all(c.starts[0] == 40 for c in prefills) and len(s.runner.copies) == 3
    for r, t in zip(rest, tails):
        assert r.tokens == s.reference(system + t, 4)


def test_decode_padding_rows_leave_a_free_slots_kept_prefix_intact(make):
    s = make(slots=2, max_len=128, idle_prefill_chunk=128)
    system = prompt(32)
    a = s.engine.submit(system + [1], greedy(2))  # slot 0, ends first
    long = s.engine.submit(prompt(5, 1), greedy(40))  # slot 1: decode calls cover slot 0 too
    s.engine.run_until_done([a])
    for _ in range(5):
        s.engine.step()
    assert all(c.starts[0] >= 34 for c in s.calls(Phase.DECODE)[-5:])  # past what slot 0 keeps
    b = s.engine.submit(system + [9, 9], greedy(5))
    s.engine.run_until_done([b, long])
    assert b.slot == a.slot and s.engine.stats.prefix_hits == 32
    assert b.tokens == s.reference(system + [9, 9], 5)


def test_slot_reuse_skips_prompt_logprob_requests_short_prefixes_and_is_off_with_prefix_caching(make):
    s = make(slots=2, max_len=128, idle_prefill_chunk=128)
    system = prompt(40)
    s.engine.run_until_done([s.engine.submit(system, greedy(2))])
    scored = s.engine.submit(system + [1], greedy(1, prompt_logprobs=0))
    s.engine.run_until_done([scored])
    assert s.calls(Phase.PREFILL)[-1].starts == (0,)  # every position computed
    short = prompt(10, 5)
    s.engine.run_until_done([s.engine.submit(short, greedy(2))])
    s.engine.run_until_done([s.engine.submit(short + [3], greedy(2))])
    assert s.calls(Phase.PREFILL)[-1].starts == (0,)  # 10 shared tokens: below the minimum
    off = make(slots=2, max_len=128, idle_prefill_chunk=128, prefix_caching=False)
    off.engine.run_until_done([off.engine.submit(system, greedy(2))])
    again = off.engine.submit(system + [2], greedy(3))
    off.engine.run_until_done([again])
    assert off.calls(Phase.PREFILL)[-1].starts == (0,) and off.engine.stats.prefix_queries == 0
    assert again.tokens == off.reference(system + [2], 3)


def test_a_runner_without_copies_reuses_free_slots_only(make):
    s = make(slots=2, max_len=128, idle_prefill_chunk=128, copies=False)
    system = prompt(40)
    a = s.engine.submit(system, greedy(20))
    s.engine.step()
    b = s.engine.submit(system + [6], greedy(3))
    s.engine.run_until_done([a, b])
    assert s.runner.copies == [] and b.tokens == s.reference(system + [6], 3)
    assert _prefill_calls_since(s, 0)[-1].starts == (0,)


def test_a_failed_slot_copy_ends_its_request_only(make):
    s = make(slots=2, max_len=128, idle_prefill_chunk=128)
    system = prompt(40)
    a = s.engine.submit(system, greedy(12))
    s.engine.step()
    b = s.engine.submit(system + [6], greedy(3))
    s.runner.fail_next = "device lost"
    s.engine.run_until_done([a, b])
    assert b.finish_reason is FinishReason.ERROR and "copying KV cache between slots" in b.error
    assert a.tokens == s.reference(system, 12) and b.slot not in s.engine.scheduler.retained
    c = s.engine.submit(system + [6], greedy(3))
    s.engine.run_until_done([c])
    assert c.tokens == s.reference(system + [6], 3)


def test_a_block_pool_refuses_blocks_it_does_not_hold():
    from engine.kv import BlockPool

    pool = BlockPool(4, 16)
    got = pool.take(3)
    assert got == [0, 1, 2] and pool.take(2) is None and pool.free == 1
    assert pool.needed(held=2, tokens=33) == 1 and pool.needed(held=3, tokens=33) == 0
    pool.give_back(got)
    with pytest.raises(ValueError, match="not all held"):
        pool.give_back([0])


# -- the int4+int8 pair's routing -------------------------------------------------------------


def test_a_pair_routes_prefills_and_big_decode_calls_to_the_companion(make):
    s = make(slots=3, companion=True, companion_prefill=True, companion_from_rows=2)
    ids = [prompt(4, i) for i in range(3)]
    solo = s.engine.generate_ids(ids[0], greedy(6))
    assert {c.graph for c in s.calls(Phase.PREFILL)} == {COMPANION}
    assert {c.graph for c in s.calls(Phase.DECODE)} == {MAIN}  # one row: the main graph
    reqs = [s.engine.submit(i, greedy(6)) for i in ids]
    s.engine.run_until_done(reqs)
    big = [c for c in s.calls(Phase.DECODE) if len(c.slots) >= 2]
    assert big and {c.graph for c in big} == {COMPANION}
    assert reqs[0].tokens == solo


def test_without_a_companion_graph_every_call_runs_on_the_main_one(make):
    s = make(slots=2, companion=False, companion_prefill=True, companion_from_rows=1)
    reqs = [s.engine.submit(prompt(3, i), greedy(4)) for i in range(2)]
    s.engine.run_until_done(reqs)
    assert {c.graph for c in s.runner.calls} == {MAIN}


def test_only_prefills_go_to_the_companion_when_no_row_count_is_routed(make):
    s = make(slots=2, companion=True, companion_prefill=True, companion_from_rows=0)
    reqs = [s.engine.submit(prompt(3, i), greedy(4)) for i in range(2)]
    s.engine.run_until_done(reqs)
    assert {c.graph for c in s.calls(Phase.PREFILL)} == {COMPANION}
    assert {c.graph for c in s.calls(Phase.DECODE)} == {MAIN}


# -- endings and failures -------------------------------------------------------------------


def test_eos_stop_tokens_max_tokens_and_the_window_end_with_their_reason(make):
    s = make(slots=2, max_len=24)
    ids = prompt(5)
    ref = s.reference(ids, 12)
    end = ref[4]
    stop = s.engine.submit(ids, SamplingParams(max_tokens=12, stop_token_ids=(end,)))
    by_end_id = s.engine.submit(ids, SamplingParams(max_tokens=12, end_id=end))
    s.engine.run_until_done([stop, by_end_id])
    first = ref.index(end)
    assert stop.finish_reason is FinishReason.STOP and stop.tokens == ref[: first + 1]
    assert by_end_id.finish_reason is FinishReason.EOS and by_end_id.tokens == ref[: first + 1]
    held = s.engine.submit(ids, SamplingParams(max_tokens=12, end_id=end, min_tokens=first + 2))
    s.engine.run_until_done([held])
    assert end not in held.tokens[: first + 2]
    full = s.engine.submit(ids, greedy(19))  # 5 + 19 = the whole 24-position window
    s.engine.run_until_done([full])
    assert full.finish_reason is FinishReason.LENGTH and len(full.tokens) == 19


def test_a_failing_runner_call_fails_its_requests_only_and_the_engine_serves_on(make):
    s = make(slots=2)
    a = s.engine.submit(prompt(3), greedy(20))
    s.engine.step()
    b = s.engine.submit(prompt(4, 1), greedy(5))
    s.runner.fail_next = "device lost"  # the next call is b's prefill
    s.engine.step()
    assert b.finish_reason is FinishReason.ERROR and "device lost" in b.error
    assert a.status is Status.DECODING
    s.engine.run_until_done([a])
    assert a.tokens == s.reference(prompt(3), 20) and s.engine.free_slots == 2


def test_a_failing_token_step_ends_only_its_own_request(make):
    s = make(slots=2)
    victims = []
    real = s.sink.on_text

    def flaky(request, text):
        if request in victims:
            raise RuntimeError("client buffer gone")
        real(request, text)

    s.sink.on_text = flaky
    other = s.engine.submit(prompt(3), greedy(6))
    s.engine.step()
    victims.append(s.engine.submit(prompt(4, 1), greedy(6)))
    s.engine.run_until_done([other, victims[0]])
    assert victims[0].finish_reason is FinishReason.ERROR and "client buffer gone" in victims[0].error
    assert other.finish_reason is FinishReason.LENGTH and other.tokens == s.reference(prompt(3), 6)
    assert s.engine.free_slots == 2


def test_latency_figures_follow_the_engines_clock(make):
    cost = FakeCost(prefill_fixed=10.0, prefill_per_token=0.0, decode_fixed=5.0, decode_per_row=0.0)
    s = make(slots=1, cost=cost)
    req = s.engine.submit(prompt(4), greedy(4))
    s.engine.run_until_done([req])
    stats = s.engine.stats
    assert list(stats.ttft) == pytest.approx([0.010])
    assert list(stats.itl) == pytest.approx([0.005] * 3)
    assert stats.prompt_tokens == 4 and stats.generation_tokens == 4 and stats.ended["length"] == 1


# -- the loop -------------------------------------------------------------------------------


def test_run_steps_on_wake_ends_cancelled_clients_and_aborts_what_is_left_on_stop(make):
    """Counted in steps, not time: the client of the 60-token request is gone from the start,
    so a check of every CANCEL_CHECK_EVERY steps ends it long before its 60th; the last
    request is held at the gate after its first step until `stop` is set."""
    s = make(slots=2)
    wake, stop, gate = threading.Event(), threading.Event(), threading.Event()
    gate.set()
    errors = []

    def is_cancelled(r):
        return r.params.max_tokens == 60

    thread = threading.Thread(
        target=s.engine.run, args=(wake, is_cancelled, stop, errors.append), kwargs={"after_step": gate.wait}
    )
    thread.start()
    done = s.engine.submit(prompt(3), greedy(5))
    wake.set()
    dropped = s.engine.submit(prompt(3, 1), SamplingParams(max_tokens=60, ignore_eos=True))
    wake.set()
    while done.status is not Status.FINISHED or dropped.status is not Status.FINISHED:
        threading.Event().wait(0.001)
    assert len(dropped.tokens) < 60
    gate.clear()
    left = s.engine.submit(prompt(2, 2), SamplingParams(max_tokens=61))
    wake.set()
    stop.set()
    gate.set()
    thread.join(timeout=10)
    assert not thread.is_alive() and errors == []
    assert done.finish_reason is FinishReason.LENGTH and dropped.finish_reason is FinishReason.CANCELLED
    assert left.finish_reason is FinishReason.ERROR and "shutting down" in left.error
    assert len(left.tokens) <= 1


def test_submitting_and_cancelling_from_other_threads_while_stepping(make):
    s = make(slots=3, max_queue=1000)
    reqs, lock = [], threading.Lock()

    def client(seed):
        for i in range(30):
            r = s.engine.submit(prompt(3, seed * 100 + i), greedy(3))
            with lock:
                reqs.append(r)
            if i % 4 == 0:
                s.engine.cancel(r)
            s.engine.requests()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads) or s.engine.has_work():
        s.engine.step()
    assert len(reqs) == 90 and all(r.status is Status.FINISHED for r in reqs)
    assert s.engine.free_slots == 3
