"""The OpenAI-compatible frontend (serving/openai_api) against the real Triton server through
the real `openai` client; `aigc serve --openai-port` as a process for the disconnect test.
The request parsing without a server is test_openai_protocol.py."""

from __future__ import annotations

import http.client
import json
import logging
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import openai
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from support import metric_total, newest_version, start_server
from tokenizers import Tokenizer

from engine.config import EngineConfig
from serving.builder import BuildOptions, build_repository
from serving.client import AigcClient
from serving.control import reload
from serving.openai_api import OpenAIFrontend
from serving.openai_api.protocol import ChatTemplate
from serving.repository import read_config

PROMPT = "The class"
N = 12


@pytest.fixture(scope="module")
def api(server, fp32_repository):
    with OpenAIFrontend(server.grpc_url, fp32_repository) as frontend:
        yield frontend


@pytest.fixture()
def oai(api):
    return openai.OpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tokenizer(fp32_repository):
    return Tokenizer.from_file(str(newest_version(fp32_repository) / "tokenizer.json"))


def _count(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text).ids) if text else 0


def _post(url: str, path: str, body, timeout: float = 60) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request("POST", path, data, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _start_logged(cmd: list[str], pattern: str, timeout_s: float):
    """Start `cmd` and wait for a line of its stderr matching `pattern`: (process, the match
    or None, the lines so far, still filling)."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    regex = re.compile(pattern)
    deadline, found = time.monotonic() + timeout_s, None
    while found is None and time.monotonic() < deadline and proc.poll() is None:
        found = next((m for line in list(lines) if (m := regex.search(line))), None)
        time.sleep(0.1)
    return proc, found, lines


# -- against the live server -----------------------------------------------------------------
@pytest.mark.server
def test_a_request_just_after_a_version_switch_runs_on_the_new_version(exports, tmp_path, caplog):
    """The frontend does not ask the server's index on every request: it takes the one last
    asked. A request right after a switch still runs on the new version: its generation names
    the version whose tokenizer made its prompt, the old one (unloaded) refuses it before any
    text, and the frontend starts it again on the version now served."""
    repo = tmp_path / "repo"
    options = BuildOptions(variant="fp32", intra_op_threads=1)
    build_repository([exports["gpt2"]], repo, options)
    srv = start_server(repo)
    body = {"model": "gpt2", "prompt": PROMPT, "max_tokens": 4, "temperature": 0}

    def served_by(version: str) -> int:
        with grpcclient.InferenceServerClient(srv.grpc_url) as c:
            stats = c.get_inference_statistics("gpt2", version, as_json=True)["model_stats"][0]
        return int(stats["inference_stats"].get("success", {}).get("count", 0))

    try:
        with OpenAIFrontend(srv.grpc_url, repo) as frontend:
            status, first = _post(frontend.url, "/v1/completions", body)
            assert status == 200, first
            build_repository([exports["gpt2"]], repo, options)
            assert reload(srv.grpc_url, "gpt2") == 2
            before = served_by("2")
            with caplog.at_level(logging.INFO, logger="serving.openai_api.app"):
                status, second = _post(frontend.url, "/v1/completions", body)
            assert status == 200, second
            assert second["choices"][0]["text"] == first["choices"][0]["text"]  # the same weights
            after = served_by("2")
            assert after > before  # (its count may take in the frontend's asking for the tokenizer)
            assert "gpt2 version 1 is no longer served: the request goes to version 2" in caplog.text
            # and the index now known is the new one: no refusal, no second start
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="serving.openai_api.app"):
                status, third = _post(frontend.url, "/v1/completions", body)
            assert status == 200 and served_by("2") > after
            assert "no longer served" not in caplog.text
    finally:
        srv.stop()


@pytest.mark.server
def test_the_benchs_sse_streamer_reads_what_the_client_gets_on_one_kept_connection(api, client):
    """`benchmarks.measure.OpenAIStreamer`, which times the frontend in `aigc bench`: its
    chunks join to the gRPC client's greedy text, request after request on one connection."""
    from benchmarks.measure import OpenAIStreamer

    want = client.generate_text(PROMPT, max_tokens=N, ignore_eos=True, stream=False)
    with OpenAIStreamer(api.url) as streamer:
        first = list(streamer.generate_text(PROMPT, N))
        sock = streamer.conn.sock
        second = list(streamer.generate_text(PROMPT, N))
        assert streamer.conn.sock is sock  # the connection was kept
    assert "".join(first) == "".join(second) == want and len(first) >= 1


@pytest.mark.server
def test_models_lists_the_text_models_only(oai):
    assert [m.id for m in oai.models.list().data] == ["gpt2"]  # not dcgan / vae_*
    assert oai.models.retrieve("gpt2").id == "gpt2"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("dcgan")


@pytest.mark.server
def test_completion_equals_the_client_with_usage(oai, client, tokenizer):
    ref = client.generate_text(PROMPT, max_tokens=N, stream=False)
    r = oai.completions.create(model="gpt2", prompt=PROMPT, max_tokens=N, temperature=0)
    assert r.object == "text_completion" and r.model == "gpt2" and len(r.choices) == 1
    assert r.choices[0].text == ref
    assert r.usage.prompt_tokens == _count(tokenizer, PROMPT)
    assert r.usage.completion_tokens == _count(tokenizer, ref)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.choices[0].finish_reason == ("length" if r.usage.completion_tokens == N else "stop")

    # EOS ignored (vLLM's extra field): exactly N tokens, finish_reason "length"
    r = oai.completions.create(
        model="gpt2", temperature=0, prompt=PROMPT, max_tokens=N, extra_body={"ignore_eos": True}
    )
    assert r.usage.completion_tokens == N and r.choices[0].finish_reason == "length"
    assert r.choices[0].text == client.generate_text(PROMPT, max_tokens=N, ignore_eos=True, stream=False)

    echoed = oai.completions.create(model="gpt2", temperature=0, prompt=[PROMPT], max_tokens=N, echo=True)
    assert echoed.choices[0].text == PROMPT + ref


@pytest.mark.server
def test_completion_stream_equals_the_client(oai, client, tokenizer):
    ref = client.generate_text(PROMPT, max_tokens=N, stream=False)
    chunks = list(
        oai.completions.create(
            model="gpt2",
            temperature=0,
            prompt=PROMPT,
            max_tokens=N,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    *text_chunks, last, usage_chunk = chunks
    assert len({c.id for c in chunks}) == 1
    assert "".join(c.choices[0].text for c in text_chunks) == ref
    assert all(c.choices[0].finish_reason is None for c in text_chunks)
    assert last.choices[0].finish_reason in ("stop", "length") and last.choices[0].text == ""
    assert usage_chunk.choices == []
    assert usage_chunk.usage.prompt_tokens == _count(tokenizer, PROMPT)
    assert usage_chunk.usage.completion_tokens == _count(tokenizer, ref)


@pytest.mark.server
def test_chat_uses_the_plain_template_and_equals_the_client(oai, client, tokenizer):
    messages = [
        {"role": "system", "content": "You write Python."},
        {"role": "user", "content": "Define a class"},
    ]
    prompt = "system: You write Python.\nuser: Define a class\nassistant:"
    ref = client.generate_text(prompt, max_tokens=N, stream=False)
    r = oai.chat.completions.create(model="gpt2", temperature=0, messages=messages, max_completion_tokens=N)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == ref
    assert r.usage.prompt_tokens == _count(tokenizer, prompt)
    assert r.usage.completion_tokens == _count(tokenizer, ref)

    stream = oai.chat.completions.create(
        model="gpt2", temperature=0, messages=messages, max_tokens=N, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ref
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


@pytest.mark.server
def test_stop_and_seed_map_onto_the_sampling_parameters(oai, client):
    ref = client.generate_text(PROMPT, max_tokens=N, stream=False)
    stop = ref[len(ref) // 2 : len(ref) // 2 + 3]
    r = oai.completions.create(
        model="gpt2", temperature=0, prompt=PROMPT, max_tokens=N, stop=["\x00never", stop]
    )
    assert r.choices[0].text == ref[: ref.find(stop)] and r.choices[0].finish_reason == "stop"

    sampled = dict(temperature=0.9, top_p=0.95, seed=7)
    a = oai.completions.create(model="gpt2", prompt=PROMPT, max_tokens=N, **sampled)
    b = oai.completions.create(model="gpt2", prompt=PROMPT, max_tokens=N, **sampled)
    assert a.choices[0].text == b.choices[0].text
    assert a.choices[0].text == client.generate_text(PROMPT, max_tokens=N, stream=False, **sampled)


@pytest.mark.server
def test_penalties_reach_the_server_sampler(oai, client):
    """OpenAI's presence and frequency penalties, and vLLM's repetition_penalty and min_tokens
    through extra_body, generate what the same fields do through the gRPC client."""
    plain = client.generate_text(PROMPT, max_tokens=N, ignore_eos=True, stream=False)
    fields = dict(presence_penalty=0.8, frequency_penalty=0.6)
    extra = {"repetition_penalty": 1.3, "min_tokens": 4, "ignore_eos": True}
    r = oai.completions.create(
        model="gpt2", temperature=0, prompt=PROMPT, max_tokens=N, extra_body=extra, **fields
    )
    ref = client.generate_text(PROMPT, max_tokens=N, stream=False, **fields, **extra)
    assert r.choices[0].text == ref and ref != plain
    chat = [{"role": "user", "content": PROMPT}]
    streamed = oai.chat.completions.create(
        model="gpt2", temperature=0, messages=chat, max_tokens=N, stream=True, extra_body=extra, **fields
    )
    whole = oai.chat.completions.create(
        model="gpt2", temperature=0, messages=chat, max_tokens=N, extra_body=extra, **fields
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == whole.choices[0].message.content


@pytest.mark.server
def test_usage_and_finish_reason_are_the_servers_counts(oai, client):
    """usage and finish_reason come from the server's own counts (the model's return_* outputs):
    a stop string's tokens count as generated though the text ends before them."""
    plain = client.generate_text(PROMPT, max_tokens=N, ignore_eos=True, stream=False)
    stop = plain[len(plain) // 2 :][:3]
    info: dict = {}
    ref = client.generate_text(PROMPT, max_tokens=N, ignore_eos=True, stop=stop, stream=False, details=info)
    extra = {"ignore_eos": True}
    r = oai.completions.create(
        model="gpt2", temperature=0, prompt=PROMPT, max_tokens=N, stop=stop, extra_body=extra
    )
    assert r.choices[0].text == ref and r.choices[0].finish_reason == info["finish_reason"] == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (
        info["prompt_tokens"],
        info["completion_tokens"],
    )
    stream = oai.completions.create(
        model="gpt2",
        temperature=0,
        prompt=PROMPT,
        max_tokens=N,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra,
    )
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == N and chunks[-2].choices[0].finish_reason == "length"


@pytest.mark.server
@pytest.mark.parametrize(
    "fields, param, words",
    [
        ({"temperature": 5}, "temperature", ["temperature", "0..2"]),
        ({"top_p": 0}, "top_p", ["top_p", "(0, 1]"]),
        ({"n": 65}, "n", ["n must be an integer in 1..64"]),
        ({"n": 2, "best_of": 1}, "best_of", ["best_of must be an integer in 2..64"]),
        ({"best_of": 2, "stream": True}, "best_of", ["cannot stream"]),
        ({"max_tokens": 1000}, "max_tokens", ["max_tokens", "1..127"]),
        ({"prompt": "x " * 200}, "prompt", ["text_input has 400 tokens", "limit is 127"]),  # the server's
        ({"max_tokens": 127}, "max_tokens", ["context window of 128"]),  # the server's
        ({"logprobs": 21}, "logprobs", ["logprobs must be an integer in 0..20"]),
        ({"max_tokens": 0}, "max_tokens", ["max_tokens 0 needs echo"]),
        ({"prompt": [[1, 2], "x"]}, "prompt", ["list of token ids"]),
        ({"stream": True, "temperature": -1}, "temperature", ["0..2"]),
    ],
)
def test_bad_completion_fields_are_400s_naming_the_field(oai, fields, param, words):
    args = {"model": "gpt2", "prompt": PROMPT, "max_tokens": 4} | fields
    with pytest.raises(openai.BadRequestError) as err:
        oai.completions.create(**args)
    assert err.value.status_code == 400
    assert err.value.body["param"] == param and err.value.body["type"] == "invalid_request_error"
    for w in words:
        assert w in err.value.body["message"]


@pytest.mark.server
def test_bad_chat_fields_unknown_models_and_bad_json(oai, api):
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(
            model="gpt2", temperature=0, messages=[{"role": "user", "content": "x"}], max_completion_tokens=0
        )
    assert err.value.body["param"] == "max_completion_tokens"
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="gpt2", temperature=0, messages=[{"role": "robot", "content": "x"}])
    assert err.value.body["param"] == "messages" and "role" in err.value.body["message"]
    with pytest.raises(openai.NotFoundError) as err:
        oai.completions.create(model="gpt-4o", prompt=PROMPT)
    assert err.value.body["code"] == "model_not_found" and "gpt2" in err.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}], stream=True)
    status, body = _post(api.url, "/v1/completions", b"{not json")
    assert status == 400 and set(body["error"]) == {"message", "type", "param", "code"}
    # the server answers as usual afterwards
    assert (
        oai.completions.create(model="gpt2", temperature=0, prompt=PROMPT, max_tokens=2).choices[0].text
        is not None
    )


def _get(url: str, path: str) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.mark.server
def test_tokenize_detokenize_and_version(api, tokenizer):
    ids = tokenizer.encode(PROMPT).ids
    status, body = _post(api.url, "/tokenize", {"model": "gpt2", "prompt": PROMPT, "return_token_strs": True})
    assert status == 200 and body["tokens"] == ids and body["count"] == len(ids)
    assert body["max_model_len"] == 128 and body["token_strs"] == [tokenizer.id_to_token(i) for i in ids]
    chat = {"model": "gpt2", "messages": [{"role": "user", "content": "hi"}]}
    assert _post(api.url, "/tokenize", chat)[1]["tokens"] == tokenizer.encode("user: hi\nassistant:").ids
    assert _post(api.url, "/detokenize", {"model": "gpt2", "tokens": ids}) == (200, {"prompt": PROMPT})
    status, body = _post(api.url, "/detokenize", {"model": "gpt2", "tokens": [10**7]})
    assert status == 400 and body["error"]["param"] == "tokens"
    status, body = _get(api.url, "/version")
    assert status == 200 and body["version"]
    # vLLM's tokenizer routes without a model where one text model is served
    # (lm-evaluation-harness's tokenizer_backend=remote sends none)
    assert _post(api.url, "/tokenize", {"prompt": PROMPT, "add_special_tokens": False})[1]["tokens"] == ids
    assert _post(api.url, "/detokenize", {"tokens": ids}) == (200, {"prompt": PROMPT})
    status, info = _get(api.url, "/tokenizer_info")
    assert status == 200 and info["model"] == "gpt2" and info["model_max_length"] == 128
    eos = tokenizer.id_to_token(0)  # the tiny tokenizer's end of text (model_info.json)
    assert info["eos_token"] == eos and _post(api.url, "/tokenize", {"prompt": eos})[1]["tokens"] == [0]
    assert "{% for message in messages %}" in info["chat_template"]
    assert _get(api.url, "/tokenizer_info?model=nope")[0] == 404


@pytest.mark.server
def test_unknown_fields_are_ignored_and_engine_fields_pass_through(oai, client, tokenizer):
    ref = client.generate_text(PROMPT, max_tokens=N, ignore_eos=True, stream=False)
    extra = {"ignore_eos": True, "a_field_from_the_future": {"x": 1}, "user_tags": ["a"]}
    r = oai.completions.create(model="gpt2", temperature=0, prompt=PROMPT, max_tokens=N, extra_body=extra)
    assert r.choices[0].text == ref
    # stop_token_ids: the text ends before the first of them (vLLM's field)
    stop_id = tokenizer.encode(PROMPT + ref).ids[len(tokenizer.encode(PROMPT).ids) + 3]
    fields = {"stop_token_ids": [stop_id], "ignore_eos": True}
    r = oai.completions.create(model="gpt2", temperature=0, prompt=PROMPT, max_tokens=N, extra_body=fields)
    assert r.choices[0].text == client.generate_text(PROMPT, max_tokens=N, stream=False, **fields)
    assert r.choices[0].finish_reason == "stop" and len(r.choices[0].text) < len(ref)


@pytest.mark.server
def test_temperature_defaults_to_the_models_generation_config_else_one(oai, client):
    """OpenAI's and vLLM's default: sampling at temperature 1 (this checkpoint sets none)."""
    r = oai.completions.create(model="gpt2", prompt=PROMPT, max_tokens=N, seed=11)
    sampled = client.generate_text(PROMPT, max_tokens=N, stream=False, temperature=1.0, seed=11)
    assert r.choices[0].text == sampled


@pytest.mark.server
def test_the_frontend_needs_only_triton_the_assets_come_through_it(server, client, tokenizer):
    """No repository folder: the tokenizer and model info come from the served model
    (`return_assets`), as they must when Triton reads its repository from S3."""
    assets = client.model_assets("gpt2")
    assert assets["model_info"]["n_positions"] == 128 and "model" in json.loads(assets["tokenizer"])
    with OpenAIFrontend(server.grpc_url, None) as frontend:
        oai = openai.OpenAI(base_url=f"{frontend.url}/v1", api_key="unused", max_retries=0, timeout=60)
        r = oai.completions.create(model="gpt2", prompt=PROMPT, max_tokens=N, temperature=0)
        assert r.choices[0].text == client.generate_text(PROMPT, max_tokens=N, stream=False)
        assert (
            _post(frontend.url, "/tokenize", {"model": "gpt2", "prompt": PROMPT})[1]["tokens"]
            == tokenizer.encode(PROMPT).ids
        )


@pytest.mark.server
def test_the_frontend_runs_alone_as_a_process_in_front_of_triton(server):
    """`python -m serving.openai_api` (what deploy/k8s runs beside Triton): no repository,
    no rest of the CLI; SIGTERM stops it cleanly."""
    cmd = [sys.executable, "-m", "serving.openai_api", "--triton-url", server.grpc_url, "--port", "0"]
    proc, found, lines = _start_logged(cmd, r"OpenAI-compatible API on (http://\S+)/v1", 60)
    try:
        assert found, "".join(lines)
        assert _get(found.group(1), "/v1/models")[1]["data"][0]["id"] == "gpt2"
        status, body = _post(
            found.group(1), "/v1/completions", {"model": "gpt2", "prompt": PROMPT, "max_tokens": 2}
        )
        assert status == 200 and body["choices"][0]["text"] is not None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, "".join(lines)


STRUCTURED_SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 10},
            "n": {"type": "integer", "minimum": 0, "maximum": 99},
        },
        "required": ["name", "n"],
        "additionalProperties": False,
    },
    {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 3},
    {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]$"}, "ok": {"type": "boolean"}},
        "required": ["code", "ok"],
        "additionalProperties": False,
    },
]


@pytest.mark.server
def test_structured_output_through_openai_and_vllm_fields(oai, api):
    import jsonschema

    for i, schema in enumerate(STRUCTURED_SCHEMAS):
        fmt = {"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema, "strict": True}}
        chat = oai.chat.completions.create(
            model="gpt2",
            messages=[{"role": "user", "content": "JSON:"}],
            max_tokens=80,
            response_format=fmt,
            temperature=1.0,
            seed=i,
        )
        jsonschema.validate(json.loads(chat.choices[0].message.content), schema)
        done = oai.completions.create(
            model="gpt2", prompt="Data:", max_tokens=80, temperature=0, extra_body={"guided_json": schema}
        )
        jsonschema.validate(json.loads(done.choices[0].text), schema)
    obj = oai.chat.completions.create(
        model="gpt2",
        messages=[{"role": "user", "content": "x"}],
        max_tokens=100,
        response_format={"type": "json_object"},
        temperature=0,
    )
    # any JSON object: a free string may run to max_tokens (then it is cut, finish_reason
    # "length", as with any engine); ended by the grammar, it parses
    text, reason = obj.choices[0].message.content, obj.choices[0].finish_reason
    assert text.startswith("{") and (reason == "length" or isinstance(json.loads(text), dict))
    r = oai.completions.create(
        model="gpt2", prompt="Code:", max_tokens=20, temperature=0, extra_body={"guided_regex": "[a-f]{4}"}
    )
    assert re.fullmatch("[a-f]{4}", r.choices[0].text) and r.choices[0].finish_reason == "stop"
    r = oai.completions.create(
        model="gpt2",
        prompt="Pick:",
        max_tokens=20,
        temperature=1.0,
        seed=2,
        extra_body={"structured_outputs": {"choice": ["yes", "no way"]}},
    )
    assert r.choices[0].text in ("yes", "no way")
    stream = oai.completions.create(
        model="gpt2",
        prompt="Pick:",
        max_tokens=20,
        temperature=0,
        stream=True,
        extra_body={"guided_choice": ["left", "right"]},
    )
    assert "".join(c.choices[0].text for c in stream) in ("left", "right")
    for body, param, words in (
        ({"guided_grammar": "start: ("}, "guided_grammar", "guided_grammar: "),
        ({"response_format": {"type": "xml"}}, "response_format", "response_format must be"),
        ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice", "give one structured-output field"),
        ({"structured_outputs": {"choice": []}}, "structured_outputs", "choice: a non-empty list"),
    ):
        status, err = _post(
            api.url, "/v1/completions", {"model": "gpt2", "prompt": "x", "max_tokens": 4, **body}
        )
        assert status == 400 and err["error"]["param"] == param and words in err["error"]["message"], err


def _log_softmax(checkpoint, ids):
    import torch
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), -1).numpy()


@pytest.mark.server
def test_harness_scoring_token_id_batches_with_echo_equal_transformers(api, oai, tokenizer, checkpoints):
    """What lm-evaluation-harness's local-completions sends for log-likelihoods: a batch of
    token-id prompts (context + continuation), echo, logprobs 1, max_tokens 1, temperature 0.
    Read as the harness reads it: the continuation's token_logprobs summed and whether each
    is the top one."""
    contexts = ["def area(r):", "import os\nimport"]
    continuations = [" return 3.14 * r * r", " sys"]
    batch = [tokenizer.encode(c + x).ids for c, x in zip(contexts, continuations)]
    r = oai.completions.create(model="gpt2", prompt=batch, echo=True, logprobs=1, max_tokens=1, temperature=0)
    assert [c.index for c in r.choices] == [0, 1]
    for ids, ctx, choice in zip(batch, contexts, sorted(r.choices, key=lambda c: c.index)):
        lp = choice.logprobs
        ref = _log_softmax(checkpoints["gpt2"], ids)
        assert len(lp.token_logprobs) == len(ids) + 1 and lp.token_logprobs[0] is None
        for j in range(1, len(ids)):
            assert abs(lp.token_logprobs[j] - ref[j - 1, ids[j]]) < 1e-3
        ctxlen = len(tokenizer.encode(ctx).ids)
        score = sum(lp.token_logprobs[ctxlen:-1])
        assert abs(score - sum(ref[j - 1, ids[j]] for j in range(ctxlen, len(ids)))) < 1e-3
        greedy = all(
            t == max(top.values()) for t, top in zip(lp.token_logprobs[ctxlen:-1], lp.top_logprobs[ctxlen:-1])
        )
        assert greedy == all(ids[j] == int(ref[j - 1].argmax()) for j in range(ctxlen, len(ids)))
        assert choice.text.startswith(tokenizer.decode(ids)) and lp.text_offset[0] == 0
        assert lp.tokens[-1] == tokenizer.decode([int(ref[-1].argmax())])  # the generated token, greedy
    # max_tokens 0 with echo: the prompt scored, nothing generated
    status, body = _post(
        api.url,
        "/v1/completions",
        {"model": "gpt2", "prompt": batch[0], "echo": True, "logprobs": 0, "max_tokens": 0},
    )
    choice = body["choices"][0]
    assert (
        status == 200
        and choice["text"] == tokenizer.decode(batch[0])
        and body["usage"]["completion_tokens"] == 0
    )
    assert len(choice["logprobs"]["token_logprobs"]) == len(batch[0])


@pytest.mark.server
def test_batches_of_text_prompts_generate_each_prompts_greedy_text(oai, client):
    prompts = ["The class", "import os", "def f(x):"]
    r = oai.completions.create(model="gpt2", prompt=prompts, max_tokens=N, temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2]
    for p, c in zip(prompts, r.choices):
        assert c.text == client.generate_text(p, max_tokens=N, stream=False)
    stream = oai.completions.create(
        model="gpt2", prompt=prompts[:2], max_tokens=N, temperature=0, stream=True
    )
    texts = {0: "", 1: ""}
    for chunk in stream:
        texts[chunk.choices[0].index] += chunk.choices[0].text
    assert texts == {0: r.choices[0].text, 1: r.choices[1].text}


@pytest.mark.server
def test_completion_and_chat_logprobs_equal_transformers(oai, tokenizer, checkpoints):
    r = oai.completions.create(
        model="gpt2", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3, extra_body={"ignore_eos": True}
    )
    lp = r.choices[0].logprobs
    prompt_ids = tokenizer.encode(PROMPT).ids
    generated = tokenizer.encode(PROMPT + r.choices[0].text).ids[len(prompt_ids) :]
    ref = _log_softmax(checkpoints["gpt2"], prompt_ids + generated)
    assert len(lp.token_logprobs) == 6 and "".join(lp.tokens) == r.choices[0].text
    for k, value in enumerate(lp.token_logprobs):
        pos = len(prompt_ids) - 1 + k
        assert abs(value - ref[pos].max()) < 1e-3  # greedy: the most likely token
        assert len(lp.top_logprobs[k]) == 3 and abs(max(lp.top_logprobs[k].values()) - value) < 1e-9
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:k]) for k in range(6)]
    streamed = list(
        oai.completions.create(
            model="gpt2",
            prompt=PROMPT,
            max_tokens=6,
            temperature=0,
            logprobs=3,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    assert [
        v
        for c in streamed
        if c.choices and c.choices[0].logprobs
        for v in c.choices[0].logprobs.token_logprobs
    ] == pytest.approx(lp.token_logprobs, abs=1e-9)

    messages = [{"role": "user", "content": "Define a class"}]
    chat = oai.chat.completions.create(
        model="gpt2",
        messages=messages,
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        extra_body={"ignore_eos": True},
    )
    content = chat.choices[0].logprobs.content
    prompt_ids = tokenizer.encode("user: Define a class\nassistant:").ids
    generated = tokenizer.encode("user: Define a class\nassistant:" + chat.choices[0].message.content).ids[
        len(prompt_ids) :
    ]
    ref = _log_softmax(checkpoints["gpt2"], prompt_ids + generated)
    assert len(content) == 4 and "".join(t.token for t in content) == chat.choices[0].message.content
    for k, t in enumerate(content):
        pos = len(prompt_ids) - 1 + k
        assert abs(t.logprob - ref[pos].max()) < 1e-3 and len(t.top_logprobs) == 2
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob and bytes(t.bytes).decode() == t.token


@pytest.mark.server
def test_n_choices_each_draw_their_own_seed_and_best_of_keeps_the_most_likely(oai, client):
    sampled = dict(temperature=0.9, seed=5)
    r = oai.completions.create(model="gpt2", prompt=["The class", "import"], max_tokens=N, n=3, **sampled)
    assert [c.index for c in r.choices] == list(range(6))
    for c in r.choices:
        prompt, j = ["The class", "import"][c.index // 3], c.index % 3
        assert c.text == client.generate_text(prompt, max_tokens=N, stream=False, temperature=0.9, seed=5 + j)
    chat = oai.chat.completions.create(
        model="gpt2", messages=[{"role": "user", "content": "x"}], max_tokens=4, n=2, **sampled
    )
    assert [c.index for c in chat.choices] == [0, 1]
    # best_of 3, n 1: the sample of highest cumulative log-probability
    best = oai.completions.create(model="gpt2", prompt=PROMPT, max_tokens=N, best_of=3, **sampled)
    scored = []
    for j in range(3):
        info: dict = {}
        text = client.generate_text(
            PROMPT, max_tokens=N, stream=False, temperature=0.9, seed=5 + j, logprobs=0, details=info
        )
        scored.append((sum(e[1] for e in info["logprobs"]), text))
    assert len(best.choices) == 1 and best.choices[0].text == max(scored)[1]
    assert best.choices[0].logprobs is None  # ranked by them, not asked for
    assert best.usage.completion_tokens >= 3  # every sample counts


@pytest.mark.server
def test_n_samples_of_a_prompt_compute_it_once(gpt2_server, tokenizer):
    """The first sample computes the prompt, the other three read it (the engine's prefix-hit
    counter says so): OpenVINO's block cache from its full blocks, ONNX Runtime's slots by
    copying the first sample's slot (all but the last prompt token, whose logits give each
    sample's first token)."""
    prompt = "def area(r): return 3.14 * r * r\n" * 4
    n_prompt = len(tokenizer.encode(prompt).ids)
    assert n_prompt > 32  # at least one full 32-position block
    blocks = any((gpt2_server.repository / "gpt2").rglob("openvino_model.xml"))
    with OpenAIFrontend(gpt2_server.grpc_url, gpt2_server.repository) as frontend:
        oai = openai.OpenAI(base_url=f"{frontend.url}/v1", api_key="unused", max_retries=0, timeout=60)
        before = metric_total(gpt2_server.metrics_url, "vllm:prefix_cache_hits_total")
        r = oai.completions.create(model="gpt2", prompt=prompt, max_tokens=4, n=4, temperature=1.0, seed=3)
        assert len(r.choices) == 4
        # the three later samples: every full block, or every prompt token but the last
        want = 3 * ((n_prompt - 1) // 32) * 32 if blocks else 3 * (n_prompt - 1)
        deadline = time.monotonic() + 10
        while (
            metric_total(gpt2_server.metrics_url, "vllm:prefix_cache_hits_total") - before < want
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert metric_total(gpt2_server.metrics_url, "vllm:prefix_cache_hits_total") - before >= want
        # the samples are those of the same seeds computed alone
        for j, choice in enumerate(sorted(r.choices, key=lambda c: c.index)):
            alone = oai.completions.create(
                model="gpt2", prompt=prompt, max_tokens=4, temperature=1.0, seed=3 + j
            )
            assert choice.text == alone.choices[0].text


CUSTOM_TEMPLATE = {
    "chat_message_template": "<{role}>{content}</{role}>\n",
    "chat_generation_prompt": "<assistant>",
}


@pytest.fixture(scope="module")
def one_slot_serve(exports, tmp_path_factory):
    """`aigc serve --openai-port 0` as a process over a GPT-2 that decodes one sequence in one KV
    slot with no wait queue (a second request while one runs gets 'server busy': `max_sequences`
    too, since blocks by use would otherwise take up to 64), and a chat template of its own in
    config.pbtxt. Yields (OpenAI API URL, Triton gRPC address, the process's log lines).

    The tiny model generates its whole window in a few ms, less than a request through the
    frontend takes. So the engine waits `first_token_yield_ms` (its most, 100 ms) after every
    step that sent a first token; that wait applies where the runtime's threads take every
    core, hence the default thread count. A request is then still running for 100 ms after its
    first token on any machine."""
    repo = tmp_path_factory.mktemp("one-slot") / "model_repository"
    engine = EngineConfig(slots=1, max_sequences=1, max_queue=0, first_token_yield_ms=100.0)
    build_repository([exports["gpt2"]], repo, BuildOptions(variant="fp32", engine=engine, intra_op_threads=0))
    config = read_config(repo / "gpt2")
    for key, value in CUSTOM_TEMPLATE.items():
        config.parameters[key].string_value = value
    (repo / "gpt2" / "config.pbtxt").write_text(text_format.MessageToString(config))
    cmd = [sys.executable, "-m", "aigc.cli", "serve", "--repository", str(repo), "--openai-port", "0"]
    cmd += ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]
    cmd += ["--log-file", str(repo.parent / "triton.log"), "--exit-timeout", "1"]
    proc, found, lines = _start_logged(
        cmd, r"OpenAI-compatible API on (http://\S+)/v1 \(Triton gRPC (\S+)\)", 180
    )
    try:
        assert found, "aigc serve did not start the OpenAI API:\n" + "".join(lines)
        yield found.group(1), found.group(2), lines
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, "".join(lines)


@pytest.mark.server
def test_chat_template_from_the_model_config(one_slot_serve):
    url, grpc_url, _ = one_slot_serve
    oai = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "Define a class"}]
    r = oai.chat.completions.create(model="gpt2", temperature=0, messages=messages, max_tokens=N)
    prompt = ChatTemplate.from_parameters(CUSTOM_TEMPLATE).render([("user", "Define a class")])
    assert prompt == "<user>Define a class</user>\n<assistant>"
    with AigcClient(grpc_url) as client:
        assert r.choices[0].message.content == client.generate_text(prompt, max_tokens=N, stream=False)


def _open_stream(url: str, max_tokens: int) -> socket.socket:
    """A streaming completion on a raw connection, returned once its first event has arrived."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    body = json.dumps(
        {"model": "gpt2", "prompt": PROMPT, "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    ).encode()
    head = f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    received = b""
    while not re.search(rb"data: .*\n\n", received):
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received
    return sock


@pytest.mark.server
def test_disconnect_mid_stream_cancels_the_request_and_frees_the_slot(one_slot_serve):
    url, _, log = one_slot_serve
    small = {"model": "gpt2", "prompt": PROMPT, "max_tokens": 1}
    long_tokens = 127 - 2  # the rest of the tiny model's 128-token window after the prompt
    # The engine pauses 100 ms after the long request's first token (`one_slot_serve`): the busy
    # check and the hang-up come in that pause. A machine too loaded for that gets retries.
    for _attempt in range(20):
        sock = _open_stream(url, long_tokens)
        status, body = _post(url, "/v1/completions", small)  # while the long one holds the slot
        if status == 503:
            break
        sock.close()
    else:
        # Only the machine's load decides this race; what the test is about cannot be observed
        # then, and it says so rather than fail or pass blind.
        pytest.skip(
            f"the long stream always ended before the busy check answered ({status}); not observable here"
        )
    assert body["error"]["code"] == "server_busy" and "server busy" in body["error"]["message"]
    cancels_before = sum("went away" in line for line in log)
    sock.close()  # hang up after one event, with the request still running

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, body = _post(url, "/v1/completions", small)
        if status == 200:
            break
        assert status == 503, body
        time.sleep(0.1)
    assert status == 200, f"the slot was not freed within 30 s of the disconnect: {body}"
    # the frontend stopped before the server's last token and cancelled the request there
    deadline = time.monotonic() + 10
    while sum("went away" in line for line in log) == cancels_before and time.monotonic() < deadline:
        time.sleep(0.1)
    gone = [line for line in log if "went away" in line]
    assert len(gone) > cancels_before, "".join(log)
    assert int(re.search(r"after (\d+) deltas", gone[-1]).group(1)) < long_tokens
