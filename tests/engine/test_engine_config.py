"""Every engine setting is defined once, in `EngineConfig`: the `aigc build` flags, the
config.pbtxt parameters and the range checks all come from its fields."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from engine.config import EngineConfig


def test_every_setting_has_a_help_text_and_a_range_its_choices_or_a_boolean_type():
    for f in dataclasses.fields(EngineConfig):
        assert f.metadata["help"], f.name
        assert f.type == "bool" or f.metadata["lo"] is not None or f.metadata["choices"], f.name
        assert not f.metadata["choices"] or f.default in f.metadata["choices"], f.name


def test_parameters_round_trip_every_setting():
    config = EngineConfig(
        slots=3,
        max_len=48,
        prefill_budget=0.5,
        cuda_graph=False,
        max_request_seconds=1e-6,
        kv_cache_precision="u8",
    )
    params = config.to_parameters()
    assert set(params) == {f.name for f in dataclasses.fields(EngineConfig)}
    assert params["max_request_seconds"] == "1e-06" and params["cuda_graph"] == "false"
    assert params["kv_cache_precision"] == "u8"
    assert EngineConfig.from_parameters(params) == config
    assert EngineConfig.from_parameters({"slots": "2", "unrelated": "x", "max_len": ""}) == EngineConfig(
        slots=2
    )


@pytest.mark.parametrize(
    "params, message",
    [
        ({"slots": "abc"}, "slots must be int, got 'abc'"),
        ({"cuda_graph": "maybe"}, "cuda_graph must be true or false"),
        ({"prefill_budget": "x"}, "prefill_budget must be float"),
        ({"kv_cache_precision": "int3"}, "kv_cache_precision must be one of auto, f32, f16, u8, i8, got 'int3'"),
    ],
)
def test_a_parameter_that_does_not_parse_is_named(params, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig.from_parameters(params)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"slots": 0}, r"slots must be an integer in 1\.\.1024, got 0"),
        ({"slots": 2.5}, r"slots must be an integer"),
        ({"prefill_budget": -1.0}, r"prefill_budget must be a number in 0\.\.100 \(0 = fixed"),
        ({"max_request_seconds": 0.0}, r"max_request_seconds must be a number in \(0, 86400\]"),
        ({"max_queue": 100_001}, r"max_queue must be an integer in 0\.\.100000"),
        ({"metrics_interval_s": -1.0}, r"metrics_interval_s must be a number in 0\.\.3600 \(0 = off\)"),
        ({"kv_cache_precision": "i4"}, r"kv_cache_precision must be one of auto, f32, f16, u8, i8, got 'i4'"),
    ],
)
def test_out_of_range_settings_name_the_setting_and_its_range(changes, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(**changes).check()


def test_the_context_window_bounds_max_len_and_flags_spell_the_setting_as_a_flag():
    EngineConfig(max_len=1024).check(n_positions=1024)
    with pytest.raises(ValueError, match=r"^--max-len must be an integer in 0\.\.128"):
        EngineConfig(max_len=129).check(n_positions=128, flags=True)


def test_flags_are_generated_from_the_fields_with_their_defaults_and_ranges():
    parser = argparse.ArgumentParser()
    EngineConfig.add_arguments(parser)
    flagged = [f for f in dataclasses.fields(EngineConfig) if f.metadata["flag"]]
    assert EngineConfig.from_args(parser.parse_args([])) == EngineConfig()
    args = parser.parse_args(
        ["--slots", "3", "--no-cuda-graph", "--prefill-budget", "0.5", "--kv-cache-precision", "u8"]
    )
    assert EngineConfig.from_args(args) == EngineConfig(
        slots=3, cuda_graph=False, prefill_budget=0.5, kv_cache_precision="u8"
    )
    text = parser.format_help()
    for f in flagged:
        assert "--" + f.name.replace("_", "-") in text
    assert "an integer in 1..1024 (default 8)" in " ".join(text.split())
    assert "--companion-prefill" not in text  # set by the build from measurements


def test_aigc_build_help_lists_every_engine_flag():
    from serving.commands import add_build_arguments

    parser = argparse.ArgumentParser()
    add_build_arguments(parser)
    text = parser.format_help()
    for f in dataclasses.fields(EngineConfig):
        if f.metadata["flag"]:
            assert "--" + f.name.replace("_", "-") in text, f.name
    args = parser.parse_args(["--exports", "x", "--slots", "5", "--max-tokens-limit", "9"])
    assert EngineConfig.from_args(args) == EngineConfig(slots=5, max_tokens_limit=9)
