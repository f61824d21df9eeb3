"""The two request schemas against the real server: the served text equals the engine's offline
text for the same parameters, each schema's requests generate what the equivalent request in the
other does, bad values are refused by name while the server serves on, and genai-perf profiles
the served model with both (when it is installed)."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from support import f32, flag, i32, words

from engine.config import EngineConfig
from engine.loader import load_engine
from engine.request_schema import SamplingParams
from engine.types import Sink
from serving.repository import versions


class _Text(Sink):
    def __init__(self):
        self.text = {}

    def on_text(self, request, text):
        self.text[id(request)] = self.text.get(id(request), "") + text


@pytest.fixture(scope="module")
def offline(fp32_repository):
    """The served version folder's engine in this process: (engine, text sink)."""
    folder = fp32_repository / "gpt2" / str(versions(fp32_repository / "gpt2")[-1])
    sink = _Text()
    return load_engine(str(folder), EngineConfig(slots=2), sink, intra_op_threads=1), sink


def _offline(offline, prompt: str, params: SamplingParams) -> tuple[str, list[int]]:
    """(text, tokens) of one request through the served version's engine, offline."""
    engine, sink = offline
    req = engine.submit(engine.encode_prompt(prompt, params), params)
    engine.run_until_done([req])
    # popped while `req` is alive: a later request may reuse its id() once it is freed
    return sink.text.pop(id(req), ""), req.tokens


def _new_token(tokens: list[int]) -> int:
    """The first token after the first that does not occur before it, else the first (the
    tiny model repeats itself)."""
    return next((t for k, t in enumerate(tokens) if k >= 1 and t not in tokens[:k]), tokens[0])


def _tensor(name, array, dtype):
    t = grpcclient.InferInput(name, list(array.shape), dtype)
    t.set_data_from_numpy(array)
    return t


def _text_input(prompt: str):
    return _tensor("text_input", np.array([prompt.encode()], dtype=np.object_), "BYTES")


def _sampling(text: str):
    return _tensor("sampling_parameters", np.array([text.encode()], dtype=np.object_), "BYTES")


_DTYPES = {np.int32: "INT32", np.float32: "FP32", np.bool_: "BOOL", np.uint64: "UINT64", np.object_: "BYTES"}


def _tensors(**arrays):
    return [_tensor(n, a, _DTYPES[a.dtype.type]) for n, a in arrays.items()]


def _stream(server, inputs) -> tuple[str, str | None, int]:
    """(text, error, text responses) of one raw streaming request, read to its final response."""
    out: queue.Queue = queue.Queue()
    texts, error = [], None
    with grpcclient.InferenceServerClient(server.grpc_url) as raw:
        raw.start_stream(callback=lambda result, error: out.put((result, error)))
        raw.async_stream_infer("gpt2", inputs, enable_empty_final_response=True)
        while True:
            result, err = out.get(timeout=30)
            if err is not None:
                error = str(err)
                break
            arr = result.as_numpy("text_output")
            if arr is not None and arr.size:
                texts.append(b"".join(arr.reshape(-1)).decode())
            final = result.get_response().parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                break
        raw.stop_stream()
    return "".join(texts), error, len(texts)


@pytest.mark.server
def test_numbers_as_strings_generate_what_numbers_do(server, client):
    sampling = '{"max_tokens": "8", "ignore_eos": "true", "temperature": "0", "repetition_penalty": "1.3"}'
    text, error, _ = _stream(server, [_text_input("The class"), _sampling(sampling)])
    assert error is None and text
    assert text == client.generate_text(
        "The class", max_tokens=8, ignore_eos=True, repetition_penalty=1.3, stream=False
    )


@pytest.mark.server
@pytest.mark.parametrize(
    "sampling, message",
    [
        ('{"max_tokens": 4, "frobnicate": 1}', "unknown field(s) frobnicate"),
        ('{"max_tokens": 4, "n": 2}', "n must be 1"),
        ('{"max_tokens": 4, "best_of": "2"}', "best_of must be 1"),
        ('{"presence_penalty": 5}', "presence_penalty must be a number in [-2, 2]"),
        ('{"max_tokens": 4, "min_tokens": 5}', "min_tokens must be an integer in 0..max_tokens (4)"),
        ('{"max_tokens": "lots"}', "max_tokens must be an integer in 1..127"),
    ],
)
def test_bad_vllm_fields_are_refused_by_name_and_the_server_serves_on(server, client, sampling, message):
    _, error, _ = _stream(server, [_text_input("hi"), _sampling(sampling)])
    assert error is not None and message in error
    assert client.generate_text("The class", max_tokens=3, ignore_eos=True, stream=False)


@pytest.mark.server
def test_min_tokens_holds_off_the_end_token_and_stop_strings(offline, client):
    """The tiny model never ends a text by itself, so a token of its greedy output is made an
    end token (vLLM's stop_token_ids; ignore_eos false): it ends the text at once without
    min_tokens, and not before the min_tokens-th token with it; the same for a stop string."""
    engine, _ = offline
    prompt = "Python is"
    _, plain = _offline(offline, prompt, SamplingParams(max_tokens=30))
    end = _new_token(plain)
    first = plain.index(end)
    cut = client.generate_text(prompt, max_tokens=30, stop_token_ids=[end], stream=False)
    assert cut == engine.tokenizer.decode(plain[: first + 1])
    for m in (first + 3, first + 9):
        ref_text, ref = _offline(
            offline, prompt, SamplingParams(max_tokens=30, min_tokens=m, stop_token_ids=(end,))
        )
        assert end not in ref[:m] and len(ref) > m
        served = client.generate_text(prompt, max_tokens=30, min_tokens=m, stop_token_ids=[end], stream=False)
        assert served == ref_text
    stop = engine.tokenizer.decode(plain[1:3])
    early = client.generate_text(prompt, max_tokens=30, stop=stop, stream=False)
    late = client.generate_text(prompt, max_tokens=30, stop=stop, min_tokens=8, stream=False)
    assert len(early) < len(engine.tokenizer.decode(plain[:3]))
    assert len(late) > len(early) and late.startswith(early)
    assert late == _offline(offline, prompt, SamplingParams(max_tokens=30, stop=(stop,), min_tokens=8))[0]


@pytest.mark.server
def test_penalties_change_the_greedy_text_as_the_engine_predicts(offline, client):
    prompt = "Python is"
    plain = client.generate_text(prompt, max_tokens=24, ignore_eos=True, stream=False)
    for kw in (
        {"repetition_penalty": 1.3},
        {"presence_penalty": 0.8},
        {"frequency_penalty": 0.6},
        {"repetition_penalty": 1.2, "presence_penalty": 0.4, "frequency_penalty": 0.4},
    ):
        served = client.generate_text(prompt, max_tokens=24, ignore_eos=True, stream=False, **kw)
        assert served == _offline(offline, prompt, SamplingParams(max_tokens=24, ignore_eos=True, **kw))[0]
        assert served != plain, kw
        streamed = "".join(client.generate_text(prompt, max_tokens=24, ignore_eos=True, **kw))
        assert streamed == served


@pytest.mark.server
def test_tensorrt_llm_tensors_generate_what_the_json_does(server, client, offline):
    cases = [
        (
            dict(max_tokens=i32(12), repetition_penalty=f32(1.3), presence_penalty=f32(0.5)),
            dict(max_tokens=12, repetition_penalty=1.3, presence_penalty=0.5),
        ),
        (
            dict(
                max_tokens=i32(16),
                temperature=f32(0.8),
                runtime_top_k=i32(20),
                runtime_top_p=f32(0.9),
                random_seed=np.array([7], np.uint64),
                frequency_penalty=f32(0.3),
                beam_width=i32(1),
                return_log_probs=flag(False),
            ),
            dict(max_tokens=16, temperature=0.8, top_k=20, top_p=0.9, seed=7, frequency_penalty=0.3),
        ),
        (
            dict(max_tokens=i32(16), min_length=i32(16), stop_words=words("\n"), bad_words=words("class")),
            dict(max_tokens=16, min_tokens=16, stop="\n", bad_words=["class"]),
        ),
    ]
    for tensors, fields in cases:
        for stream in (True, False):
            inputs = [_text_input("The class"), *_tensors(**tensors)]
            inputs += _tensors(stream=flag(stream), exclude_input_in_output=flag(True))
            text, error, _ = _stream(server, inputs)
            assert error is None, error
            assert text == client.generate_text("The class", stream=False, **fields), (tensors, stream)
    # end_id: TensorRT-LLM's end token replaces the model's EOS (and is not in the text)
    engine, _ = offline
    _, plain = _offline(offline, "The class", SamplingParams(max_tokens=20, ignore_eos=True))
    end = _new_token(plain)
    text, error, _ = _stream(
        server, [_text_input("The class"), *_tensors(max_tokens=i32(20), end_id=i32(end))]
    )
    assert error is None and text == engine.tokenizer.decode(plain[: plain.index(end)])


@pytest.mark.server
def test_genai_perf_payloads_are_served(server, client):
    """What genai-perf 0.0.16 sends for --backend tensorrtllm and vllm with --streaming and
    --output-tokens-mean 16 --output-tokens-mean-deterministic: 16 tokens each, streamed."""
    prompt = "The class of"
    ref = client.generate_text(prompt, max_tokens=16, min_tokens=16, stream=False)
    trtllm = [_text_input(prompt), *_tensors(max_tokens=i32(16), min_length=i32(16))]
    trtllm += _tensors(exclude_input_in_output=flag(True), stream=flag(True))
    vllm = [_text_input(prompt), _sampling('{"max_tokens": "16", "min_tokens": "16"}')]
    vllm += _tensors(exclude_input_in_output=flag(True), stream=flag(True))
    for inputs in (trtllm, vllm):
        text, error, responses = _stream(server, inputs)
        assert error is None and text == ref and responses > 1


@pytest.mark.server
def test_bad_tensors_are_refused_by_name_and_the_server_serves_on(server, client):
    for json_text, tensors, message in [
        (None, dict(beam_width=i32(2)), "beam_width must be 1"),
        (None, dict(return_generation_logits=flag(True)), "return_generation_logits must be false"),
        (None, dict(max_tokens=i32(0)), "max_tokens must be an integer in 1..127"),
        (None, dict(temperature=f32(-1)), "temperature must be a number"),
        (None, dict(runtime_top_p=f32(2)), "runtime_top_p must be a number in (0, 1]"),
        (
            None,
            dict(min_length=i32(50), max_tokens=i32(10)),
            "min_length must be an integer in 0..max_tokens (10)",
        ),
        (None, dict(end_id=i32(10**6)), "end_id must be a token id in 0.."),
        ('{"max_tokens": 5}', dict(max_tokens=i32(5)), "max_tokens is given twice"),
    ]:
        inputs = [_text_input("hi"), *_tensors(**tensors)]
        if json_text is not None:
            inputs.append(_sampling(json_text))
        _, error, _ = _stream(server, inputs)
        assert error is not None and message in error, (tensors, error)
    _, error, _ = _stream(
        server, [_text_input("hi"), _tensor("temperature", np.zeros(1, np.float64), "FP64")]
    )
    assert error is not None and "temperature" in error  # Triton's own datatype check names it
    assert client.generate_text("The class", max_tokens=3, ignore_eos=True, stream=False)


@pytest.mark.server
def test_http_generate_maps_top_level_fields_onto_the_tensors(server, client):
    """Triton's generate endpoint turns a top-level field named like an input into that tensor."""
    body = {"text_input": "The class", "max_tokens": 6, "repetition_penalty": 1.3, "temperature": 0}
    req = urllib.request.Request(
        f"http://{server.http_url}/v2/models/gpt2/generate", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        out = json.loads(r.read())
    assert out["text_output"] == client.generate_text(
        "The class", max_tokens=6, repetition_penalty=1.3, stream=False
    )


@pytest.mark.server
@pytest.mark.parametrize("backend", ["vllm", "tensorrtllm"])
def test_genai_perf_profiles_the_served_model(server, checkpoints, tmp_path, backend):
    """genai-perf against the served model with each backend's schema. genai-perf needs numpy 2
    (this environment pins 1.26), so it lives in a venv of its own on PATH; perf_analyzer is
    the binary in the tritonclient 2.48 wheel (later ones and PyPI's perf-analyzer 0.1.0 ship
    none), with libb64 and libcudart.so.12 on LD_LIBRARY_PATH."""
    genai_perf, perf_analyzer = shutil.which("genai-perf"), shutil.which("perf_analyzer")
    if genai_perf is None or perf_analyzer is None:
        pytest.skip("genai-perf or perf_analyzer is not on PATH (see this test's docstring)")
    artifacts = tmp_path / "artifacts"
    cmd = [genai_perf, "profile", "-m", "gpt2", "--backend", backend, "--endpoint-type", "kserve"]
    cmd += ["--streaming", "-u", server.grpc_url, "--tokenizer", str(checkpoints["gpt2"])]
    cmd += ["--synthetic-input-tokens-mean", "16", "--output-tokens-mean", "16", "--request-count", "8"]
    cmd += ["--output-tokens-mean-deterministic", "--artifact-dir", str(artifacts)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "Traceback" not in output and "error" not in output.lower(), output[-4000:]
    (export,) = artifacts.glob("*/profile_export_genai_perf.json")
    profile = json.loads(export.read_text())
    assert profile["request_count"]["avg"] == 8 and profile["time_to_first_token"]["avg"] > 0
    sent = json.loads(next(artifacts.glob("*/inputs.json")).read_text())["data"][0]
    expected = {"vllm": "sampling_parameters", "tensorrtllm": "min_length"}[backend]
    assert expected in sent  # the schema genai-perf really sent


@pytest.mark.server
def test_bench_puts_genai_perf_beside_its_own_client(server, checkpoints, tmp_path):
    """`aigc bench`'s genai-perf step on the served model: both schemas profiled with the
    bench's workload, each with its ratios to the bench's own one-stream figures (the
    agreement itself is a measurement, recorded in benchmarks/, not asserted here)."""
    from benchmarks import genai_perf, measure

    if genai_perf.locate("auto") is None:
        pytest.skip(
            "genai-perf or perf_analyzer is not on PATH (see test_genai_perf_profiles_the_served_model)"
        )
    ours = measure.served_concurrency(server.grpc_url, "The class", 12, 1, 4)
    out = genai_perf.run_beside("auto", server.grpc_url, checkpoints["gpt2"], ours, 8, 12, 8, tmp_path)
    assert set(out) == set(genai_perf.BACKENDS)
    for backend, r in out.items():
        assert "skipped" not in r, (backend, r)
        # genai-perf counts output tokens by re-encoding the text: the tiny model's repetitive
        # text re-encodes into fewer tokens than the 12 generated
        assert r["requests"] == 8 and 0 < r["output_tokens_per_request"] <= 12
        assert all(v > 0 for v in r["vs_ours"].values()), r["vs_ours"]
