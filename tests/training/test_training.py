"""Training: a two-step smoke test per model, seed repeatability, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from aigc.errors import CheckpointError, ConfigError, DataError
from training.api import TrainOptions, train
from training.checkpoint import detect_checkpoint_kind
from training.models import load_image_checkpoint


@pytest.mark.parametrize("model", ["dcgan", "vae"])
def test_two_step_image_training_writes_a_self_describing_checkpoint(model, tmp_path):
    out = train(TrainOptions(model=model, out=tmp_path / model, steps=2, progress=False))
    meta = json.loads((out / "config.json").read_text())
    assert meta["model"] == model and meta["step"] == 2 and meta["data"]["source"] == "digits"
    assert (out / "model.safetensors").is_file() and (out / "samples.png").stat().st_size > 0
    module, _ = load_image_checkpoint(out, expected=model)
    rebuilt = module.decoder if model == "vae" else module
    z = torch.randn(3, meta["config"]["latent_dim"])
    # The rebuilt module's weights are exactly the saved ones.
    saved = load_file(str(out / "model.safetensors"))
    for k, v in module.state_dict().items():
        assert torch.equal(v, saved[k]), k
    with torch.no_grad():
        img = rebuilt(z)
    assert img.shape == (3, 1, 32, 32) and img.abs().max() <= 1


def test_two_step_gpt2_training_saves_pretrained_with_tokenizer(tmp_path):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    out = train(TrainOptions(model="gpt2", out=tmp_path / "gpt2", steps=2, progress=False))
    assert detect_checkpoint_kind(out) == "gpt2"
    model = GPT2LMHeadModel.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "<|endoftext|>" and model.config.eos_token_id == tok.eos_token_id
    assert (out / "heldout.txt").read_text().strip() and (out / "samples.txt").is_file()


def test_same_seed_repeats_a_run(tmp_path):
    a = train(TrainOptions(model="dcgan", out=tmp_path / "a", steps=2, seed=5, progress=False))
    b = train(TrainOptions(model="dcgan", out=tmp_path / "b", steps=2, seed=5, progress=False))
    c = train(TrainOptions(model="dcgan", out=tmp_path / "c", steps=2, seed=6, progress=False))
    wa, wb, wc = (load_file(str(p / "model.safetensors")) for p in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_image_folder_data(tmp_path):
    from PIL import Image

    data = tmp_path / "imgs"
    data.mkdir()
    for i in range(4):
        Image.new("RGB", (40, 30), (i * 60, 10, 200)).save(data / f"{i}.png")
    out = train(
        TrainOptions(model="vae", out=tmp_path / "vae", steps=2, data=data, batch_size=2, progress=False)
    )
    meta = json.loads((out / "config.json").read_text())
    assert meta["data"]["channels"] == 3 and meta["config"]["channels"] == 3


def test_empty_data_folder_is_rejected_without_output(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        train(
            TrainOptions(
                model="dcgan", out=tmp_path / "out", steps=2, data=tmp_path / "empty", progress=False
            )
        )
    with pytest.raises(DataError, match="no non-empty"):
        train(
            TrainOptions(model="gpt2", out=tmp_path / "out", steps=2, data=tmp_path / "empty", progress=False)
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_unwritable_output_is_rejected(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="--out"):
        train(TrainOptions(model="vae", out=tmp_path / "file" / "ckpt", steps=1, progress=False))


@pytest.mark.parametrize(
    "field, value, flag",
    [
        ("steps", 0, "--steps"),
        ("lr", 5.0, "--lr"),
        ("size", "huge", "--size"),
        ("image_size", 48, "--image-size"),
    ],
)
def test_bad_options_name_the_flag(tmp_path, field, value, flag):
    opts = TrainOptions(model="dcgan", out=tmp_path / "o", progress=False)
    setattr(opts, field, value)
    with pytest.raises(ConfigError, match=flag):
        train(opts)


def test_checkpoint_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="no such folder"):
        load_image_checkpoint(tmp_path / "missing")
    ckpt = train(TrainOptions(model="vae", out=tmp_path / "vae", steps=1, progress=False))
    with pytest.raises(CheckpointError, match="'vae' checkpoint, expected 'dcgan'"):
        load_image_checkpoint(ckpt, expected="dcgan")
    (ckpt / "model.safetensors").write_bytes(b"\x00garbage" * 64)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_image_checkpoint(ckpt)
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable JSON"):
        load_image_checkpoint(ckpt)


def test_random_gpt2_loads_back(tmp_path):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from training.gpt2 import create_random_gpt2

    out = create_random_gpt2(tmp_path / "g", preset="small")
    model = GPT2LMHeadModel.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.n_layer == 4 and model.config.vocab_size >= len(tok)


def test_the_bundled_digits_are_the_uci_set():
    """1797 images of 8x8 levels 0..16, every digit about 180 times (the UCI test set that
    scikit-learn ships), read from the repository's file."""
    from training.data import digits_8x8

    ours = digits_8x8()
    assert ours.shape == (1797, 8, 8) and ours.min() == 0 and ours.max() == 16
    with np.load(Path(__file__).resolve().parents[2] / "training" / "digits.npz") as data:
        counts = np.bincount(data["labels"], minlength=10)
    assert counts.sum() == 1797 and counts.min() >= 174 and counts.max() <= 183
