"""Export of the image models: parity with PyTorch, quantized variants and their gates, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from support import exported, trained

from aigc import registry
from aigc.cli import main as aigc_main
from aigc.errors import CheckpointError, ConfigError
from export import quantize
from export.api import export_model
from export.images import FromUint8Image, ToUint8Image
from export.ortutil import make_session
from training.models import load_image_checkpoint

IMAGE_KINDS = [k.name for k in registry.KINDS.values() if k.image_model]


@pytest.fixture(scope="module")
def image_checkpoints(artifacts):
    return {m: trained(artifacts, m, steps=2) for m in IMAGE_KINDS}


@pytest.fixture(scope="module")
def image_exports(image_checkpoints, artifacts):
    """Every variant of each image kind."""
    from export.api import read_report

    out = {
        m: exported(artifacts, m, ckpt, ",".join(registry.get(m).export.variants))
        for m, ckpt in image_checkpoints.items()
    }
    return {m: (folder, read_report(folder)) for m, folder in out.items()}


def _fresh_rng() -> np.random.Generator:
    return np.random.default_rng()  # fresh entropy: every run checks new inputs


def test_dcgan_fp32_matches_pytorch(image_checkpoints, image_exports):
    out, report = image_exports["dcgan"]
    assert report["variants"]["fp32"]["passed"] is True
    gen, meta = load_image_checkpoint(image_checkpoints["dcgan"], expected="dcgan")
    z = _fresh_rng().standard_normal((7, meta["config"]["latent_dim"])).astype(np.float32)
    got = make_session(out / "fp32" / "dcgan.onnx").run(["image"], {"z": z})[0]
    with torch.no_grad():
        ref = ToUint8Image(gen)(torch.from_numpy(z)).numpy()
    size, ch = meta["data"]["image_size"], meta["data"]["channels"]
    assert got.dtype == np.uint8 and got.shape == (7, size, size, ch)
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    assert np.mean(got != ref) < 0.01


def test_vae_fp32_matches_pytorch(image_checkpoints, image_exports):
    out, report = image_exports["vae"]
    assert set(report["variants"]["fp32"]["files"]) == {"vae_encoder", "vae_decoder"}
    vae, meta = load_image_checkpoint(image_checkpoints["vae"], expected="vae")
    rng = _fresh_rng()
    size, ch = meta["data"]["image_size"], meta["data"]["channels"]
    images = rng.integers(0, 256, size=(3, size, size, ch), dtype=np.uint8)
    mu, logvar = make_session(out / "fp32" / "vae_encoder.onnx").run(["mu", "logvar"], {"image": images})
    with torch.no_grad():
        ref_mu, ref_logvar = FromUint8Image(vae.encoder)(torch.from_numpy(images))
    np.testing.assert_allclose(mu, ref_mu.numpy(), atol=1e-4)
    np.testing.assert_allclose(logvar, ref_logvar.numpy(), atol=1e-4)
    z = rng.standard_normal((4, meta["config"]["latent_dim"])).astype(np.float32)
    got = make_session(out / "fp32" / "vae_decoder.onnx").run(["image"], {"z": z})[0]
    with torch.no_grad():
        ref = ToUint8Image(vae.decoder)(torch.from_numpy(z)).numpy()
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1


def test_report_describes_every_variant(image_exports):
    out, report = image_exports["dcgan"]
    on_disk = json.loads((out / "export_report.json").read_text())
    assert on_disk == report
    assert set(report["variants"]) == {"fp32", "fp16", "int8"}
    for name, v in report["variants"].items():
        for rel in v["files"].values():
            assert (out / rel).is_file(), (name, rel)
        assert v["size_bytes"] > 0
    assert report["variants"]["fp16"]["target"] == "gpu"


def test_int8_variant_is_quantized_and_smaller(image_exports):
    for model in ("dcgan", "vae"):
        out, report = image_exports[model]
        int8, fp32 = report["variants"]["int8"], report["variants"]["fp32"]
        for comp, rel in int8["files"].items():
            ops = {n.op_type for n in onnx.load(str(out / rel)).graph.node}
            assert {"QuantizeLinear", "DequantizeLinear"} <= ops, (model, comp, ops)
        assert int8["size_bytes"] < fp32["size_bytes"]
        if int8["passed"]:
            for fid in int8["fidelity"].values():
                assert fid.get("psnr_db", fid.get("decoded_psnr_db")) >= quantize.GATES.image_psnr_db


def test_fp16_variant_holds_half_weights(image_exports):
    out, report = image_exports["dcgan"]
    model = onnx.load(str(out / report["variants"]["fp16"]["files"]["dcgan"]))
    types = {init.data_type for init in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types
    assert report["variants"]["fp16"]["size_bytes"] < report["variants"]["fp32"]["size_bytes"]


def test_gate_rejects_a_damaged_variant(image_exports, tmp_path, monkeypatch):
    def damaged_int8(src, dst, feeds):
        model = onnx.load(str(src))
        rng = np.random.default_rng(1)
        for init in model.graph.initializer:
            arr = onnx.numpy_helper.to_array(init)
            if arr.dtype == np.float32 and arr.size > 16:
                noisy = arr + rng.normal(0, 0.5, arr.shape).astype(np.float32)
                init.CopyFrom(onnx.numpy_helper.from_array(noisy, init.name))
        onnx.save(model, str(dst))

    monkeypatch.setattr(quantize, "to_int8_static", damaged_int8)
    src, report = image_exports["dcgan"]
    out = tmp_path / "out"
    shutil.copytree(src, out)
    info = report["model_info"]
    int8 = quantize.image_variants(
        registry.get("dcgan").export,
        {"data": info["data"], "config": info["config"]},
        out,
        ["int8"],
        np.random.default_rng(),
        report["variants"]["fp32"],
    )["int8"]
    assert int8["passed"] is False
    assert "PSNR" in int8["reason"]


def test_missing_checkpoint_fails_cleanly(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="nope"):
        export_model("dcgan", tmp_path / "nope", out, variants="fp32")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind


def test_wrong_kind_of_checkpoint(image_checkpoints, tmp_path):
    with pytest.raises(CheckpointError, match="vae"):
        export_model("dcgan", image_checkpoints["vae"], tmp_path / "out", variants="fp32")
    assert not (tmp_path / "out").exists()


def test_corrupt_checkpoint(image_checkpoints, tmp_path):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(image_checkpoints["dcgan"], ckpt)
    (ckpt / "model.safetensors").write_bytes(b"not a safetensors file" * 10)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        export_model("dcgan", ckpt, tmp_path / "out", variants="fp32")
    assert not (tmp_path / "out").exists()


def test_unwritable_output(image_checkpoints, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="--out"):
        export_model("dcgan", image_checkpoints["dcgan"], blocker / "out", variants="fp32")


def test_failed_export_keeps_previous_export(image_checkpoints, image_exports, tmp_path):
    import shutil

    out = tmp_path / "dcgan"
    shutil.copytree(image_exports["dcgan"][0], out)
    before = (out / "export_report.json").read_text()
    with pytest.raises(CheckpointError):
        export_model("dcgan", image_checkpoints["vae"], out, variants="fp32")
    assert (out / "export_report.json").read_text() == before


@pytest.mark.parametrize("variants, flag_text", [("fp32,int5", "int5"), ("int4", "does not apply")])
def test_bad_variants_are_named(image_checkpoints, tmp_path, variants, flag_text):
    with pytest.raises(ConfigError, match=flag_text):
        export_model("dcgan", image_checkpoints["dcgan"], tmp_path / "out", variants=variants)


def test_cli_exit_code_and_message(tmp_path, capsys):
    code = aigc_main(
        ["export", "dcgan", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]
    )
    assert code == 2
    assert "missing" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_every_registered_model_has_an_export_test():
    """A model added to the export registry must come with its parity test."""
    sources = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    for name in registry.names():
        assert f"def test_{name}_fp32_matches_pytorch" in sources, f"no parity test for {name}"
