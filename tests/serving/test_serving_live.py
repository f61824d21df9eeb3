"""The served models through the real Triton server and the real gRPC client."""

from __future__ import annotations

import json
import re
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2 as mc

from aigc.errors import ClientError
from engine.request_schema import TENSOR_INPUTS
from export.ortutil import make_session
from serving.repository import read_config

pytestmark = pytest.mark.server

PROMPTS = ["The class", "def ", "Python is", "x = 1"]
REPO_ROOT = Path(__file__).resolve().parents[2]


def _hf_greedy_text(checkpoint, prompt: str, n: int) -> str:
    from transformers import AutoTokenizer, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **ids, do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=tok.eos_token_id
        )
    return tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def test_server_is_ready_with_every_model(client):
    assert client.is_live() and client.is_ready()
    for model in ("dcgan", "vae_encoder", "vae_decoder", "gpt2"):
        assert client.is_ready(model), model


def test_config_files_parse_back_with_the_public_tensors(fp32_repository):
    cfg = {m: read_config(fp32_repository / m) for m in ("dcgan", "vae_encoder", "vae_decoder", "gpt2")}
    assert [i.name for i in cfg["dcgan"].input] == ["z"] and list(cfg["dcgan"].input[0].dims) == [100]
    assert cfg["dcgan"].output[0].name == "image" and cfg["dcgan"].output[0].data_type == mc.TYPE_UINT8
    assert [o.name for o in cfg["vae_encoder"].output] == ["mu", "logvar"]
    assert cfg["vae_encoder"].input[0].data_type == mc.TYPE_UINT8
    g = cfg["gpt2"]
    assert g.model_transaction_policy.decoupled
    inputs = {i.name: i.data_type for i in g.input}
    assert (
        inputs.items()
        >= {
            "text_input": mc.TYPE_STRING,
            "stream": mc.TYPE_BOOL,
            "sampling_parameters": mc.TYPE_STRING,
            "exclude_input_in_output": mc.TYPE_BOOL,
        }.items()
    )
    # TensorRT-LLM's optional sampling tensors are declared too, all optional
    assert {name for name, *_ in TENSOR_INPUTS} <= set(inputs)
    assert all(i.optional for i in g.input)  # the prompt: text_input or input_ids
    assert inputs["input_ids"] == mc.TYPE_INT64 and inputs["return_logprobs"] == mc.TYPE_BOOL
    # TensorRT-LLM's stop, and the vLLM backend's additional outputs with their flags
    assert {"stop", "return_finish_reason", "return_num_input_tokens", "return_num_output_tokens"} <= set(
        inputs
    )
    assert [o.name for o in g.output] == [
        "text_output",
        "finish_reason",
        "num_input_tokens",
        "num_output_tokens",
        "logprobs",
        "assets",
    ]
    for m in cfg.values():
        assert m.backend == "python"


def test_dcgan_images_equal_onnx_runtime(client, exports):
    z = np.random.default_rng().standard_normal((5, 100)).astype(np.float32)
    served = client.generate_images("dcgan", z=z)
    ref = make_session(exports["dcgan"] / "fp32" / "dcgan.onnx").run(["image"], {"z": z})[0]
    assert served.dtype == np.uint8 and served.shape == ref.shape
    np.testing.assert_array_equal(served, ref)


def test_vae_decode_and_encode_equal_onnx_runtime(client, exports):
    rng = np.random.default_rng()
    latent = client.input_shape("vae_decoder")[1][0]
    z = rng.standard_normal((3, latent)).astype(np.float32)
    np.testing.assert_array_equal(
        client.decode(z),
        make_session(exports["vae"] / "fp32" / "vae_decoder.onnx").run(["image"], {"z": z})[0],
    )
    images = rng.integers(0, 256, size=(2, 32, 32, 1), dtype=np.uint8)
    mu, logvar = client.encode(images)
    ref_mu, ref_logvar = make_session(exports["vae"] / "fp32" / "vae_encoder.onnx").run(
        None, {"image": images}
    )
    np.testing.assert_allclose(mu, ref_mu, atol=1e-6)
    np.testing.assert_allclose(logvar, ref_logvar, atol=1e-6)


def test_seeded_latents_repeat(client):
    a = client.generate_images("dcgan", n=3, seed=7)
    b = client.generate_images("dcgan", n=3, seed=7)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_greedy_text_equals_transformers_streamed_and_not(gpt2_client, checkpoints, prompt):
    client = gpt2_client
    ref = _hf_greedy_text(checkpoints["gpt2"], prompt, 24)
    deltas = list(client.generate_text(prompt, max_tokens=24, ignore_eos=True, stream=True))
    assert "".join(deltas) == ref
    assert len(deltas) > 1  # really streamed
    assert client.generate_text(prompt, max_tokens=24, ignore_eos=True, stream=False) == ref


def test_exclude_input_in_output_false_prepends_prompt(gpt2_client):
    client = gpt2_client
    text = client.generate_text("The class", max_tokens=5, ignore_eos=True, stream=False)
    full = client.generate_text(
        "The class", max_tokens=5, ignore_eos=True, stream=False, exclude_input_in_output=False
    )
    assert full == "The class" + text


def test_seeded_sampling_repeats_and_seeds_differ(gpt2_client):
    client = gpt2_client
    kw = dict(max_tokens=24, temperature=1.0, top_p=0.95, ignore_eos=True, stream=False)
    a = client.generate_text("The class", seed=11, **kw)
    assert a == client.generate_text("The class", seed=11, **kw)
    others = {client.generate_text("The class", seed=s, **kw) for s in (12, 13, 14)}
    assert others != {a}


def test_concurrent_streams_each_equal_their_solo_output(gpt2_server, checkpoints):
    """In-flight batching: concurrent requests of different lengths, joining at different
    times, each get exactly the greedy tokens they get alone."""
    from serving.client import AigcClient

    server = gpt2_server
    lengths = [30, 12, 20, 8]
    with AigcClient(server.grpc_url) as c:
        solo = [
            c.generate_text(p, max_tokens=n, ignore_eos=True, stream=False) for p, n in zip(PROMPTS, lengths)
        ]
    results = [None] * 4

    def worker(i):
        with AigcClient(server.grpc_url) as c:
            results[i] = "".join(c.generate_text(PROMPTS[i], max_tokens=lengths[i], ignore_eos=True))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == solo


def test_http_generate_endpoint(server):
    body = json.dumps(
        {"text_input": "The class", "sampling_parameters": json.dumps({"max_tokens": 6, "ignore_eos": True})}
    )
    req = urllib.request.Request(
        f"http://{server.http_url}/v2/models/gpt2/generate", data=body.encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        out = json.loads(r.read())
    assert out["model_name"] == "gpt2" and isinstance(out["text_output"], str) and out["text_output"]


def _raw_infer(server, model, name, array, dtype):
    with grpcclient.InferenceServerClient(server.grpc_url) as raw:
        inp = grpcclient.InferInput(name, list(array.shape), dtype)
        inp.set_data_from_numpy(array)
        return raw.infer(model, [inp])


@pytest.mark.parametrize(
    "array, dtype, expect",
    [
        (np.zeros((1, 100), np.float64), "FP64", "z"),
        (np.zeros((1, 7), np.float32), "FP32", "z"),
        (np.full((2, 100), np.nan, np.float32), "FP32", "NaN"),
        (np.zeros((65, 100), np.float32), "FP32", "batch"),
    ],
    ids=["wrong-dtype", "wrong-shape", "nan", "oversize-batch"],
)
def test_bad_image_requests_get_named_errors_and_server_keeps_serving(server, client, array, dtype, expect):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as err:
        _raw_infer(server, "dcgan", "z", array, dtype)
    assert expect.lower() in str(err.value).lower()
    assert client.generate_images("dcgan", n=1, seed=0).shape[0] == 1


def _raw_text(server, prompt: str, sampling: str) -> str:
    """The error message of a raw streaming request (bypassing client-side checks)."""
    import queue

    out: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(server.grpc_url) as raw:
        raw.start_stream(callback=lambda result, error: out.put((result, error)))
        t = grpcclient.InferInput("text_input", [1], "BYTES")
        t.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
        s = grpcclient.InferInput("sampling_parameters", [1], "BYTES")
        s.set_data_from_numpy(np.array([sampling.encode()], dtype=np.object_))
        raw.async_stream_infer("gpt2", [t, s])
        _, error = out.get(timeout=30)
        raw.stop_stream()
    assert error is not None
    return str(error)


@pytest.mark.parametrize(
    "prompt, sampling, field",
    [
        ("", "{}", "text_input"),
        ("word " * 400, "{}", "text_input"),
        ("hi", "{not json", "sampling_parameters"),
        ("hi", '{"beam_width": 2}', "beam_width"),
        ("hi", '{"max_tokens": 0}', "max_tokens"),
        ("hi", '{"max_tokens": 100000}', "max_tokens"),
        ("hi", '{"temperature": -1}', "temperature"),
        ("hi", '{"top_p": 1.5}', "top_p"),
    ],
    ids=[
        "empty",
        "too-long",
        "bad-json",
        "unknown-key",
        "max-tokens-0",
        "max-tokens-big",
        "temperature",
        "top-p",
    ],
)
def test_bad_text_requests_name_the_field_and_server_keeps_serving(
    gpt2_server, gpt2_client, prompt, sampling, field
):
    assert field in _raw_text(gpt2_server, prompt, sampling)
    assert gpt2_client.generate_text("The class", max_tokens=3, ignore_eos=True, stream=False)


def _stream_input(name: str, value) -> grpcclient.InferInput:
    if isinstance(value, bool):
        t = grpcclient.InferInput(name, [1], "BOOL")
        t.set_data_from_numpy(np.array([value], dtype=bool))
    else:
        t = grpcclient.InferInput(name, [1], "BYTES")
        t.set_data_from_numpy(np.array([value.encode()], dtype=np.object_))
    return t


def test_stop_input_ends_the_request_with_that_id_and_the_stream_serves_on(gpt2_server):
    """TensorRT-LLM's `stop`: sent with a running request's id on the same stream, it ends that
    request early (one empty final response each) without cancelling the gRPC call."""
    import queue

    long_tokens = 120  # most of the tiny model's 128-token window
    sampling = json.dumps({"max_tokens": long_tokens, "ignore_eos": True})
    out: queue.Queue = queue.Queue()

    def finals_and_deltas(n_finals: int) -> tuple[int, list]:
        deltas, finals = 0, []
        while len(finals) < n_finals:
            result, error = out.get(timeout=60)
            assert error is None, error
            response = result.get_response()
            deltas += result.as_numpy("text_output") is not None
            if response.parameters["triton_final_response"].bool_param:
                finals.append(response.id)
        return deltas, finals

    ended_early = []
    with grpcclient.InferenceServerClient(gpt2_server.grpc_url) as raw:
        raw.start_stream(callback=lambda result, error: out.put((result, error)))

        def send(inputs, rid):
            raw.async_stream_infer("gpt2", inputs, request_id=rid, enable_empty_final_response=True)

        # The tiny model writes its whole window in ~0.1 s: a stop can come too late on a
        # loaded machine, so up to 20 tries; without `stop` every one runs to the end.
        for attempt in range(20):
            rid = f"long-{attempt}"
            send(
                [
                    _stream_input("text_input", "The class"),
                    _stream_input("sampling_parameters", sampling),
                    _stream_input("stream", True),
                ],
                rid,
            )
            result, error = out.get(timeout=60)  # the first token
            assert error is None, error
            send([_stream_input("text_input", ""), _stream_input("stop", True)], rid)
            deltas, finals = finals_and_deltas(2)
            assert finals == [rid, rid]  # the request's final and the stop's, both empty
            if 1 + deltas < long_tokens:
                ended_early.append(1 + deltas)
                break
        # Stopping an id with nothing in flight is a no-op with an empty final; the stream
        # then carries the next request as usual.
        send([_stream_input("text_input", ""), _stream_input("stop", True)], "nothing-running")
        assert finals_and_deltas(1)[1] == ["nothing-running"]
        send(
            [
                _stream_input("text_input", "The class"),
                _stream_input("sampling_parameters", '{"max_tokens": 3, "ignore_eos": true}'),
            ],
            "after",
        )
        assert finals_and_deltas(1)[1] == ["after"]
        raw.stop_stream()
    assert ended_early, "every stopped request ran to its last token"
    assert "stop needs the id" in _raw_stop_without_id(gpt2_server)


def _raw_stop_without_id(server) -> str:
    import queue

    out: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(server.grpc_url) as raw:
        raw.start_stream(callback=lambda result, error: out.put((result, error)))
        raw.async_stream_infer("gpt2", [_stream_input("text_input", ""), _stream_input("stop", True)])
        _, error = out.get(timeout=30)
        raw.stop_stream()
    assert error is not None
    return str(error)


def _recorded_calls(monkeypatch) -> list:
    """The client's gRPC calls (`serving.client._Call`), as they are opened."""
    from serving import client as client_module

    calls = []
    open_call = client_module.AigcClient._open

    def recording(self, *args, **kwargs):
        calls.append(open_call(self, *args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(client_module.AigcClient, "_open", recording)
    return calls


def test_client_leaving_a_stream_stops_the_request_without_cancelling_its_call(gpt2_client, monkeypatch):
    """A caller that stops reading ends its request on the server with `stop` (a call of its
    own), and the request's call is read to its end, not cancelled (Triton 2.51 can abort
    when a stream is cancelled while it writes a response)."""
    import grpc

    calls = _recorded_calls(monkeypatch)
    for _ in range(3):
        stream = gpt2_client.generate_text("The class", max_tokens=100, ignore_eos=True)
        next(stream)
        stream.close()
    assert len(calls) == 6  # each request, then its stop
    assert all(c.ended and c.call.code() == grpc.StatusCode.OK for c in calls)
    text = gpt2_client.generate_text("The class", max_tokens=4, ignore_eos=True, stream=False)
    assert text and calls[-1].call.code() == grpc.StatusCode.OK


def test_client_times_out_a_late_request_stops_it_and_serves_the_next(gpt2_client, monkeypatch):
    """No response within `timeout_s` is a ClientError naming the model and the timeout; the
    request is ended with `stop`, its call read to its end rather than cancelled, and the
    next request is answered."""
    import grpc

    calls = _recorded_calls(monkeypatch)
    with pytest.raises(ClientError, match=r"no response from gpt2 within 0.0001 s"):
        list(gpt2_client.generate_text("The class " * 30, max_tokens=50, timeout_s=0.0001))
    late, stop = calls[0], calls[1]
    assert stop.request_id == late.request_id
    assert late.ended and late.call.code() == grpc.StatusCode.OK
    details: dict = {}
    assert "".join(gpt2_client.generate_text("The class", max_tokens=3, ignore_eos=True, details=details))
    assert details["completion_tokens"] == 3 and details["finish_reason"] == "length"


def test_one_thread_reads_several_streams_and_the_client_starts_no_thread_per_stream(gpt2_client):
    """Responses are read in the caller's thread: one thread may interleave several streams,
    each still its solo text, and the client adds at most its one timeout thread."""
    prompts = ["The class", "A list of", "def main", "import sys"]
    solo = [gpt2_client.generate_text(p, max_tokens=8, ignore_eos=True, stream=False) for p in prompts]
    before = threading.active_count()
    streams = [gpt2_client.generate_text(p, max_tokens=8, ignore_eos=True) for p in prompts]
    texts, live, most = ["" for _ in prompts], set(range(len(prompts))), before
    while live:
        for i in sorted(live):
            try:
                texts[i] += next(streams[i])
            except StopIteration:
                live.discard(i)
            most = max(most, threading.active_count())
    assert texts == solo
    assert most <= before + 1


def _scrape(server) -> dict[tuple[str, frozenset], float]:
    """The metrics endpoint as {(name, labels): value} (Prometheus text format)."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def _settled_scrape(server) -> dict:
    """A scrape once the model's exporter (1 s interval) has nothing left to flush: two scrapes
    2.5 s apart agree."""
    import time

    last = _scrape(server)
    for _ in range(20):
        time.sleep(2.5)
        now = _scrape(server)
        llm = {k: v for k, v in now.items() if k[0].startswith(("vllm:", "aigc:"))}
        if llm and llm == {k: v for k, v in last.items() if k[0].startswith(("vllm:", "aigc:"))}:
            return now
        last = now
    raise AssertionError("the gpt2 metrics kept changing with no request running")


def test_metrics_endpoint_reports_llm_latency_tokens_and_slots(server, client, fp32_repository):
    from tokenizers import Tokenizer

    from engine import metrics as lm
    from serving.repository import versions

    version = str(versions(fp32_repository / "gpt2")[-1])
    gpt2 = {("model", "gpt2"), ("version", version)}

    def value(scrape, name, **extra):
        return scrape.get((name, frozenset(gpt2 | set(extra.items()))), 0.0)

    prompt, n_req, n_tok = "The class", 3, 6
    before = _settled_scrape(server)
    for _ in range(n_req):
        assert client.generate_text(prompt, max_tokens=n_tok, ignore_eos=True, stream=False)
    assert "max_tokens" in _raw_text(server, "hi", '{"max_tokens": 0}')
    after = _settled_scrape(server)

    def delta(name, **extra):
        return value(after, name, **extra) - value(before, name, **extra)

    tokenizer = Tokenizer.from_file(str(fp32_repository / "gpt2" / version / "tokenizer.json"))
    assert delta(lm.PROMPT_TOKENS) == n_req * len(tokenizer.encode(prompt).ids)
    assert delta(lm.GENERATION_TOKENS) == n_req * n_tok
    assert delta(lm.SUCCESS, finished_reason="length") == n_req
    assert delta(lm.FAILURE, reason="rejected") == 1
    assert delta(lm.RESPONSES) == n_req  # a whole text is one response
    assert delta(lm.TTFT + "_count") == n_req
    assert delta(lm.ITL + "_count") == n_req * (n_tok - 1)
    assert delta(lm.E2E + "_count") == n_req
    for name in (lm.TTFT, lm.ITL, lm.E2E):  # plausible seconds, and the buckets add up
        mean = delta(name + "_sum") / delta(name + "_count")
        assert 0 < mean < 30, (name, mean)
        assert delta(name + "_bucket", le="+Inf") == delta(name + "_count")
    assert value(after, lm.TTFT + "_sum") > 0
    params = read_config(fp32_repository / "gpt2").parameters
    slots = int(params["slots"].string_value)
    rows = int(params["max_sequences"].string_value) or max(slots, 64)  # rows committed by use
    assert value(after, lm.KV_TOTAL) == rows and value(after, lm.KV_FREE) == rows
    assert value(after, lm.RUNNING) == 0 and value(after, lm.WAITING) == 0
    assert value(after, lm.KV_USAGE) == 0
    # Triton's own per-model counters sit beside them
    assert value(after, "nv_inference_request_success") > value(before, "nv_inference_request_success")
    # every series the sample Grafana dashboard queries is one this server exports
    dashboard = json.loads((REPO_ROOT / "deploy" / "grafana" / "aigc-llm-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queried = {name for e in exprs for name in re.findall(r"([a-z_][a-z0-9_]*(?::[a-z0-9_]+)?)\{", e)}
    exported = {name for name, _ in after}
    assert queried and queried <= exported, sorted(queried - exported)


def test_finish_reason_and_token_counts_come_from_the_server(gpt2_client, gpt2_server, fp32_repository):
    """The vLLM backend's additional outputs (return_finish_reason, return_num_input_tokens,
    return_num_output_tokens): exact counts and the reason, streamed and not."""
    from tokenizers import Tokenizer

    from serving.repository import versions

    folder = fp32_repository / "gpt2" / str(versions(fp32_repository / "gpt2")[-1])
    prompt_ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode("The class").ids
    for stream in (True, False):
        info: dict = {}
        out = gpt2_client.generate_text(
            "The class", max_tokens=9, ignore_eos=True, stream=stream, details=info
        )
        text = out if isinstance(out, str) else "".join(out)
        assert text and info == {
            "finish_reason": "length",
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": 9,
        }
    # a stop string ends the text early: "stop", and the tokens generated up to it
    plain = gpt2_client.generate_text("The class", max_tokens=20, ignore_eos=True, stream=False)
    stop = plain[len(plain) // 2 :][:3]
    info = {}
    text = "".join(
        gpt2_client.generate_text("The class", max_tokens=20, ignore_eos=True, stop=stop, details=info)
    )
    assert text == plain[: plain.find(stop)]
    assert info["finish_reason"] == "stop" and 0 < info["completion_tokens"] < 20
    # without the flags a response carries text only
    import queue

    out: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(gpt2_server.grpc_url) as raw:
        raw.start_stream(callback=lambda result, error: out.put((result, error)))
        sampling = _stream_input("sampling_parameters", '{"max_tokens": 2, "ignore_eos": true}')
        raw.async_stream_infer("gpt2", [_stream_input("text_input", "The class"), sampling])
        result, error = out.get(timeout=30)
        raw.stop_stream()
    assert (
        error is None
        and result.as_numpy("finish_reason") is None
        and result.as_numpy("text_output") is not None
    )


def test_client_checks_arguments_before_sending(client):
    with pytest.raises(ClientError, match="max_tokens must be an integer >= 1, got 0"):
        client.generate_text("hi", max_tokens=0)
    with pytest.raises(ClientError, match="z: contains NaN or infinite values"):
        client.generate_images("dcgan", z=np.full((1, 100), np.inf, np.float32))
    with pytest.raises(ClientError, match="n must be an integer in 1..4096, got 0"):
        client.generate_images("dcgan", n=0)


def test_short_soak_has_no_unexpected_errors_and_bounded_memory(server):
    from benchmarks.soak import SoakOptions, check, run_soak

    result = run_soak(
        SoakOptions(
            url=server.grpc_url, duration_s=15, clients=6, bad_share=0.25, server_pids=(server.process.pid,)
        )
    )
    assert server.process.poll() is None, "tritonserver exited during the soak"
    assert result["total_requests"] > 10
    assert result["unexpected_error_count"] == 0, result["unexpected_errors"]
    assert sum(result["expected_errors"].values()) > 0  # the bad requests really were sent and rejected
    check(result, max_growth_mb=200)
