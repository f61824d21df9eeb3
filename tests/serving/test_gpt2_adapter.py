"""The Triton adapter of `gpt2` (serving/triton_models/gpt2_model.py) under unit tests.

The adapter turns Triton requests into engine requests and the engine's results into
responses: both request schemas (vLLM's `sampling_parameters` JSON, TensorRT-LLM's input
tensors, Triton's request parameters), streamed and whole text, the vLLM backend's additional
outputs, TensorRT-LLM's `stop`, clients that went away, error responses, the queue limit,
`initialize`'s checks, the metrics export and `finalize`. The live tests
(test_serving_live.py, test_request_schemas_live.py) run the same file inside the real server
on an exported model; these run every path in milliseconds, on any machine.

Two stand-ins make that possible. `triton_python_backend_utils` exists only inside Triton's
stub process, so `fake_pb_utils` takes its place in `sys.modules` (the one thing faked: a
library that cannot be imported here), and the adapter file is loaded afresh for each test
after it. The engine is the real one, built by `initialize` from the config's parameters;
only the adapter's `load_engine` is replaced, so that the engine runs on the deterministic
`FakeRunner` with a word-level tokenizer (token i is the word `t<i>`) instead of an exported
model. The same engine run offline (`Engine.generate_ids`) is the reference for the text.

The adapter runs its own threads (generation, responses, metrics): tests wait for a request's
final response with a generous timeout and never assert on timing. Where a request must still
be in flight when the test acts (stop, cancel, queue full, unload), the runner's `gate` holds
the generation thread inside its next call until the test opens it.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from engine import metrics as llm_metrics
from engine.config import EngineConfig
from engine.core import Engine
from engine.request_schema import SamplingParams
from engine.runners.fake import FakeClock, FakeRunner, word_tokenizer

HERE = Path(__file__).resolve().parent
ADAPTER = HERE.parents[1] / "serving" / "triton_models" / "gpt2_model.py"
VOCAB = 64
WINDOW = 96  # the fake model's context window (n_positions)
SEED = 0  # the fake model's logits table
WAIT_S = 30.0  # generous: these runs take milliseconds, but the machine may be busy
PROMPT = "t1 t2 t3"
_loads = itertools.count()


# -- the model under test --------------------------------------------------------------------
class GatedRunner(FakeRunner):
    """The fake runner, whose calls wait while `gate` is closed (cleared): a test holds the
    generation thread with requests in flight, acts, then opens it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.gate.set()

    def execute(self, forward):
        if not self.gate.wait(WAIT_S):
            raise RuntimeError("the test never opened the runner's gate")
        return super().execute(forward)


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def pb(monkeypatch):
    """A fresh fake `triton_python_backend_utils`, installed where the adapter imports it."""
    fake = _load(HERE / "fake_pb_utils.py", f"fake_pb_utils_{next(_loads)}")
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    yield fake
    trouble = [(level, msg) for level, msg in fake.Logger.messages if level in ("WARNING", "ERROR")]
    assert trouble == [], "the adapter logged a failure (a response after the final one?)"


@pytest.fixture
def adapter(pb, monkeypatch):
    """gpt2_model.py loaded afresh over `pb`, its engine built on the gated fake runner.
    `adapter.loads` records each `load_engine` call."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # the module puts its folder first: undone after
    module = _load(ADAPTER, f"gpt2_model_under_test_{next(_loads)}")
    assert module.pb_utils is pb
    loads = []

    def load_engine(model_dir, config, sink=None, intra_op_threads=0, providers=None, own_process=False):
        """`engine.loader.load_engine` of a model with no files: the same check of `config`
        against the model's window, then the fake runner with the config's slots and length."""
        loads.append(
            {
                "model_dir": model_dir,
                "config": config,
                "threads": intra_op_threads,
                "own_process": own_process,
            }
        )
        config.check(WINDOW)
        clock = FakeClock()
        runner = GatedRunner(config.slots, config.max_len or WINDOW, VOCAB, clock, seed=SEED)
        return Engine(runner, word_tokenizer(VOCAB), config, sink, clock)

    monkeypatch.setattr(module, "load_engine", load_engine)
    module.loads = loads
    return module


def model_args(repository: Path, decoupled: bool | None = True, raw: dict | None = None, **settings) -> dict:
    """`initialize`'s args as Triton passes them: the config as JSON, its parameters the
    engine's settings (`settings`: EngineConfig fields; metrics off unless given) as the
    builder writes them, plus `raw` parameter strings."""
    params = {
        **EngineConfig(**{"metrics_interval_s": 0.0, **settings}).to_parameters(),
        "intra_op_threads": "1",
        **(raw or {}),
    }
    config = {
        "name": "gpt2",
        "backend": "python",
        "max_batch_size": 0,
        "parameters": {k: {"string_value": v} for k, v in params.items()},
    }
    if decoupled is not None:
        config["model_transaction_policy"] = {"decoupled": decoupled}
    return {
        "model_config": json.dumps(config),
        "model_repository": str(repository),
        "model_version": "1",
        "model_name": "gpt2",
        "model_instance_kind": "CPU",
    }


@pytest.fixture
def start(adapter, tmp_path):
    """start(**settings) -> an initialized TritonPythonModel; finalized after the test."""
    started = []

    def start(raw=None, **settings):
        model = adapter.TritonPythonModel()
        model.initialize(model_args(tmp_path, raw=raw, **settings))
        started.append(model)
        return model

    yield start
    for model in started:
        if model.thread.is_alive():
            model.engine.runner.gate.set()
            model.finalize()


# -- requests and responses ------------------------------------------------------------------
def make_request(
    pb,
    text,
    stream=None,
    sampling=None,
    tensors=None,
    request_id="",
    extras=(),
    parameters=None,
    **flags,
):
    """A request as Triton hands it to `execute`. `text`: the text_input (str, raw bytes, or
    None: absent); `stream` and `flags` (exclude_input_in_output=..., stop=...): BOOL [1]
    inputs; `sampling`: the sampling_parameters JSON (a dict, or raw text); `tensors`:
    TensorRT-LLM's inputs (name -> array); `extras`: the vLLM additional outputs asked for
    (finish_reason, num_input_tokens, num_output_tokens); `parameters`: the request's
    parameters (Triton's HTTP generate)."""
    inputs = []
    if text is not None:
        raw = text.encode() if isinstance(text, str) else text
        inputs.append(pb.Tensor("text_input", np.array([raw], dtype=np.object_)))
    if sampling is not None:
        raw = sampling if isinstance(sampling, str) else json.dumps(sampling)
        inputs.append(pb.Tensor("sampling_parameters", np.array([raw.encode()], dtype=np.object_)))
    flags = {"stream": stream, **flags, **{f"return_{name}": True for name in extras}}
    for name, value in flags.items():
        if value is not None:
            inputs.append(pb.Tensor(name, np.array([value], dtype=np.bool_)))
    for name, array in (tensors or {}).items():
        inputs.append(pb.Tensor(name, array))
    return pb.InferenceRequest(inputs, request_id=request_id, parameters=parameters)


def responses(request, timeout=WAIT_S):
    """Every (response, flags) the request got, once its final response has gone out."""
    sender = request.get_response_sender()
    assert sender.wait_final(timeout), f"no final response within {timeout} s; got {sender.responses}"
    return list(sender.responses)


def run(model, *requests):
    """Execute `requests` (one call, as Triton batches them) and wait for all their responses."""
    assert model.execute(list(requests)) is None  # a decoupled model answers through the senders
    return [responses(r) for r in requests]


def outputs(response) -> dict:
    """A response's output tensors, name -> the one value each holds (text decoded)."""
    out = {}
    for tensor in response.output_tensors():
        value = tensor.as_numpy().reshape(-1)[0]
        out[tensor.name()] = value.decode() if isinstance(value, bytes) else int(value)
    return out


def texts(got) -> list[str]:
    return [outputs(r)["text_output"] for r, _ in got if r is not None and "text_output" in outputs(r)]


def final_text(got) -> str:
    """The text of a request answered whole: exactly one response, final, no error."""
    assert len(got) == 1, got
    ((response, flags),) = got
    assert flags == 1 and not response.has_error(), response
    return outputs(response)["text_output"]


def error_of(got) -> str:
    """The message of a request answered with an error: exactly one response, final."""
    assert len(got) == 1, got
    ((response, flags),) = got
    assert flags == 1 and response.has_error(), response
    return response.error().message()


def offline_text(prompt: str, **sampling) -> str:
    """What the same engine generates for `prompt` with no adapter around it: a fresh fake
    runner with the same logits, `Engine.generate_ids`, the ids decoded."""
    tok = word_tokenizer(VOCAB)
    engine = Engine(FakeRunner(4, WINDOW, VOCAB, FakeClock(), seed=SEED), tok, EngineConfig(slots=4))
    return tok.decode(engine.generate_ids(tok.encode(prompt).ids, SamplingParams(**sampling)))


def wait_until(condition, what: str, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.005)


# -- initialize --------------------------------------------------------------------------------
def test_initialize_builds_the_engine_of_the_version_folder_from_the_config_parameters(
    start, adapter, pb, tmp_path
):
    model = start(slots=3, max_queue=5, max_tokens_limit=1000)
    (load,) = adapter.loads
    assert load["model_dir"] == str(tmp_path / "1")
    assert load["config"] == EngineConfig(slots=3, max_queue=5, max_tokens_limit=1000, metrics_interval_s=0.0)
    assert load["threads"] == 1 and load["own_process"] is True
    assert model.engine.free_slots == 3
    assert model.max_tokens_limit == WINDOW - 1  # the configured limit, capped by the window
    assert model.metrics is None  # metrics_interval_s 0: no exporter
    assert pb.MetricFamily.families == {}
    assert any(
        msg.startswith("gpt2 ready: 1 layers, context 96; KV cache 3 slots") for _, msg in pb.Logger.messages
    )


@pytest.mark.parametrize("decoupled", [False, None], ids=["decoupled-false", "no-policy"])
def test_initialize_refuses_a_model_that_is_not_decoupled(adapter, pb, tmp_path, decoupled):
    with pytest.raises(pb.TritonModelException, match="must be configured decoupled"):
        adapter.TritonPythonModel().initialize(model_args(tmp_path, decoupled=decoupled))
    assert adapter.loads == []


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("slots", "0", "slots must be an integer in 1..1024, got 0"),
        ("slots", "abc", "parameter slots must be int, got 'abc'"),
        ("max_len", "500", "max_len must be an integer in 0..96"),  # longer than the model's window
        ("cuda_graph", "yes", "parameter cuda_graph must be true or false"),
        ("intra_op_threads", "x", "parameter intra_op_threads must be an integer >= 0, got 'x'"),
    ],
)
def test_initialize_refuses_a_bad_setting_naming_it(adapter, pb, tmp_path, name, value, message):
    model = adapter.TritonPythonModel()
    with pytest.raises(pb.TritonModelException) as failed:
        model.initialize(model_args(tmp_path, raw={name: value}))
    assert not model.responses.thread.is_alive()  # a failed initialize leaves no thread behind
    assert failed.value.args[0].startswith("gpt2: ")
    assert message in failed.value.args[0]


# -- request schemas ---------------------------------------------------------------------------
def test_vllm_sampling_parameters_whole_text_is_prompt_and_generation(start, pb):
    model = start()
    generated = offline_text(PROMPT, max_tokens=5, ignore_eos=True)
    assert len(generated.split()) == 5
    sampling = {"max_tokens": 5, "ignore_eos": True}
    with_prompt, without_prompt = run(
        model,
        make_request(pb, PROMPT, sampling=sampling, exclude_input_in_output=False),
        make_request(pb, PROMPT, sampling=sampling, exclude_input_in_output=True),
    )
    assert final_text(with_prompt) == PROMPT + generated
    assert final_text(without_prompt) == generated


def test_trtllm_tensors_give_the_same_sampling_as_the_vllm_json(start, pb):
    model = start()
    tensors = {
        "max_tokens": np.array([6], np.int32),
        "temperature": np.array([0.5], np.float32),
        "random_seed": np.array([7], np.uint64),
        "runtime_top_k": np.array([0], np.int32),
        "beam_width": np.array([1], np.int32),
    }
    sampling = {"max_tokens": 6, "temperature": 0.5, "seed": 7}
    trtllm, vllm = run(
        model,
        make_request(pb, PROMPT, tensors=tensors, exclude_input_in_output=True),
        make_request(pb, PROMPT, sampling=sampling, exclude_input_in_output=True),
    )
    expected = offline_text(PROMPT, max_tokens=6, temperature=0.5, seed=7)
    assert final_text(trtllm) == final_text(vllm) == expected
    assert expected != offline_text(PROMPT, max_tokens=6)  # sampled, not greedy: the seed mattered


def test_trtllm_stop_words_end_the_text_before_the_stop_word(start, pb):
    model = start()
    whole = offline_text(PROMPT, max_tokens=12)
    stop = " " + whole.split()[4]
    expected = whole[: whole.find(stop)]
    assert 0 < len(expected) < len(whole)
    (got,) = run(
        model,
        make_request(
            pb,
            PROMPT,
            tensors={
                "max_tokens": np.array([12], np.int32),
                "stop_words": np.array([[stop.encode(), b""]], np.object_),
            },
            extras=("finish_reason",),
            exclude_input_in_output=True,
        ),
    )
    assert final_text(got) == expected
    assert outputs(got[0][0])["finish_reason"] == "stop"


def test_request_parameters_are_read_when_there_is_no_sampling_parameters_input(start, pb):
    model = start()
    parameters = {"max_tokens": 3, "ignore_eos": "true", "priority": 2}  # not a sampling key: ignored
    from_parameters, json_first = run(
        model,
        make_request(
            pb, PROMPT, parameters=parameters, extras=("num_output_tokens",), exclude_input_in_output=True
        ),
        make_request(
            pb,
            PROMPT,
            sampling={"max_tokens": 2},
            parameters=parameters,
            extras=("num_output_tokens",),
            exclude_input_in_output=True,
        ),
    )
    assert final_text(from_parameters) == offline_text(PROMPT, max_tokens=3)
    assert outputs(from_parameters[0][0])["num_output_tokens"] == 3
    assert outputs(json_first[0][0])["num_output_tokens"] == 2  # sampling_parameters wins


def test_a_field_given_both_ways_is_refused_naming_both(start, pb):
    model = start()
    json_and_tensor, two_tensors = run(
        model,
        make_request(pb, PROMPT, sampling={"max_tokens": 5}, tensors={"max_tokens": np.array([5], np.int32)}),
        make_request(
            pb, PROMPT, tensors={"min_length": np.array([1], np.int32), "min_tokens": np.array([1], np.int32)}
        ),
    )
    message = error_of(json_and_tensor)
    assert "max_tokens is given twice" in message
    assert "max_tokens input tensor" in message and "sampling_parameters" in message
    assert "by the min_length and min_tokens input tensors" in error_of(two_tensors)
    assert model.engine.stats.refused["rejected"] == 2


# -- streaming and the additional outputs ------------------------------------------------------
def test_streamed_responses_concatenate_to_the_whole_text(start, pb):
    model = start()
    sampling = {"max_tokens": 8, "ignore_eos": True}
    streamed, streamed_with_prompt, whole = run(
        model,
        make_request(pb, PROMPT, stream=True, sampling=sampling, exclude_input_in_output=True),
        make_request(pb, PROMPT, stream=True, sampling=sampling, exclude_input_in_output=False),
        make_request(pb, PROMPT, stream=False, sampling=sampling, exclude_input_in_output=True),
    )
    # a response a token while the sender keeps up, fewer when tokens go out together
    assert 1 <= len(texts(streamed)) <= 8
    assert "".join(texts(streamed)) == final_text(whole) == offline_text(PROMPT, max_tokens=8)
    assert [flags for _, flags in streamed] == [0] * (len(streamed) - 1) + [1]
    assert texts(streamed_with_prompt)[0].startswith(PROMPT)
    assert "".join(texts(streamed_with_prompt)) == PROMPT + final_text(whole)


def test_additional_outputs_give_finish_reason_and_token_counts(start, pb):
    model = start()
    extras = ("finish_reason", "num_input_tokens", "num_output_tokens")
    sampling = {"max_tokens": 7}
    streamed, whole = run(
        model,
        make_request(pb, PROMPT, stream=True, sampling=sampling, extras=extras),
        make_request(pb, PROMPT, sampling=sampling, extras=extras),
    )
    outs = [outputs(r) for r, _ in streamed]
    assert [o["finish_reason"] for o in outs] == [""] * (len(outs) - 1) + ["length"]
    assert {o["num_input_tokens"] for o in outs} == {3}
    assert sum(o["num_output_tokens"] for o in outs) == 7
    assert "".join(o.get("text_output", "") for o in outs) == offline_text(PROMPT, max_tokens=7)
    ((response, flags),) = whole
    assert outputs(response) == {
        "text_output": offline_text(PROMPT, max_tokens=7),
        "finish_reason": "length",
        "num_input_tokens": 3,
        "num_output_tokens": 7,
    }


def test_a_stream_interval_puts_that_many_tokens_in_a_response(adapter, start, pb):
    model = start(stream_interval=4)
    sender = model.responses
    assert sender.interval == 4
    # the rule itself: a stream's text is queued for the sender only once 4 pieces collected
    job = adapter._Job(None, True, "")
    request = types.SimpleNamespace(context=job, generated=1)
    with sender.cond:  # the sender thread cannot take the request meanwhile
        for _ in range(3):
            request.generated += 1
            sender.text(request, "x")
            assert not sender.ready and not job.queued
        sender.text(request, "x")
        assert list(sender.ready) == [request] and job.pending == ["x"] * 4
        sender.ready.clear()  # not sent: the job has no response sender
    # through the model: the first token at once, then at least 4 a response (a busy sender
    # may put more together), the last whatever is left; the streamed text is the whole text
    extras = ("finish_reason", "num_output_tokens")
    sampling = {"max_tokens": 9, "ignore_eos": True}
    (got,) = run(model, make_request(pb, "t4 t5", stream=True, sampling=sampling, extras=extras))
    outs = [outputs(r) for r, _ in got]
    counts = [o["num_output_tokens"] for o in outs]
    assert counts[0] == 1 and all(c >= 4 for c in counts[1:-1]) and sum(counts) == 9
    assert outs[-1]["finish_reason"] == "length" and [f for _, f in got][-1] == 1
    assert "".join(o.get("text_output", "") for o in outs) == offline_text(
        "t4 t5", max_tokens=9, ignore_eos=True
    )


class _RecordedSleeps:
    """The adapter's `time` module with its sleeps recorded (and still slept)."""

    def __init__(self):
        self.sleeps = []

    def __getattr__(self, name):
        return getattr(time, name)

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        time.sleep(seconds)


@pytest.mark.parametrize("yield_ms", [3.0, 0.0])
def test_the_loop_yields_the_cpu_after_a_step_that_sent_a_first_token(adapter, start, pb, monkeypatch, yield_ms):
    """A stream's first response is sent by the generation thread; where the runtime's
    threads take every core (intra_op_threads 0: one a core), the loop then leaves the cores
    to the response's way out (`first_token_yield_ms`) before its next call, once per such
    step and never after the steps that only decode or for text sent whole."""
    clock = _RecordedSleeps()
    monkeypatch.setattr(adapter, "time", clock)
    model = start(raw={"intra_op_threads": "0"}, first_token_yield_ms=yield_ms)
    sampling = {"max_tokens": 6, "ignore_eos": True}
    for prompt in ("t4 t5", "t6 t7 t8"):
        (got,) = run(model, make_request(pb, prompt, stream=True, sampling=sampling))
        assert "".join(texts(got)) == offline_text(prompt, max_tokens=6, ignore_eos=True)
    assert clock.sleeps == ([yield_ms / 1e3] * 2 if yield_ms else [])
    (whole,) = run(model, make_request(pb, "t4 t5", stream=False, sampling=sampling))
    assert texts(whole) == [offline_text("t4 t5", max_tokens=6, ignore_eos=True)]
    assert len(clock.sleeps) == (2 if yield_ms else 0)


def test_no_yield_where_the_runtime_leaves_cores_free(adapter, start, pb, monkeypatch):
    """One intra-op thread on a machine of several cores leaves a core to the responses'
    way out: no yield after first tokens. (On a one-core machine that thread takes the only
    core, and the loop yields.)"""
    import os

    clock = _RecordedSleeps()
    monkeypatch.setattr(adapter, "time", clock)
    model = start(first_token_yield_ms=3.0)  # intra_op_threads 1, as model_args sets it
    (got,) = run(model, make_request(pb, "t4 t5", stream=True, sampling={"max_tokens": 4, "ignore_eos": True}))
    assert "".join(texts(got)) == offline_text("t4 t5", max_tokens=4, ignore_eos=True)
    cores = len(os.sched_getaffinity(0))
    assert clock.sleeps == ([] if cores > 1 else [0.003])


def test_a_busy_sender_sends_a_streams_tokens_together_and_none_is_lost(start, pb):
    """While the response channel is busy (here: another stream's response is held in
    Triton's send), a stream's tokens collect and leave in one response when it frees up;
    its first token was sent at once, by the generation thread."""
    model = start()
    extras = ("finish_reason", "num_output_tokens")
    blocker = make_request(pb, PROMPT, stream=True, sampling={"max_tokens": 30, "ignore_eos": True})
    busy = threading.Event()
    held = blocker.get_response_sender()
    send = held.send

    def slow_send(response=None, flags=0):
        if threading.current_thread().name == "gpt2-responses":
            busy.wait(WAIT_S)  # Triton's IPC, stuck for a while
        send(response, flags)

    held.send = slow_send
    stream = make_request(
        pb, "t4 t5", stream=True, sampling={"max_tokens": 9, "ignore_eos": True}, extras=extras
    )
    assert model.execute([blocker, stream]) is None
    sender = stream.get_response_sender()
    wait_until(lambda: stream_done(model, sender), "the stream generates all its tokens")
    assert len(sender.responses) == 1  # the first token, sent inline
    busy.set()
    got = responses(stream)
    outs = [outputs(r) for r, _ in got]
    assert len(got) == 2 and [f for _, f in got] == [0, 1]
    assert [o["num_output_tokens"] for o in outs] == [1, 8]
    assert outs[-1]["finish_reason"] == "length"
    assert "".join(o["text_output"] for o in outs) == offline_text("t4 t5", max_tokens=9, ignore_eos=True)
    responses(blocker)


def stream_done(model, sender) -> bool:
    """The engine has finished every request of `sender` (its responses may still wait)."""
    return not any(r.context.sender is sender for r in model.engine.requests())


# -- stop and cancellation ---------------------------------------------------------------------
def test_stop_ends_the_request_in_flight_with_that_id(start, pb):
    model = start()
    gate = model.engine.runner.gate
    gate.clear()
    target = make_request(
        pb,
        PROMPT,
        stream=True,
        sampling={"max_tokens": 40},
        request_id="a",
        extras=("finish_reason", "num_output_tokens"),
    )
    other = make_request(pb, PROMPT, sampling={"max_tokens": 6}, request_id="b", exclude_input_in_output=True)
    model.execute([target, other])
    stop = make_request(pb, "", request_id="a", stop=True)
    model.execute([stop])
    assert responses(stop) == [(None, 1)]  # answered at once, one empty final response
    gate.set()
    got = responses(target)
    assert outputs(got[-1][0])["finish_reason"] == "abort" and got[-1][1] == 1
    assert sum(outputs(r)["num_output_tokens"] for r, _ in got) < 40
    assert final_text(responses(other)) == offline_text(PROMPT, max_tokens=6)
    assert model.engine.stats.ended == {"cancelled": 1, "length": 1}


def test_stop_needs_a_request_id_and_is_idempotent(start, pb):
    model = start()
    no_id, unknown_id = run(
        model, make_request(pb, "", stop=True), make_request(pb, "", request_id="gone", stop=True)
    )
    assert "stop needs the id of the request to stop" in error_of(no_id)
    assert unknown_id == [(None, 1)]  # nothing with that id (it ended meanwhile) is not an error


def test_a_client_that_went_away_ends_its_request_and_the_others_go_on(start, pb):
    model = start()
    gate = model.engine.runner.gate
    gate.clear()
    extras = ("finish_reason", "num_output_tokens")
    gone = make_request(pb, PROMPT, stream=True, sampling={"max_tokens": 40}, extras=extras)
    staying = make_request(pb, PROMPT, stream=True, sampling={"max_tokens": 40}, extras=extras)
    model.execute([gone, staying])
    gone.get_response_sender().cancelled = True  # the client cancelled its call
    gate.set()
    got = responses(gone)
    assert outputs(got[-1][0])["finish_reason"] == "abort" and got[-1][1] == 1
    assert sum(outputs(r)["num_output_tokens"] for r, _ in got) < 40
    kept = responses(staying)
    assert outputs(kept[-1][0])["finish_reason"] == "length"
    assert sum(outputs(r)["num_output_tokens"] for r, _ in kept) == 40
    assert "".join(texts(kept)) == offline_text(PROMPT, max_tokens=40)
    assert model.engine.stats.ended == {"cancelled": 1, "length": 1}
    assert model.engine.free_slots == 8


# -- errors ----------------------------------------------------------------------------------
BAD_REQUESTS = {
    "no-text-input": (dict(text=None), "text_input (or input_ids, the prompt as token ids) is required"),
    "text-not-utf8": (dict(text=b"t1 \xff\xfe"), "text_input must be UTF-8 text"),
    "empty-text": (dict(text=""), "text_input must be a non-empty string"),
    "sampling-not-json": (dict(sampling="{max_tokens: 5"), "sampling_parameters: not valid JSON"),
    "unknown-field": (dict(sampling={"max_token": 5}), "unknown field(s) max_token"),
    "max-tokens-over-limit": (
        dict(sampling={"max_tokens": 21}),
        "max_tokens must be an integer in 1..20, got 21",
    ),
    "max-tokens-tensor-over-limit": (
        dict(tensors={"max_tokens": np.array([21], np.int32)}),
        "max_tokens must be an integer in 1..20, got 21",
    ),
    "prompt-over-window": (dict(text=" ".join(["t5"] * 100)), "text_input has 100 tokens; the limit is 95"),
    "beam-width": (dict(tensors={"beam_width": np.array([2], np.int32)}), "beam_width must be 1"),
    "stream-two-values": (
        dict(tensors={"stream": np.array([True, False])}),
        "stream must hold exactly one value",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_gets_one_error_naming_the_field_and_serving_goes_on(start, pb, case):
    model = start(max_tokens_limit=20)
    fields, message = BAD_REQUESTS[case]
    request = make_request(pb, **{"text": PROMPT, **fields})
    good = make_request(pb, PROMPT, sampling={"max_tokens": 4}, exclude_input_in_output=True)
    bad_got, good_got = run(model, request, good)
    assert message in error_of(bad_got)
    assert final_text(good_got) == offline_text(PROMPT, max_tokens=4)
    assert model.engine.stats.refused == {"rejected": 1}


def test_a_runner_failure_fails_its_request_and_serving_goes_on(start, pb):
    model = start()
    model.engine.runner.fail_next = "device fault"
    (failed,) = run(model, make_request(pb, PROMPT, stream=True, sampling={"max_tokens": 4}))
    assert error_of(failed) == "internal error during generation: device fault"
    (good,) = run(model, make_request(pb, PROMPT, sampling={"max_tokens": 4}, exclude_input_in_output=True))
    assert final_text(good) == offline_text(PROMPT, max_tokens=4)
    assert model.engine.stats.ended == {"error": 1, "length": 1}


def test_a_full_queue_answers_server_busy_without_disturbing_the_running_request(start, pb):
    model = start(slots=1, max_queue=0)
    gate = model.engine.runner.gate
    gate.clear()
    running = make_request(pb, PROMPT, sampling={"max_tokens": 5}, exclude_input_in_output=True)
    model.execute([running])
    busy, bad = make_request(pb, PROMPT), make_request(pb, None)
    model.execute([busy, bad])
    assert "server busy: all 1 KV slots in use" in error_of(responses(busy))
    assert "text_input (or input_ids, the prompt as token ids) is required" in error_of(responses(bad))
    assert model.engine.stats.refused == {"busy": 1, "rejected": 1}
    gate.set()
    assert final_text(responses(running)) == offline_text(PROMPT, max_tokens=5)
    (later,) = run(model, make_request(pb, PROMPT, sampling={"max_tokens": 2}, exclude_input_in_output=True))
    assert final_text(later) == offline_text(PROMPT, max_tokens=2)  # the slot is free again


# -- metrics and unloading ---------------------------------------------------------------------
def test_the_metrics_thread_exports_the_engine_figures(start, pb):
    model = start(slots=2, metrics_interval_s=0.05)
    families = pb.MetricFamily.families
    assert set(families) == {name for name, _, _, _ in llm_metrics.METRICS}

    def metric(name, **labels):
        (found,) = [
            m for m in families[name].metrics if m.labels == {"model": "gpt2", "version": "1", **labels}
        ]
        return found

    bad, good = run(
        model,
        make_request(pb, PROMPT, sampling={"max_tokens": 0}),
        make_request(pb, PROMPT, sampling={"max_tokens": 4}),
    )
    error_of(bad)
    final_text(good)
    wait_until(
        lambda: families[llm_metrics.SUCCESS].metrics and families[llm_metrics.E2E].metrics,
        "the request's end exported",
    )
    total = metric(llm_metrics.KV_TOTAL)
    flushes = total.updates
    wait_until(lambda: total.updates >= flushes + 2, "two more flushes")  # counted once, not again
    assert metric(llm_metrics.PROMPT_TOKENS).value() == 3
    assert metric(llm_metrics.GENERATION_TOKENS).value() == 4
    assert metric(llm_metrics.SUCCESS, finished_reason="length").value() == 1
    assert metric(llm_metrics.FAILURE, reason="rejected").value() == 1
    # the rejected request is answered by execute itself; the whole text is one response
    assert metric(llm_metrics.RESPONSES).value() == 1
    # the fake runner's costs: a 3-token prefill 13 ms, a decode step 8.5 ms
    ttft = metric(llm_metrics.TTFT)
    assert ttft.observations == [pytest.approx(0.013)]
    assert ttft.buckets == list(llm_metrics.TTFT_BUCKETS)
    assert metric(llm_metrics.ITL).observations == [pytest.approx(0.0085)] * 3
    assert metric(llm_metrics.E2E).observations == [pytest.approx(0.013 + 3 * 0.0085)]
    assert total.value() == 2
    assert metric(llm_metrics.KV_FREE).value() == 2
    assert metric(llm_metrics.KV_USAGE).value() == 0.0
    assert metric(llm_metrics.RUNNING).value() == 0
    assert metric(llm_metrics.WAITING).value() == 0


def test_flush_reports_slots_in_use_while_a_request_runs(start, pb):
    model = start(slots=2, metrics_interval_s=3600)  # no flush from the thread: the test flushes
    gate = model.engine.runner.gate
    gate.clear()
    request = make_request(pb, PROMPT, sampling={"max_tokens": 3})
    model.execute([request])
    wait_until(lambda: len(model.engine.running) == 1, "the request admitted")
    model.metrics.flush()
    families = pb.MetricFamily.families
    (usage,) = families[llm_metrics.KV_USAGE].metrics
    (running,) = families[llm_metrics.RUNNING].metrics
    (free,) = families[llm_metrics.KV_FREE].metrics
    assert (usage.value(), running.value(), free.value()) == (0.5, 1, 1)
    assert families[llm_metrics.PROMPT_TOKENS].metrics[0].value() == 3
    gate.set()
    final_text(responses(request))
    model.metrics.flush()
    assert (usage.value(), running.value(), free.value()) == (0.0, 0, 2)
    assert families[llm_metrics.GENERATION_TOKENS].metrics[0].value() == 3


def test_finalize_ends_a_running_request_with_a_shutdown_error(start, pb):
    model = start()
    gate = model.engine.runner.gate
    gate.clear()
    request = make_request(pb, PROMPT, stream=True, sampling={"max_tokens": 40})
    model.execute([request])
    unloading = threading.Thread(target=model.finalize)
    unloading.start()
    wait_until(model.stop.is_set, "finalize asked the generation loop to stop")
    gate.set()  # the step in progress completes; then the loop ends what is left
    unloading.join(WAIT_S)
    assert not unloading.is_alive() and not model.thread.is_alive()
    got = responses(request)
    (response, flags) = got[-1]
    assert flags == 1 and response.has_error()
    assert response.error().message().startswith("server is shutting down")
    assert len(got) <= 2  # at most the first token's response before it
    assert any("generation loop stopped" in msg for _, msg in pb.Logger.messages)
