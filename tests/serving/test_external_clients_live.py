"""The clients people point at an OpenAI endpoint, installed from the package index into
venvs of their own (`make external-tools`: they need numpy 2 and transformers 5), run
against the frontend over the served fp32 GPT-2:

- lm-evaluation-harness's `local-completions` model with the server's tokenizer
  (`tokenizer_backend=remote`: /tokenizer_info, /tokenize, /detokenize), a log-likelihood
  task and a generation task on local data files: its log-likelihoods equal transformers'
  within 1e-3, its greedy continuations are transformers' own;
- AIPerf, streaming completions at a fixed concurrency, then with half its requests
  cancelled mid-stream: every other request completes, and the server is healthy after.

`make test` sets AIGC_EXTERNAL_TOOLS, so a missing tool fails there; a bare pytest run skips.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from support import metric_total, newest_version
from tokenizers import Tokenizer

from engine.metrics import RUNNING, SUCCESS
from serving.client import AigcClient
from serving.openai_api import OpenAIFrontend
from serving.repository import read_config

REPO_ROOT = Path(__file__).resolve().parents[2]

# Contexts and choices in the style of the tiny model's training text (pydoc_data); the
# harness joins them with its target delimiter, a space.
CHOICE_DOCS = [
    {"context": "import os\nimport", "choices": ["sys", "re", "the"], "answer": 0},
    {"context": "def area(r):\n    return", "choices": ["3.14 * r * r", "None", "self"], "answer": 1},
    {"context": "The class", "choices": ["of", "is", "method"], "answer": 0},
    {"context": "for i in range(10):", "choices": ["print(i)", "return i"], "answer": 0},
    {"context": "The value of the", "choices": ["expression", "module", "list"], "answer": 2},
]
GENERATE_DOCS = [
    {"prompt": "The class", "target": ""},
    {"prompt": "def f(x):", "target": ""},
    {"prompt": "Return the", "target": ""},
    {"prompt": "import os\n", "target": ""},
    {"prompt": "If the value is", "target": ""},
]
UNTIL = ["\n\n"]
MAX_GEN = 16


def _tool(name: str, exe: str) -> Path:
    root = Path(os.environ.get("AIGC_EXTERNAL_TOOLS") or REPO_ROOT / ".venv-tools")
    if not root.is_absolute():
        root = REPO_ROOT / root
    path = root / name / "bin" / exe
    if not path.exists():
        message = f"{path} is not installed: `make external-tools` makes it"
        if os.environ.get("AIGC_EXTERNAL_TOOLS"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _run(cmd: list, cwd: Path, timeout: float = 600, **env_extra) -> str:
    env = dict(os.environ, HF_HOME=str(cwd / "hf-home"), NO_COLOR="1", PYTHONWARNINGS="ignore", **env_extra)
    for name in ("PYTHONPATH", "VIRTUAL_ENV"):  # the tool's own venv, not the suite's
        env.pop(name, None)
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{cmd[0]} exited {proc.returncode}:\n{out[-6000:]}"
    return out


@pytest.fixture(scope="module")
def api(server, fp32_repository):
    with OpenAIFrontend(server.grpc_url, fp32_repository) as frontend:
        yield frontend


@pytest.fixture(scope="module")
def tokenizer(fp32_repository):
    return Tokenizer.from_file(str(newest_version(fp32_repository) / "tokenizer.json"))


@pytest.fixture(scope="module")
def hf(checkpoints):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(checkpoints["gpt2"]).eval()


def _log_softmax(hf, ids):
    import torch

    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), -1).numpy()


def _greedy(hf, ids: list[int], n: int, eos: int | None) -> list[int]:
    """transformers' greedy tokens after `ids`, up to `n` or the end-of-text token."""
    out: list[int] = []
    for _ in range(n):
        token = int(_log_softmax(hf, ids + out)[-1].argmax())
        if token == eos:
            break
        out.append(token)
    return out


def _write_task(folder: Path, name: str, docs: list[dict], spec: str) -> None:
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        f"test_split: test\n{spec}"
    )


def _samples(out: Path, task: str) -> list[dict]:
    (path,) = out.rglob(f"samples_{task}_*.jsonl")
    return sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda s: s["doc_id"])


def _arguments(sample: dict) -> list[tuple]:
    """The (context, continuation) or (prompt, generation kwargs) of each of a sample's requests."""
    args = sample["arguments"]
    if isinstance(args, dict):  # {"gen_args_0": {"arg_0": ..., "arg_1": ...}, ...}
        return [
            tuple(a[k] for k in sorted(a))
            for _, a in sorted(args.items(), key=lambda kv: int(kv[0].rsplit("_", 1)[1]))
        ]
    return [tuple(a) for a in args]


@pytest.mark.server
@pytest.mark.slow
def test_lm_evaluation_harness_scores_and_generates_as_transformers(
    api, tokenizer, hf, fp32_repository, tmp_path
):
    lm_eval = _tool("lm-eval", "lm_eval")
    window = (
        int(read_config(fp32_repository / "gpt2").parameters["max_len"].string_value or 0)
        or hf.config.n_positions
    )
    _write_task(
        tmp_path,
        "aigc_choice",
        CHOICE_DOCS,
        'output_type: multiple_choice\ndoc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\nmetric_list:\n  - metric: acc\n',
    )
    _write_task(
        tmp_path,
        "aigc_generate",
        GENERATE_DOCS,
        'output_type: generate_until\ndoc_to_text: "{{prompt}}"\ndoc_to_target: "{{target}}"\n'
        f"generation_kwargs:\n  until: {json.dumps(UNTIL)}\n  max_gen_toks: {MAX_GEN}\n"
        "  do_sample: false\n  temperature: 0\nmetric_list:\n  - metric: exact_match\n",
    )
    model_args = ",".join(
        [
            "model=gpt2",
            f"base_url={api.url}/v1/completions",
            "tokenizer_backend=remote",
            "tokenized_requests=True",
            f"max_length={window}",
            "num_concurrent=2",
            "max_retries=1",
        ]
    )
    out = tmp_path / "results"
    _run(
        [lm_eval, "--model", "local-completions", "--model_args", model_args,
         "--tasks", "aigc_choice,aigc_generate", "--include_path", tmp_path,
         "--batch_size", "4", "--output_path", out, "--log_samples"],
        cwd=tmp_path,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
    )  # fmt: skip

    # log-likelihoods: every choice of every document, as the harness split it into tokens
    scored = 0
    for sample in _samples(out, "aigc_choice"):
        for (context, continuation), resp in zip(_arguments(sample), sample["resps"]):
            ll, greedy = float(resp[0][0]), resp[0][1] in (True, "True")  # logged as text
            ids = tokenizer.encode(context + continuation).ids
            ctxlen = len(tokenizer.encode(context).ids)
            ref = _log_softmax(hf, ids)
            expect = sum(ref[j - 1, ids[j]] for j in range(ctxlen, len(ids)))
            assert abs(ll - expect) < 1e-3, (context, continuation, ll, expect)
            assert greedy == all(ids[j] == int(ref[j - 1].argmax()) for j in range(ctxlen, len(ids)))
            scored += 1
    assert scored == sum(len(d["choices"]) for d in CHOICE_DOCS)

    # generations: transformers' greedy tokens, cut where the harness's stop strings start
    eos = json.loads((newest_version(fp32_repository) / "model_info.json").read_text()).get("eos_token_id")
    samples = _samples(out, "aigc_generate")
    assert [s["doc"]["prompt"] for s in samples] == [d["prompt"] for d in GENERATE_DOCS]
    for sample in samples:
        prompt = sample["doc"]["prompt"]
        text = tokenizer.decode(_greedy(hf, tokenizer.encode(prompt).ids, MAX_GEN, eos))
        for stop in UNTIL:
            text = text.split(stop)[0]
        assert sample["resps"][0][0] == text, prompt


def _aiperf(api, tokenizer_dir: Path, artifacts: Path, output_tokens: int, *extra) -> dict:
    aiperf = _tool("aiperf", "aiperf")
    _run(
        [aiperf, "profile", "--model", "gpt2", "--url", api.url, "--endpoint-type", "completions",
         "--streaming", "--tokenizer", tokenizer_dir, "--synthetic-input-tokens-mean", "24",
         "--synthetic-input-tokens-stddev", "0", "--output-tokens-mean", output_tokens,
         "--output-tokens-stddev", "0", "--extra-inputs", "ignore_eos:true", "--random-seed", "7",
         "--ui-type", "none", "--artifact-dir", artifacts, "--no-server-metrics", *extra],
        cwd=artifacts.parent,
    )  # fmt: skip
    (path,) = artifacts.rglob("profile_export_aiperf.json")
    return json.loads(path.read_text())


def _steady_total(url: str, name: str) -> float:
    """`metric_total` once it holds across a metrics interval (1 s): the engine's counts reach
    the endpoint on a timer, so requests that just ended may not be in it yet."""
    last = metric_total(url, name)
    for _ in range(40):
        time.sleep(1.5)
        now = metric_total(url, name)
        if now == last:
            return now
        last = now
    raise AssertionError(f"{name} kept changing with no request running")


def _avg(report: dict, name: str) -> float:
    return (report.get(name) or {}).get("avg", 0.0)


@pytest.mark.server
@pytest.mark.slow
def test_aiperf_streams_and_cancels_and_the_server_serves_on(api, server, fp32_repository, tmp_path):
    # AIPerf reads a Hugging Face tokenizer folder: the served tokenizer.json and its class
    # (a local folder is read without the hub; AIPerf's HF_HUB_OFFLINE path takes hub names only)
    tokenizer_dir = tmp_path / "tokenizer"
    tokenizer_dir.mkdir()
    (tokenizer_dir / "tokenizer.json").write_bytes(
        (newest_version(fp32_repository) / "tokenizer.json").read_bytes()
    )
    (tokenizer_dir / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"})
    )
    with AigcClient(server.grpc_url, timeout_s=60) as client:
        before = client.generate_text("The class", max_tokens=8, stream=False)
    load = ("--concurrency", "6")

    # streamed completions, 6 at a time: every one completes with the tokens it asked for
    # (AIPerf's own count re-encodes the text, which a byte-level BPE may merge differently)
    plain = _aiperf(api, tokenizer_dir, tmp_path / "plain", 96, *load, "--request-count", "12")
    assert plain["error_summary"] == [] and _avg(plain, "error_request_count") == 0
    assert _avg(plain, "request_count") == 12 and _avg(plain, "total_usage_completion_tokens") == 12 * 96
    assert 0 < plain["time_to_first_token"]["p50"] < plain["request_latency"]["p50"]

    # the same load with half of the requests dropped mid-stream: half-way through a median
    # request (this machine's, measured above), so that it holds on a faster or slower machine
    ended = _steady_total(server.metrics_url, SUCCESS)  # the plain run's last ends counted
    delay = plain["request_latency"]["p50"] / 2 / 1000
    cancelled = _aiperf(
        api, tokenizer_dir, tmp_path / "cancelled", 96, *load, "--request-count", "24",
        "--request-cancellation-rate", "50", "--request-cancellation-delay", f"{delay:.3f}",
    )  # fmt: skip
    errors = {e["error_details"]["type"]: e["count"] for e in cancelled["error_summary"]}
    assert set(errors) == {"RequestCancellationError"}, cancelled["error_summary"]
    done, dropped = _avg(cancelled, "request_count"), errors["RequestCancellationError"]
    assert dropped >= 1 and done + dropped == 24
    assert _avg(cancelled, "total_usage_completion_tokens") == done * 96  # the others ran whole

    # every request ended in the engine, each dropped one aborted there unless its last token
    # had already left (the tiny model outruns the HTTP side); nothing is left running
    def settled():
        return (
            metric_total(server.metrics_url, RUNNING) == 0
            and metric_total(server.metrics_url, SUCCESS) - ended == 24
        )

    deadline = time.monotonic() + 60
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert settled(), (
        metric_total(server.metrics_url, RUNNING),
        metric_total(server.metrics_url, SUCCESS) - ended,
    )
    with urllib.request.urlopen(f"{api.url}/health", timeout=10) as r:
        assert r.status == 200
    with AigcClient(server.grpc_url, timeout_s=60) as client:
        assert client.generate_text("The class", max_tokens=8, stream=False) == before
