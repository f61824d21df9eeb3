"""Repository builder and embedded-server failure modes, against the real Triton binary."""

from __future__ import annotations

import json
import re
import shutil
import socket

import pytest
from conftest import start_server
from tritonclient.grpc import model_config_pb2 as mc

from aigc.cli import build_parser
from aigc.cli import main as aigc_main
from aigc.errors import BuildError, ConfigError, ServerError
from serving.builder import BuildOptions, build_repository, choose_variant, read_config, versions
from serving.server import EmbeddedTritonServer
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
    with pytest.raises(ConfigError, match="--runtime openvino serves on the CPU"):
        BuildOptions(runtime="openvino", target="gpu").validate()
    with pytest.raises(ConfigError, match="--runtime must be one of auto, onnxruntime, openvino"):
        BuildOptions(runtime="tensorrt").validate()


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
    with pytest.raises(BuildError, match="needs two ONNX Runtime CPU variants"):
        choose_variant(report, "gpt2", "fp32+int8", "gpu")
    with open(exports["gpt2"] / "export_report.json") as f:
        original = f.read()
    try:  # the builder reads the report from the export folder
        (exports["gpt2"] / "export_report.json").write_text(json.dumps(report))
        built = build_repository(
            [exports["gpt2"]], tmp_path / "repo", BuildOptions(variant="fp32+int8", intra_op_threads=1)
        )
    finally:
        (exports["gpt2"] / "export_report.json").write_text(original)
    version = built[0].path
    assert built[0].variant == "fp32+int8"
    assert (version / "companion.onnx").read_bytes() == (exports["gpt2"] / "int8" / "gpt2.onnx").read_bytes()
    cfg = read_config(version.parent)
    assert cfg.parameters["companion_prefill"].string_value == "true"
    assert cfg.parameters["companion_from_rows"].string_value == str(why["routing"]["companion_from_rows"])
    meta = json.loads((version / "aigc_version.json").read_text())
    assert meta["companion"] == "int8" and meta["companion_fidelity"]["perplexity"] > 0


def test_gpt2_engine_settings_reach_the_config_and_build_reports_the_cache(exports, tmp_path):
    built = build_repository(
        [exports["gpt2"]],
        tmp_path / "repo",
        BuildOptions(variant="fp32", kv_slots=3, kv_max_len=48, prefill_chunk=5, max_queue=7),
    )
    params = read_config(tmp_path / "repo" / "gpt2").parameters
    assert {
        k: params[k].string_value for k in ("kv_slots", "kv_max_len", "prefill_chunk", "max_queue_size")
    } == {
        "kv_slots": "3",
        "kv_max_len": "48",
        "prefill_chunk": "5",
        "max_queue_size": "7",
    }
    assert params["max_tokens_limit"].string_value == "47"
    info = json.loads((exports["gpt2"] / "assets" / "model_info.json").read_text())
    mib = 2 * info["n_layer"] * 3 * info["n_head"] * 48 * info["head_size"] * 4 / 2**20
    assert f"KV cache: 3 slots x 48 positions = {mib:.0f} MiB" in str(built[0])
    bad = {
        "kv_slots": (0, "--slots must be in 1..1024"),
        "prefill_chunk": (0, "--prefill-chunk must be in 1..4096"),
        "max_queue": (-1, "--max-queue must be in 0..100000"),
        "max_request_seconds": (0, "--max-request-seconds must be > 0"),
    }
    for field, (value, message) in bad.items():
        with pytest.raises(ConfigError, match=message):
            BuildOptions(**{field: value}).validate()
    with pytest.raises(ConfigError, match="--max-len must be <= the context window"):
        build_repository([exports["gpt2"]], tmp_path / "r2", BuildOptions(variant="fp32", kv_max_len=10**6))


def test_written_configs_parse_back(fp32_repository):
    for model_dir in fp32_repository.iterdir():
        cfg = read_config(model_dir)
        assert isinstance(cfg, mc.ModelConfig) and cfg.name == model_dir.name
        if cfg.HasField("dynamic_batching"):
            # A queue-policy timeout made Triton's batcher hold requests ~500 ms under
            # concurrency; image models batch what is queued without any waiting.
            assert not cfg.dynamic_batching.HasField("default_queue_policy")
            assert cfg.dynamic_batching.max_queue_delay_microseconds == 0


@pytest.mark.server
def test_port_in_use_is_named(fp32_repository, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        srv = EmbeddedTritonServer(
            fp32_repository, grpc_port=port, http_port=0, metrics_port=0, log_file=tmp_path / "t.log"
        )
        with pytest.raises(ServerError, match=f"port {port} \\(gRPC\\).*in use"):
            srv.start()


@pytest.mark.server
def test_model_that_fails_to_load_reports_tritons_reason(exports, tmp_path):
    repo = tmp_path / "repo"
    build_repository([exports["dcgan"]], repo, BuildOptions(variant="fp32"))
    (repo / "dcgan" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    with pytest.raises(ServerError, match="dcgan") as err:
        start_server(repo, startup_timeout_s=120)
    assert "failed to load 'dcgan'" in str(err.value)


def test_empty_repository_is_refused(tmp_path):
    (tmp_path / "repo").mkdir()
    with pytest.raises(ServerError, match="aigc build"):
        EmbeddedTritonServer(tmp_path / "repo").start()


def test_cli_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    listed = {line.split()[0] for line in text.splitlines() if line.startswith("    ") and line.split()}
    assert {
        "train",
        "export",
        "build",
        "serve",
        "rollback",
        "generate",
        "bench",
        "create-gpt2",
        "results",
        "demo",
    } <= listed


def test_cli_build_error_exits_2(tmp_path, capsys):
    assert (
        aigc_main(["build", "--exports", str(tmp_path / "nothing"), "--repository", str(tmp_path / "r")]) == 2
    )
    assert "export_report.json" in capsys.readouterr().err


@pytest.mark.server
def test_new_version_switches_after_load_and_rollback_returns(exports, tmp_path):
    """Build v1, serve it, build v2 and switch the running server to it, then roll back."""
    from serving.control import reload, rollback, served_versions

    repo = tmp_path / "repo"
    build_repository([exports["dcgan"]], repo, BuildOptions(variant="fp32"))
    srv = start_server(repo)
    try:
        assert served_versions(srv.grpc_url, "dcgan") == [1]
        build_repository([exports["dcgan"]], repo, BuildOptions(variant="int8"))
        assert reload(srv.grpc_url, "dcgan") == 2
        assert served_versions(srv.grpc_url, "dcgan") == [2]
        # A broken version 3 fails to load; version 2 keeps serving.
        build_repository([exports["dcgan"]], repo, BuildOptions(variant="fp32"))
        (repo / "dcgan" / "3" / "model.onnx").write_bytes(b"broken")
        with pytest.raises(ServerError, match="previous one keeps serving"):
            reload(srv.grpc_url, "dcgan")
        from serving.client import AigcClient

        with AigcClient(srv.grpc_url) as c:
            assert c.generate_images("dcgan", n=1, seed=0).shape == (1, 32, 32, 1)
        assert rollback(repo, "dcgan", srv.grpc_url) == 2
        assert rollback(repo, "dcgan", srv.grpc_url) == 1
        assert served_versions(srv.grpc_url, "dcgan") == [1]
        assert sorted(p.name.split("-")[0] for p in (tmp_path / "repo.retired" / "dcgan").iterdir()) == [
            "2",
            "3",
        ]
    finally:
        srv.stop()


@pytest.mark.server
def test_stream_cut_by_server_stop_ends_with_an_error_not_a_hang(fp32_repository, tmp_path):
    import threading
    import time

    from aigc.errors import ClientError
    from serving.client import AigcClient

    repo = tmp_path / "repo"
    shutil.copytree(fp32_repository, repo)
    srv = start_server(repo, exit_timeout_s=1)
    outcome, details = {}, {}

    def stream():
        try:
            with AigcClient(srv.grpc_url, timeout_s=20) as c:
                for _ in c.generate_text("The class", max_tokens=120, ignore_eos=True, details=details):
                    time.sleep(0.05)  # a slow reader keeps the stream open
            outcome["result"] = "completed"
        except ClientError as exc:
            outcome["result"] = f"error: {exc}"

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    srv.stop()
    t.join(30)
    assert not t.is_alive(), "the client hung after the server stopped"
    assert time.monotonic() - t0 < 30
    # The tiny model may write all 120 tokens before the stop (the slow reader drains them from
    # the client's buffer): then the text is whole. Otherwise the error says the server went.
    if outcome["result"] == "completed":
        assert details["completion_tokens"] == 120 and details["finish_reason"] == "length"
    else:
        assert re.search(
            r"shutting down|UNAVAILABLE|Socket closed|Stream removed|no response|connect", outcome["result"]
        ), outcome["result"]


@pytest.mark.server
def test_stop_drains_a_stream_in_flight_within_the_exit_timeout(fp32_repository, tmp_path):
    """SIGTERM with a generous exit timeout lets an active stream finish, every token delivered."""
    import threading
    import time

    from serving.client import AigcClient

    repo = tmp_path / "repo"
    shutil.copytree(fp32_repository, repo)
    srv = start_server(repo, exit_timeout_s=30)
    with AigcClient(srv.grpc_url, timeout_s=30) as c:
        solo = c.generate_text("The class", max_tokens=120, ignore_eos=True, stream=False)
    pieces = []

    def stream():
        with AigcClient(srv.grpc_url, timeout_s=30) as c:
            for piece in c.generate_text("The class", max_tokens=120, ignore_eos=True):
                pieces.append(piece)
                time.sleep(0.01)

    t = threading.Thread(target=stream)
    t.start()
    while not pieces and t.is_alive():
        time.sleep(0.01)
    srv.stop()
    t.join(30)
    assert not t.is_alive()
    assert "".join(pieces) == solo


def test_client_retries_unavailable_then_names_the_address(tmp_path):
    import time

    from aigc.errors import ClientError
    from serving.client import AigcClient
    from serving.server import free_port

    port = free_port()
    with AigcClient(f"127.0.0.1:{port}", timeout_s=2, retry_deadline_s=1.5) as c:
        t0 = time.monotonic()
        with pytest.raises(ClientError, match=str(port)):
            c.generate_images("dcgan", n=1)
        # Retried with backoff (0.1 + 0.2 + 0.4 s) inside the 1.5 s deadline, then gave up.
        assert 0.6 <= time.monotonic() - t0 < 10


@pytest.mark.server
def test_request_timeout_comes_from_the_repository_config(exports, tmp_path):
    """A deadline shorter than any step (a microsecond) ends every request with the named error,
    whatever the machine's speed; the model keeps answering."""
    from aigc.errors import ClientError
    from serving.client import AigcClient

    repo = tmp_path / "repo"
    build_repository([exports["gpt2"]], repo, BuildOptions(variant="fp32", max_request_seconds=1e-6))
    assert read_config(repo / "gpt2").parameters["max_request_seconds"].string_value == "1e-06"
    srv = start_server(repo)
    try:
        with AigcClient(srv.grpc_url) as c:
            for stream in (True, False):
                with pytest.raises(ClientError, match=r"max_request_seconds \(1e-06 s\)"):
                    out = c.generate_text("The class", max_tokens=120, ignore_eos=True, stream=stream)
                    list(out) if stream else None
            assert c.is_ready("gpt2")
    finally:
        srv.stop()
