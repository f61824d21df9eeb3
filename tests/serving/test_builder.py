"""The repository builder: versions beside the old ones, a failed build leaving them untouched,
the variant (and runtime, and pair) `auto` serves and why, the engine settings in
config.pbtxt."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from aigc.errors import BuildError, ConfigError
from engine.config import EngineConfig
from serving.builder import BuildOptions, build_repository, choose_variant
from serving.repository import read_config, versions
from serving.variant_choice import Workload, describe, split_pair


def test_build_adds_a_version_beside_the_old_one(exports, tmp_path):
    repo = tmp_path / "repo"
    first = build_repository([exports["dcgan"]], repo, BuildOptions(variant="fp32"))
    second = build_repository([exports["dcgan"]], repo, BuildOptions(variant="int8"))
    assert [b.version for b in first] == [1] and [b.version for b in second] == [2]
    assert versions(repo / "dcgan") == [1, 2]
    meta = json.loads((repo / "dcgan" / "2" / "aigc_version.json").read_text())
    assert meta["variant"] == "int8"
    assert read_config(repo / "dcgan").name == "dcgan"
    assert not (tmp_path / "repo.staging").exists()


def test_failed_build_leaves_the_previous_version_untouched(exports, tmp_path):
    repo = tmp_path / "repo"
    build_repository([exports["dcgan"]], repo, BuildOptions(variant="fp32"))
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    broken = tmp_path / "broken"
    shutil.copytree(exports["vae"], broken)
    (broken / "fp32" / "vae_decoder.onnx").unlink()
    with pytest.raises(BuildError, match="vae_decoder"):
        build_repository([exports["dcgan"], broken], repo, BuildOptions(variant="fp32"))
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == before
    assert not (tmp_path / "repo.staging").exists()


def test_variant_choice(exports):
    from export.api import read_report

    report = read_report(exports["gpt2"])
    del report["variants"]["ov-fp32"]  # the ONNX variants here; the runtimes: test_auto_picks_the_runtime...
    main, companion = split_pair(choose_variant(report, "gpt2", "auto", "cpu")[0])
    assert {main, companion} - {None} <= {"fp32", "int8"}  # one graph, or a pair over one set of slots
    report["variants"]["int8"]["passed"] = False
    report["variants"]["int8"]["reason"] = "perplexity +9%"
    assert choose_variant(report, "gpt2", "auto", "cpu")[0] == "fp32"
    with pytest.raises(BuildError, match=r"int8 .*did not pass its gate: perplexity \+9%"):
        choose_variant(report, "gpt2", "int8", "cpu")
    with pytest.raises(BuildError, match="int4"):
        choose_variant(report, "gpt2", "int4", "cpu")


def _profile(step_1, step_8, growth, prefill_16, prefill_128):
    """A decode profile: step at 48 cached tokens, `growth` x that at 496; two prefills."""
    return {
        "past_lens": [48, 496],
        "step_ms": {"1": {"48": step_1, "496": step_1 * growth}, "8": {"48": step_8, "496": step_8 * growth}},
        "prefill_ms": {"16": prefill_16, "128": prefill_128},
    }


def test_auto_ranks_gpt2_variants_by_the_expected_latency_of_the_workload(exports):
    from export.api import read_report
    from export.latency_model import Workload, expected_request, step_ms_at

    report = read_report(exports["gpt2"])
    for name in ("fp32", "int8", "ov-fp32"):
        profile = report["variants"][name]["decode_profile"]
        assert set(profile["step_ms"]) == {"1", "4", "8"}
        assert all(ms > 0 for by_past in profile["step_ms"].values() for ms in by_past.values())
        assert all(v > 0 for v in profile["prefill_ms"].values())
    assert report["expected_latency"]["fastest"] in ("fp32", "int8", "ov-fp32")
    del report["variants"]["ov-fp32"]  # the ONNX variants alone below; runtimes: the next test
    # As measured on a Xeon: int4 steps faster alone, int8 prefills 2.5x faster and batches better.
    int4 = _profile(step_1=5.0, step_8=17.8, growth=1.2, prefill_16=18.2, prefill_128=140.0)
    int8 = _profile(step_1=5.5, step_8=10.7, growth=1.2, prefill_16=7.3, prefill_128=55.0)
    report["variants"]["int8"]["decode_profile"] = int8
    report["variants"]["fp32"]["decode_profile"] = int4
    assert step_ms_at(int8, 4, 48) == pytest.approx(5.5 + (10.7 - 5.5) * 3 / 7)
    assert step_ms_at(int8, 16, 48) == pytest.approx(10.7 + (10.7 - 5.5) * 8 / 7)  # last slope onwards
    assert step_ms_at(int8, 1, 272) == pytest.approx(5.5 * 1.1)
    e = expected_request(int8, Workload(prompt_tokens=16, new_tokens=65, streams=1))
    assert e["request_ms"] == pytest.approx(7.3 + 64 * step_ms_at(int8, 1, 16 + 32.5), abs=1e-3)
    # One user with a short prompt: the faster step wins alone; several users: int8. (The pair
    # that decodes one stream with the first and prefills and batches with int8 beats both.)
    one = Workload(prompt_tokens=16, new_tokens=256, streams=1)
    _, why_one = choose_variant(report, "gpt2", "auto", "cpu", one)
    singles = {n: e["request_ms"] for n, e in why_one["expected"].items() if "+" not in n}
    assert min(singles, key=singles.get) == "fp32"
    name, why = choose_variant(report, "gpt2", "auto", "cpu")
    assert why["workload"] == Workload().as_dict()
    assert why["expected"]["int8"]["request_ms"] < why["expected"]["fp32"]["request_ms"]
    assert (
        name == "fp32+int8" and why["expected"][name]["request_ms"] <= why["expected"]["int8"]["request_ms"]
    )
    # Without a profile for every candidate, ranking falls back to the batch-1 latency.
    del report["variants"]["int8"]["decode_profile"]
    report["variants"]["int8"]["latency_ms"]["gpt2"] = 99.0
    assert choose_variant(report, "gpt2", "auto", "cpu")[0] == "fp32"
    # --target gpu prefers the variant made for GPUs over CPU-measured latencies.
    report["variants"]["fp16"] = dict(report["variants"]["fp32"], target="gpu", latency_ms={"gpt2": 90.0})
    assert choose_variant(report, "gpt2", "auto", "gpu")[0] == "fp16"
    assert choose_variant(report, "gpt2", "auto", "cpu")[0] == "fp32"
    with pytest.raises(Exception, match="--streams must be in 1..1024"):
        BuildOptions(workload=Workload(streams=0)).validate()


def test_auto_picks_the_runtime_whose_profile_is_faster(exports):
    """`--runtime auto` ranks the variants of both runtimes together; a named runtime limits
    the choice to its variants. Fed profiles: no timing here."""
    from export.api import read_report

    report = read_report(exports["gpt2"])
    variants = report["variants"]
    assert variants["ov-fp32"]["runtime"] == "openvino" and variants["fp32"]["runtime"] == "onnxruntime"
    del variants["int8"]
    fast = _profile(step_1=3.1, step_8=6.0, growth=1.1, prefill_16=8.7, prefill_128=60.0)
    slow = _profile(step_1=5.5, step_8=10.7, growth=1.2, prefill_16=7.3, prefill_128=55.0)
    variants["ov-fp32"]["decode_profile"], variants["fp32"]["decode_profile"] = fast, slow
    name, why = choose_variant(report, "gpt2", "auto", "cpu")
    assert (name, why["runtime"]) == ("ov-fp32", "openvino")
    assert why["runtimes_considered"] == ["onnxruntime", "openvino"]
    assert "ov-fp32 on openvino" in describe("gpt2", name, why)
    assert choose_variant(report, "gpt2", "auto", "cpu", runtime="onnxruntime")[0] == "fp32"
    variants["ov-fp32"]["decode_profile"], variants["fp32"]["decode_profile"] = slow, fast
    name, why = choose_variant(report, "gpt2", "auto", "cpu")
    assert (name, why["runtime"]) == ("fp32", "onnxruntime")
    assert choose_variant(report, "gpt2", "auto", "cpu", runtime="openvino")[0] == "ov-fp32"
    # GPUs: OpenVINO here serves CPUs only.
    assert choose_variant(report, "gpt2", "auto", "gpu")[0] == "fp32"
    with pytest.raises(BuildError, match="runs on openvino, not on --runtime onnxruntime"):
        choose_variant(report, "gpt2", "ov-fp32", "cpu", runtime="onnxruntime")
    variants["ov-fp32"]["passed"] = False
    variants["ov-fp32"]["reason"] = "perplexity too high"
    with pytest.raises(BuildError, match="on --runtime openvino"):
        choose_variant(report, "gpt2", "auto", "cpu", runtime="openvino")
    with pytest.raises(ConfigError, match="--runtime openvino serves on cpu; use another --target"):
        BuildOptions(runtime="openvino", target="gpu").validate()
    with pytest.raises(ConfigError, match="--runtime must be one of auto, onnxruntime, openvino"):
        BuildOptions(runtime="tensorrt").validate()


def test_auto_takes_expected_latencies_within_the_noise_as_a_tie_won_by_one_streams_latency(exports):
    """Two runtimes 3 % apart at the workload's 4 streams (a profile's figures move up to 5 %
    between exports on a shared machine) are a tie: the one faster for one stream is served,
    whichever came first. 10 % apart, the faster at 4 streams is served. Fed profiles."""
    from export.api import read_report
    from export.latency_model import Workload
    from serving.variant_choice import TIE

    report = read_report(exports["gpt2"])
    variants = report["variants"]
    del variants["int8"]
    brisk = _profile(step_1=2.5, step_8=7.0, growth=1.2, prefill_16=8.0, prefill_128=60.0)
    variants["fp32"]["decode_profile"] = brisk
    four = choose_variant(report, "gpt2", "auto", "cpu")[1]["expected"]["fp32"]["request_ms"]
    one = Workload(streams=1)
    for factor, served in ((1 + TIE * 0.6, "fp32"), (1 + TIE * 2, "ov-fp32")):
        # ov-fp32: slower alone (3.8 ms steps), cheaper at 8 rows; scaled so that its 4-stream
        # latency is fp32's divided by `factor`
        step_1, step_8 = 3.8, 7.0
        for _ in range(60):  # rescale step_8 until the 4-stream figure lands where asked
            variants["ov-fp32"]["decode_profile"] = _profile(step_1, step_8, 1.2, 8.0, 60.0)
            got = choose_variant(report, "gpt2", "auto", "cpu")[1]["expected"]["ov-fp32"]["request_ms"]
            step_8 *= (four / factor / got) ** 0.5
        name, why = choose_variant(report, "gpt2", "auto", "cpu")
        expected = why["expected"]
        assert expected["fp32"]["request_ms"] / expected["ov-fp32"]["request_ms"] == pytest.approx(factor, rel=1e-3)
        assert name == served, (factor, expected)
        alone = choose_variant(report, "gpt2", "auto", "cpu", one)[1]["expected"]
        assert alone["fp32"]["request_ms"] < alone["ov-fp32"]["request_ms"]
    assert f"within {TIE:.0%} of it, the lowest for one stream" in why["rule"]


def test_auto_pairs_two_graphs_when_each_is_faster_at_its_own_calls(exports, tmp_path):
    """int4-like steps alone, int8-like prefills and batches (fed profiles): `auto` serves the
    pair, the companion's file and routing reach the version folder and the config."""
    from export.api import read_report

    report = read_report(exports["gpt2"])
    variants = report["variants"]
    del variants["ov-fp32"]
    variants["fp32"]["decode_profile"] = _profile(
        step_1=5.0, step_8=17.8, growth=1.2, prefill_16=18.2, prefill_128=140.0
    )
    variants["int8"]["decode_profile"] = _profile(
        step_1=5.5, step_8=10.7, growth=1.2, prefill_16=7.3, prefill_128=55.0
    )
    name, why = choose_variant(
        report, "gpt2", "auto", "cpu", Workload(prompt_tokens=16, new_tokens=64, streams=1)
    )
    assert name == "fp32+int8"
    assert why["routing"]["companion_prefill"] is True
    assert 2 <= why["routing"]["companion_from_rows"] <= 8
    assert "int8 (sharing its KV slots) runs the prefills" in describe("gpt2", name, why)
    # Each graph alone is slower than the pair: the pair is chosen at 4 streams too.
    assert choose_variant(report, "gpt2", "auto", "cpu")[0] == "fp32+int8"
    with pytest.raises(BuildError, match="int9 is not in the export"):
        choose_variant(report, "gpt2", "fp32+int9", "cpu")
    with pytest.raises(BuildError, match="needs two CPU variants of onnxruntime"):
        choose_variant(report, "gpt2", "fp32+int8", "gpu")
    export = tmp_path / "export"  # the builder reads the report from the export folder
    shutil.copytree(exports["gpt2"], export)
    (export / "export_report.json").write_text(json.dumps(report))
    built = build_repository(
        [export], tmp_path / "repo", BuildOptions(variant="fp32+int8", intra_op_threads=1)
    )
    version = built[0].path
    assert built[0].variant == "fp32+int8"
    assert (version / "companion.onnx").read_bytes() == (export / "int8" / "gpt2.onnx").read_bytes()
    cfg = read_config(version.parent)
    assert cfg.parameters["companion_prefill"].string_value == "true"
    assert cfg.parameters["companion_from_rows"].string_value == str(why["routing"]["companion_from_rows"])
    meta = json.loads((version / "aigc_version.json").read_text())
    assert meta["companion"] == "int8" and meta["companion_fidelity"]["perplexity"] > 0
    # the prefills run on the companion, so the mixed calls do too: its graph, rewritten
    mixed = onnx.load(str(version / "mixed.onnx"))
    assert {"chunk_seqlens_k", "chunk_past_key_0", "logits_indices"} <= {i.name for i in mixed.graph.input}
    int8 = {i.name: i for i in onnx.load(str(export / "int8" / "gpt2.onnx")).graph.initializer}
    assert any(
        i.name in int8 and i.raw_data == int8[i.name].raw_data and i.data_type == onnx.TensorProto.INT8
        for i in mixed.graph.initializer
    )
    assert "Mixed calls: mixed.onnx" in built[0].detail and "companion.onnx's weights" in built[0].detail


def test_the_mixed_call_graph_is_built_on_the_cpu_where_asked_and_the_runner_loads_it(exports, tmp_path):
    from engine.config import EngineConfig as Config
    from engine.loader import load_engine

    on = build_repository([exports["gpt2"]], tmp_path / "a", BuildOptions(variant="fp32", intra_op_threads=1))
    assert (on[0].path / "mixed.onnx").is_file() and "Mixed calls: mixed.onnx" in on[0].detail
    engine = load_engine(str(on[0].path), Config(slots=2), intra_op_threads=1)
    assert engine.runner.caps.mixed_slots and "one call of mixed.onnx" in engine.runner.describe()
    off = build_repository(
        [exports["gpt2"]],
        tmp_path / "b",
        BuildOptions(variant="fp32", engine=EngineConfig(mixed_calls=False)),
    )
    assert not (off[0].path / "mixed.onnx").exists() and "--no-mixed-calls" in off[0].detail
    cfg = read_config(off[0].path.parent)
    assert cfg.parameters["mixed_calls"].string_value == "false"
    engine = load_engine(
        str(off[0].path), Config.from_parameters({"mixed_calls": "false"}), intra_op_threads=1
    )
    assert not engine.runner.caps.mixed and "mixed calls: off" in engine.runner.describe()


def test_gpt2_engine_settings_reach_the_config_and_build_reports_the_cache(exports, tmp_path):
    built = build_repository(
        [exports["gpt2"]],
        tmp_path / "repo",
        BuildOptions(variant="fp32", engine=EngineConfig(slots=3, max_len=48, prefill_chunk=5, max_queue=7)),
    )
    params = read_config(tmp_path / "repo" / "gpt2").parameters
    assert {k: params[k].string_value for k in ("slots", "max_len", "prefill_chunk", "max_queue")} == {
        "slots": "3",
        "max_len": "48",
        "prefill_chunk": "5",
        "max_queue": "7",
    }
    # every setting is written, and reads back as the engine's config (the cap applied)
    written = EngineConfig.from_parameters({k: v.string_value for k, v in params.items()})
    expected = EngineConfig(
        slots=3,
        max_len=48,
        prefill_chunk=5,
        max_queue=7,
        max_tokens_limit=47,
        cuda_graph=False,
        kv_cache_precision="f32",  # the cache served, as the build resolved auto
    )
    assert written == expected  # CUDA graphs only for --target gpu
    assert params["max_tokens_limit"].string_value == "47"
    info = json.loads((exports["gpt2"] / "assets" / "model_info.json").read_text())
    mib = 2 * info["n_layer"] * 3 * info["n_head"] * 48 * info["head_size"] * 4 / 2**20
    assert (
        f"KV cache: {mib:.0f} MiB (144 positions), f32, each sequence's rows committed by use as it grows "
        f"(pages of {4096 // (info['head_size'] * 4)} positions), given back when it ends; up to 64 sequences "
        "of up to 48 positions at once"
    ) in str(built[0])
    bad = {
        "slots": (0, r"--slots must be an integer in 1\.\.1024, got 0"),
        "prefill_chunk": (0, r"--prefill-chunk must be an integer in 1\.\.4096"),
        "max_queue": (-1, r"--max-queue must be an integer in 0\.\.100000"),
        "max_request_seconds": (0, r"--max-request-seconds must be a number in \(0, 86400\]"),
    }
    for field, (value, message) in bad.items():
        with pytest.raises(ConfigError, match=message):
            BuildOptions(engine=EngineConfig(**{field: value})).validate()
    with pytest.raises(ConfigError, match=r"--max-len must be an integer in 0\.\.\d+ .*context window"):
        build_repository(
            [exports["gpt2"]],
            tmp_path / "r2",
            BuildOptions(variant="fp32", engine=EngineConfig(max_len=10**6)),
        )


def test_the_kv_cache_precision_auto_serves_is_the_exports_choice(exports, tmp_path):
    """`--kv-cache-precision auto` writes what the export chose for the variant (its gate and
    its measurement); an asked precision is written as asked; ONNX Runtime takes none."""
    export = tmp_path / "export"
    shutil.copytree(exports["gpt2"], export)
    report_file = export / "export_report.json"
    report = json.loads(report_file.read_text())
    kv = report["variants"]["ov-fp32"]["kv_cache"]
    assert kv["choice"] in ("u8", "f32") and kv["u8"]["bytes_per_token"] < kv["f32"]["bytes_per_token"] / 2

    def built(choice, asked, mib=0.0):
        kv["choice"] = choice
        report_file.write_text(json.dumps(report))
        repo = tmp_path / f"repo-{choice}-{asked}"
        engine = EngineConfig(kv_cache_precision=asked, kv_cache_mib=mib)
        out = build_repository(
            [export], repo, BuildOptions(variant="ov-fp32", runtime="openvino", engine=engine)
        )
        return read_config(repo / "gpt2").parameters["kv_cache_precision"].string_value, str(out[0])

    assert built("u8", "auto")[0] == "u8" and built("f32", "auto")[0] == "f32"
    precision, detail = built("f32", "u8", mib=2.0)
    positions = 2 * 2**20 / kv["u8"]["bytes_per_token"]
    assert (
        precision == "u8"
        and f"KV cache: 2 MiB ({positions:.0f} positions), u8 blocks of 32 positions taken by use, allocated "
        "once when the model loads"
        in detail
    )
    with pytest.raises(
        ConfigError, match=r"--kv-cache-precision u8 applies to OpenVINO's cache; fp32 runs on ONNX Runtime"
    ):
        build_repository(
            [exports["gpt2"]],
            tmp_path / "r3",
            BuildOptions(variant="fp32", engine=EngineConfig(kv_cache_precision="u8")),
        )
    with pytest.raises(
        ConfigError, match="--kv-cache-precision i8 is ONNX Runtime's 8-bit cache; ov-fp32 runs"
    ):
        built("f32", "i8")


def test_an_onnxruntime_int8_cache_is_served_where_asked_or_chosen(exports, tmp_path):
    """ONNX Runtime's cache is its graph's: `--kv-cache-precision i8`, or `auto` where the
    export chose it, puts the variant's int8-cache graph in the version; f32 keeps the
    variant's own; a variant without one is refused with the reason."""
    export = tmp_path / "export"
    shutil.copytree(exports["gpt2"], export)
    report_file = export / "export_report.json"
    report = json.loads(report_file.read_text())
    kv = report["variants"]["int8"]["kv_cache"]
    assert kv["i8"]["passed"], kv  # the tiny trained model's int8 cache passes its gate

    def built(choice, asked):
        kv["choice"] = choice
        report_file.write_text(json.dumps(report))
        repo = tmp_path / f"repo-{choice}-{asked}"
        engine = EngineConfig(kv_cache_precision=asked)
        out = build_repository([export], repo, BuildOptions(variant="int8", engine=engine))
        cache = {
            i.name: i.type.tensor_type.elem_type
            for i in onnx.load(str(out[0].path / "model.onnx"), load_external_data=False).graph.input
        }["past_key_0"]
        meta = json.loads((out[0].path / "aigc_version.json").read_text())
        precision = read_config(repo / "gpt2").parameters["kv_cache_precision"].string_value
        return precision, cache, str(out[0]), meta["choice"].get("kv_cache")

    precision, cache, detail, why = built("i8", "auto")
    assert (precision, cache) == ("i8", onnx.TensorProto.INT8) and why == kv["why"]
    per_token = kv["i8"]["bytes_per_token"]
    assert f"({8 * report['model_info']['n_positions']} positions), int8" in detail
    assert f"KV cache: {8 * report['model_info']['n_positions'] * per_token / 2**20:.0f} MiB" in detail
    assert built("f32", "auto")[:2] == ("f32", onnx.TensorProto.FLOAT)
    precision, cache, _, why = built("f32", "i8")
    assert (precision, cache) == ("i8", onnx.TensorProto.INT8) and why.startswith(
        "i8: --kv-cache-precision i8"
    )
    assert built("i8", "f32")[:2] == ("f32", onnx.TensorProto.FLOAT)
    with pytest.raises(
        ConfigError, match="--kv-cache-precision i8: the export has no int8-cache graph of fp32"
    ):
        build_repository(
            [export],
            tmp_path / "r4",
            BuildOptions(variant="fp32", engine=EngineConfig(kv_cache_precision="i8")),
        )
    with pytest.raises(
        ConfigError, match="--kv-cache-precision i8: the int8 cache is made and measured for the CPU"
    ):
        build_repository(
            [export],
            tmp_path / "r5",
            BuildOptions(variant="int8", target="gpu", engine=EngineConfig(kv_cache_precision="i8")),
        )
    # a failed gate: auto serves f32 whatever the choice says
    kv["i8"]["passed"] = False
    assert built("i8", "auto")[:2] == ("f32", onnx.TensorProto.FLOAT)


def test_written_configs_parse_back(fp32_repository):
    for model_dir in fp32_repository.iterdir():
        cfg = read_config(model_dir)
        assert isinstance(cfg, mc.ModelConfig) and cfg.name == model_dir.name
        if cfg.HasField("dynamic_batching"):
            # A queue-policy timeout made Triton's batcher hold requests ~500 ms under
            # concurrency; image models batch what is queued without any waiting.
            assert not cfg.dynamic_batching.HasField("default_queue_policy")
            assert cfg.dynamic_batching.max_queue_delay_microseconds == 0
