"""The two request schemas of Triton's LLM backends onto one SamplingParams: vLLM's
`sampling_parameters` JSON (numbers and booleans as JSON strings too, as genai-perf sends them)
and TensorRT-LLM's optional input tensors; the parsing, without a server (the live tests are
test_request_schemas_live.py).

The genai-perf payloads below are what genai-perf 0.0.16 builds (`inputs/converters/
vllm_converter.py`, `tensorrtllm_converter.py`): vLLM `{"max_tokens": "16", "min_tokens": "16"}`
in `sampling_parameters`; TensorRT-LLM `max_tokens` [16], `min_length` [16],
`exclude_input_in_output` [True], `stream` [True].
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from support import f32, flag, i32, words
from tritonclient.grpc import model_config_pb2 as mc

from engine.request_schema import (
    TENSOR_INPUTS,
    RequestError,
    SamplingParams,
    params_from_request,
    parse_sampling_parameters,
)
from serving.builder import BuildOptions
from serving.model_versions import gpt2_config
from serving.repository import read_config

LIMIT = 127
MODEL_INFO = {"n_positions": 128}


# -- the vLLM schema ---------------------------------------------------------------------------


def test_numbers_and_booleans_as_json_strings_are_what_vllm_reads():
    as_strings = parse_sampling_parameters(
        '{"max_tokens": "64", "min_tokens": "16", "temperature": "0.7", "top_k": "5", "top_p": "0.9",'
        ' "seed": "3", "ignore_eos": "true", "presence_penalty": "0.5", "frequency_penalty": "-0.25",'
        ' "repetition_penalty": "1.3", "min_p": "0.05", "n": "1", "best_of": "1"}',
        LIMIT,
    )
    as_numbers = parse_sampling_parameters(
        {
            "max_tokens": 64,
            "min_tokens": 16,
            "temperature": 0.7,
            "top_k": 5,
            "top_p": 0.9,
            "seed": 3,
            "ignore_eos": True,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.25,
            "repetition_penalty": 1.3,
            "min_p": 0.05,
            "n": 1,
            "best_of": 1,
        },
        LIMIT,
    )
    assert as_strings == as_numbers
    assert as_numbers.penalized and not as_numbers.greedy
    assert parse_sampling_parameters('{"ignore_eos": "False"}', LIMIT).ignore_eos is False
    assert parse_sampling_parameters('{"top_k": -1}', LIMIT).top_k == 0  # vLLM's "off"
    # genai-perf --backend vllm with --output-tokens-mean 16 (deterministic)
    p = parse_sampling_parameters('{"max_tokens": "16", "min_tokens": "16"}', LIMIT)
    assert (p.max_tokens, p.min_tokens) == (16, 16)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"max_tokens": "abc"}, "max_tokens must be an integer in 1..127"),
        ({"max_tokens": "1.5"}, "max_tokens must be an integer"),
        ({"min_tokens": 65}, "min_tokens must be an integer in 0..max_tokens (64)"),
        ({"max_tokens": 8, "min_tokens": "9"}, "min_tokens must be an integer in 0..max_tokens (8)"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"presence_penalty": 2.5}, "presence_penalty must be a number in [-2, 2]"),
        ({"frequency_penalty": "-3"}, "frequency_penalty must be a number in [-2, 2]"),
        ({"repetition_penalty": 0}, "repetition_penalty must be a number in (0, 100]"),
        ({"repetition_penalty": "nan"}, "repetition_penalty"),
        ({"temperature": "inf"}, "temperature"),
        ({"n": 2}, "n must be 1"),
        ({"n": "3"}, "n must be 1"),
        ({"best_of": 2}, "best_of must be 1"),
        ({"min_p": 1.5}, "min_p must be a number in [0, 1]"),
        ({"top_k": -2}, "top_k must be an integer >= -1"),
        ({"ignore_eos": "yes"}, "ignore_eos must be true or false"),
        ({"ignore_eos": 1}, "ignore_eos must be true or false"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"bad_words": [""]}, "bad_words"),
        ({"frobnicate": 1, "max_tokens": 3}, "unknown field(s) frobnicate"),
        ({"use_beam_search": True}, "unknown field(s) use_beam_search"),
    ],
)
def test_bad_vllm_fields_name_the_field_and_the_range(fields, message):
    with pytest.raises(RequestError) as err:
        parse_sampling_parameters(json.dumps(fields), LIMIT)
    assert message in str(err.value)


def test_the_client_sends_the_new_fields_and_they_round_trip():
    from serving.client import sampling_parameters

    sent = sampling_parameters(
        8, min_tokens=4, presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=1.2
    )
    assert sent == {
        "max_tokens": 8,
        "min_tokens": 4,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "repetition_penalty": 1.2,
    }
    assert parse_sampling_parameters(json.dumps(sent), LIMIT) == SamplingParams(
        max_tokens=8, min_tokens=4, presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=1.2
    )


# -- the TensorRT-LLM schema -------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1,), (1, 1)], ids=["[1]", "[1,1]"])
def test_tensors_map_to_the_same_params_as_the_json(shape):
    tensors = {
        "max_tokens": i32(20, shape),
        "min_length": i32(4, shape),
        "temperature": f32(0.5, shape),
        "runtime_top_k": i32(7, shape),
        "runtime_top_p": f32(0.75, shape),
        "random_seed": np.full(shape, 2**64 - 1, np.uint64),
        "presence_penalty": f32(0.5, shape),
        "frequency_penalty": f32(0.25, shape),
        "repetition_penalty": f32(1.5, shape),
        "stop_words": words("\n\n", ""),
        "bad_words": words("class"),
        "beam_width": i32(1, shape),
        "pad_id": i32(0, shape),
        "return_log_probs": flag(False, shape),
        "return_context_logits": flag(False, shape),
        "return_generation_logits": flag(False, shape),
    }
    from_tensors = params_from_request(None, tensors, LIMIT)
    from_json = parse_sampling_parameters(
        {
            "max_tokens": 20,
            "min_tokens": 4,
            "temperature": 0.5,
            "top_k": 7,
            "top_p": 0.75,
            "seed": 2**64 - 1,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.25,
            "repetition_penalty": 1.5,
            "stop": ["\n\n"],
            "bad_words": ["class"],
        },
        LIMIT,
    )
    assert from_tensors == from_json
    # the ensemble's names and the tensorrt_llm model's are the same fields
    assert params_from_request(None, {"top_k": i32(7), "top_p": f32(0.75)}, LIMIT) == SamplingParams(
        top_k=7, top_p=0.75
    )
    assert params_from_request(None, {"min_tokens": i32(3)}, LIMIT).min_tokens == 3
    assert params_from_request(None, {"end_id": i32(11)}, LIMIT).end_id == 11
    assert params_from_request(None, {"runtime_top_p": f32(0.0)}, LIMIT).top_p == 1.0  # TRT-LLM: 0 = off
    # the JSON and the tensors together, each field once
    both = params_from_request('{"max_tokens": "12", "ignore_eos": true}', {"temperature": f32(0.5)}, LIMIT)
    assert both == SamplingParams(max_tokens=12, ignore_eos=True, temperature=0.5)


@pytest.mark.parametrize(
    "json_text, tensors, message",
    [
        (None, {"beam_width": i32(2)}, "beam_width must be 1"),
        (None, {"return_log_probs": flag(True)}, "return_log_probs must be false"),
        (None, {"return_context_logits": flag(True)}, "return_context_logits must be false"),
        (None, {"return_generation_logits": flag(True)}, "return_generation_logits must be false"),
        (None, {"max_tokens": i32(0)}, "max_tokens must be an integer in 1..127, got 0"),
        (None, {"temperature": f32(-1)}, "temperature must be a number in [0, 100]"),
        (None, {"runtime_top_p": f32(1.5)}, "runtime_top_p must be a number in (0, 1]"),
        (None, {"runtime_top_k": i32(-3)}, "runtime_top_k must be an integer >= -1"),
        (
            None,
            {"min_length": i32(100), "max_tokens": i32(10)},
            "min_length must be an integer in 0..max_tokens",
        ),
        (None, {"repetition_penalty": f32(0)}, "repetition_penalty must be a number in (0, 100]"),
        (None, {"presence_penalty": f32(3)}, "presence_penalty must be a number in [-2, 2]"),
        (None, {"end_id": i32(-1)}, "end_id must be a token id"),
        (None, {"pad_id": i32(-1)}, "pad_id must be a token id"),
        (None, {"temperature": f32(0.5, (2,))}, "temperature must hold exactly one value, got shape [2]"),
        ('{"max_tokens": 5}', {"max_tokens": i32(5)}, "max_tokens is given twice"),
        (
            '{"top_k": 5}',
            {"runtime_top_k": i32(5)},
            "as the runtime_top_k input tensor and in sampling_parameters",
        ),
        ('{"stop": "x"}', {"stop_words": words("y")}, "stop is given twice"),
        (
            None,
            {"min_length": i32(2), "min_tokens": i32(2)},
            "by the min_length and min_tokens input tensors",
        ),
    ],
)
def test_bad_tensor_values_name_the_tensor(json_text, tensors, message):
    with pytest.raises(RequestError) as err:
        params_from_request(json_text, tensors, LIMIT)
    assert message in str(err.value)


def test_config_declares_every_tensor_of_both_schemas_optional():
    cfg = gpt2_config(MODEL_INFO, BuildOptions())
    inputs = {i.name: i for i in cfg.input}
    # the prompt is text_input or input_ids (token ids): the model asks for one of them
    assert inputs["text_input"].optional and inputs["input_ids"].optional
    for name, dtype, dims, _ in TENSOR_INPUTS:
        assert inputs[name].optional and list(inputs[name].dims) == list(dims), name
        assert inputs[name].data_type == (
            mc.TYPE_STRING if dtype == "BYTES" else getattr(mc, f"TYPE_{dtype}")
        ), name
    genai_perf_trtllm = {"text_input", "max_tokens", "min_length", "exclude_input_in_output", "stream"}
    genai_perf_vllm = {"text_input", "sampling_parameters", "exclude_input_in_output", "stream"}
    assert genai_perf_trtllm | genai_perf_vllm <= set(inputs)


def test_served_config_declares_the_tensors(fp32_repository):
    inputs = {i.name for i in read_config(fp32_repository / "gpt2").input}
    assert {name for name, _, _, _ in TENSOR_INPUTS} <= inputs
