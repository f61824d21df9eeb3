"""The OpenAI-compatible frontend without a server: request parsing onto the sampling
parameters, the chat template, field errors, and `aigc serve`'s port check."""

from __future__ import annotations

import pytest

from aigc.errors import ConfigError
from serving.openai_api.protocol import (
    APIError,
    ChatTemplate,
    parse_chat,
    parse_completion,
    parse_detokenize,
    parse_tokenize,
)


def test_serve_rejects_a_bad_openai_port():
    from aigc.cli import build_parser
    from serving.commands import run_serve

    args = build_parser().parse_args(["serve", "--openai-port", "70000"])
    with pytest.raises(ConfigError, match="--openai-port must be in 0..65535"):
        run_serve(args)


def test_chat_template_default_and_override():
    turns = (("system", "Be {brief}."), ("user", "Hi"))
    assert ChatTemplate().render(turns) == "system: Be {brief}.\nuser: Hi\nassistant:"
    custom = ChatTemplate.from_parameters(
        {"chat_message_template": "<{role}>{content}</{role}>", "chat_generation_prompt": "<assistant>"}
    )
    assert custom.render(turns) == "<system>Be {brief}.</system><user>Hi</user><assistant>"
    with pytest.raises(ValueError, match="content"):
        ChatTemplate.from_parameters({"chat_message_template": "{role}"})


@pytest.mark.parametrize(
    "template",
    [
        ChatTemplate(),
        ChatTemplate("<{role}>{content}</{role}>\n", "<assistant>"),
        ChatTemplate("{content}'\"{{", ""),
    ],
)
def test_chat_template_in_jinja_renders_as_the_server_does(template):
    """/tokenizer_info's chat_template: clients rendering it themselves get the server's text."""
    import jinja2

    turns = (("system", "Be {brief} é."), ("user", "Hi {% x %}"))
    jinja = jinja2.Environment().from_string(template.jinja())
    messages = [{"role": r, "content": c} for r, c in turns]
    assert jinja.render(messages=messages, add_generation_prompt=True) == template.render(turns)
    assert jinja.render(
        messages=messages, add_generation_prompt=False
    ) + template.generation == template.render(turns)


def test_requests_map_onto_sampling_parameters():
    gen = parse_completion(
        {
            "model": "gpt2",
            "prompt": "x",
            "max_tokens": 5,
            "temperature": 0.5,
            "seed": 3,
            "stop": "\n",
            "user": "u",
        }
    )
    p = gen.params(default_max_tokens=16)
    assert (p.max_tokens, p.temperature, p.seed, p.stop) == (5, 0.5, 3, ("\n",))
    assert parse_completion({"model": "gpt2", "prompt": "x"}).params(16).max_tokens == 16
    chat = parse_chat(
        {"model": "gpt2", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]}
    )
    assert chat.messages == (("user", "a"),) and chat.max_tokens_field == "max_tokens"


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": "x"}, "model"),
        ({"model": "gpt2", "prompt": [1.5, 2]}, "prompt"),
        ({"model": "gpt2", "prompt": "x", "frequency_penalty": 2.5}, "frequency_penalty"),
        ({"model": "gpt2", "prompt": "x", "logit_bias": {"50256": -100}}, "logit_bias"),
        ({"model": "gpt2", "prompt": "x", "seed": "7"}, "seed"),
        ({"model": "gpt2", "prompt": "x", "temperature": float("nan")}, "temperature"),
    ],
)
def test_bad_requests_name_the_field(body, param):
    with pytest.raises(APIError) as err:
        parse_completion(body)
    assert err.value.status == 400 and err.value.param == param


def test_unknown_fields_are_ignored_and_logged_once_per_name(caplog):
    body = {"model": "gpt2", "prompt": "x", "beam_width": 2, "vendor_extra": {"a": 1}}
    with caplog.at_level("WARNING"):
        for _ in range(3):
            gen = parse_completion(body)
    assert gen.params(16).max_tokens == 16
    warned = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert sum("'beam_width'" in w for w in warned) == 1 and sum("'vendor_extra'" in w for w in warned) == 1


def test_engine_fields_pass_through_and_the_models_defaults_fill_the_rest():
    body = {"model": "gpt2", "prompt": "x", "min_p": 0.1, "stop_token_ids": [11], "bad_words": ["no"]}
    p = parse_completion(body).params(16, defaults={"temperature": 1.0, "top_p": 0.9, "min_p": 0.0})
    assert (p.min_p, p.stop_token_ids, p.bad_words) == (0.1, (11,), ("no",))
    assert (p.temperature, p.top_p) == (1.0, 0.9)  # the request left them out
    asked = parse_completion({"model": "gpt2", "prompt": "x", "temperature": 0}).params(
        16, defaults={"temperature": 1.0}
    )
    assert asked.temperature == 0.0


def test_tokenize_and_detokenize_requests():
    assert parse_tokenize({"model": "gpt2", "prompt": "a b"}).prompt == "a b"
    chat = parse_tokenize(
        {"model": "gpt2", "messages": [{"role": "user", "content": "hi"}], "return_token_strs": True}
    )
    assert chat.messages == (("user", "hi"),) and chat.return_token_strs
    assert parse_detokenize({"model": "gpt2", "tokens": [1, 2]}).tokens == (1, 2)
    # no model: the server's one text model (vLLM's tokenizer routes)
    assert parse_tokenize({"prompt": "x"}).model == parse_detokenize({"tokens": [1]}).model == ""
    for parse, body, param in (
        (parse_tokenize, {"model": 3, "prompt": "x"}, "model"),
        (parse_tokenize, {"model": "gpt2", "prompt": 3}, "prompt"),
        (parse_detokenize, {"model": "gpt2", "tokens": ["a"]}, "tokens"),
        (parse_detokenize, {"model": "gpt2", "tokens": [True]}, "tokens"),
    ):
        with pytest.raises(APIError) as err:
            parse(body)
        assert err.value.status == 400 and err.value.param == param


def test_prompt_forms_logprobs_and_scoring():
    one = parse_completion({"model": "gpt2", "prompt": [5, 6, 7]})
    assert one.prompts == ((5, 6, 7),)
    batch = parse_completion(
        {"model": "gpt2", "prompt": [[5, 6], [7]], "echo": True, "logprobs": 1, "max_tokens": 0}
    )
    assert batch.prompts == ((5, 6), (7,)) and batch.score_only and batch.logprobs == 1
    p = batch.params(16)
    assert (p.max_tokens, p.logprobs, p.prompt_logprobs) == (1, 1, 1)  # one token made and dropped
    texts = parse_completion({"model": "gpt2", "prompt": ["a", "b"], "logprobs": 0})
    assert texts.prompts == ("a", "b") and texts.params(16).prompt_logprobs is None  # no echo
    chat = parse_chat(
        {"model": "gpt2", "messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 3}
    )
    assert chat.logprobs == 3 and chat.params(8).logprobs == 3
    assert (
        parse_chat(
            {"model": "gpt2", "messages": [{"role": "user", "content": "x"}], "logprobs": True}
        ).logprobs
        == 0
    )
    for body, param in (
        ({"prompt": [[1], "a"]}, "prompt"),
        ({"prompt": [-1]}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": ["a"] * 257}, "prompt"),
        ({"prompt": "a", "logprobs": True}, "logprobs"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
    ):
        with pytest.raises(APIError) as err:
            parse_completion({"model": "gpt2", **body})
        assert err.value.param == param
    with pytest.raises(APIError) as err:
        parse_chat({"model": "gpt2", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})
    assert err.value.param == "top_logprobs" and "needs logprobs" in err.value.message


def test_n_and_best_of():
    gen = parse_completion(
        {"model": "gpt2", "prompt": "x", "n": 2, "best_of": 4, "seed": 7, "temperature": 1}
    )
    assert (gen.n, gen.best_of) == (2, 4)
    first, third = gen.params(8, choice=0), gen.params(8, choice=2)
    assert (first.seed, third.seed) == (7, 9) and first.logprobs == 0  # ranked by log-probability
    assert parse_completion({"model": "gpt2", "prompt": "x", "n": 3}).best_of == 3
    chat = parse_chat({"model": "gpt2", "messages": [{"role": "user", "content": "x"}], "n": 2})
    assert (chat.n, chat.best_of) == (2, 2)


def test_the_api_schema_lists_every_field_the_parser_takes():
    """/openapi.json (and so /docs) shows the real request bodies: every field protocol.py
    accepts is in the route's schema, and nothing it refuses."""
    from serving.openai_api.app import create_app
    from serving.openai_api.protocol import CHAT_FIELDS, COMPLETION_FIELDS

    spec = create_app("127.0.0.1:1", None).openapi()

    def fields(path):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        return set(body["properties"])

    assert fields("/v1/completions") == COMPLETION_FIELDS
    assert fields("/v1/chat/completions") == CHAT_FIELDS
    assert fields("/tokenize") == {"model", "prompt", "messages", "return_token_strs"}
    assert fields("/detokenize") == {"model", "tokens"}
