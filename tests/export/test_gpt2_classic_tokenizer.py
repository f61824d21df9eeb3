"""A GPT-2 folder whose tokenizer is only the classic vocab.json + merges.txt (no tokenizer.json)
goes through `aigc export gpt2`: the export converts it once with `transformers`, and the
exported tokenizer and the serving engine's greedy text equal `transformers` on that folder."""

from __future__ import annotations

import json
import shutil

import pytest
from support import cached_artifact, exported

from aigc.errors import CheckpointError
from export.api import export_model

TEXTS = [
    "The class of",
    "  two leading spaces, then\ttab and\nnewline  ",
    "héllo 日本語 🙂 naïve café",
    "trailing spaces   ",
    "<|endoftext|>after the end token",
    "def f(x):\n    return x ** 2  # comment",
]


@pytest.fixture(scope="module")
def classic_checkpoint(checkpoints, artifacts):
    """The tiny trained GPT-2 with its tokenizer saved the classic way, as older Hugging Face
    folders (and the hub's original `gpt2`) carry it: vocab.json + merges.txt, no tokenizer.json."""
    from tokenizers import Tokenizer

    src = checkpoints["gpt2"]

    def build(dst):
        shutil.copytree(src, dst)
        Tokenizer.from_file(str(src / "tokenizer.json")).model.save(str(dst))  # vocab.json, merges.txt
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", ".complete"):
            (dst / f).unlink(missing_ok=True)
        (dst / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128}))

    dst = cached_artifact(artifacts, "checkpoint-gpt2-classic", {"source": str(src)}, build)
    assert (dst / "vocab.json").is_file() and (dst / "merges.txt").is_file()
    assert not (dst / "tokenizer.json").exists()
    return dst


@pytest.fixture(scope="module")
def classic_export(classic_checkpoint, artifacts):
    return exported(artifacts, "gpt2", classic_checkpoint, "fp32")


@pytest.fixture(scope="module")
def hf_tokenizer(classic_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(classic_checkpoint)


def test_exported_tokenizer_ids_equal_transformers(classic_export, classic_checkpoint, hf_tokenizer):
    from tokenizers import Tokenizer
    from transformers import GPT2Tokenizer

    assert not (classic_checkpoint / "tokenizer.json").exists()
    exported = Tokenizer.from_file(str(classic_export / "assets" / "tokenizer.json"))
    slow = GPT2Tokenizer.from_pretrained(classic_checkpoint)  # the classic files read directly
    for text in TEXTS:
        ids = exported.encode(text).ids
        assert ids, text
        assert ids == hf_tokenizer(text)["input_ids"] == slow(text)["input_ids"], text
        assert exported.decode(ids, skip_special_tokens=False) == hf_tokenizer.decode(ids), text
    info = json.loads((classic_export / "assets" / "model_info.json").read_text())
    assert info["eos_token_id"] == hf_tokenizer.eos_token_id


def test_the_classic_export_tokenizes_as_the_original_tokenizer_json(classic_export, checkpoints):
    from tokenizers import Tokenizer

    exported = Tokenizer.from_file(str(classic_export / "assets" / "tokenizer.json"))
    original = Tokenizer.from_file(str(checkpoints["gpt2"] / "tokenizer.json"))
    for text in TEXTS:
        assert exported.encode(text).ids == original.encode(text).ids, text


def test_engine_greedy_text_equals_transformers(classic_export, classic_checkpoint, hf_tokenizer, tmp_path):
    import torch
    from transformers import GPT2LMHeadModel

    from engine.config import EngineConfig
    from engine.loader import load_engine
    from engine.request_schema import SamplingParams
    from engine.types import Sink

    class Collect(Sink):
        def __init__(self):
            self.text = []

        def on_text(self, request, text):
            self.text.append(text)

    # A repository version folder, as the builder lays it out for ONNX Runtime.
    shutil.copyfile(classic_export / "fp32" / "gpt2.onnx", tmp_path / "model.onnx")
    for f in ("tokenizer.json", "model_info.json"):
        shutil.copyfile(classic_export / "assets" / f, tmp_path / f)
    hf = GPT2LMHeadModel.from_pretrained(classic_checkpoint).eval()
    n = 24
    for prompt in ("The class of", "héllo 日本語 🙂"):
        sink = Collect()
        engine = load_engine(str(tmp_path), EngineConfig(slots=2), sink, intra_op_threads=1)
        params = SamplingParams(max_tokens=n, ignore_eos=True)
        req = engine.submit(engine.encode_prompt(prompt, params), params)
        engine.run_until_done([req])
        ids = hf_tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=n,
                min_new_tokens=n,
                pad_token_id=hf_tokenizer.eos_token_id,
            )
        new = out[0, ids.shape[1] :].tolist()
        assert req.tokens == new, prompt
        assert "".join(sink.text) == hf_tokenizer.decode(new), prompt


@pytest.mark.parametrize("keep", [[], ["vocab.json"], ["merges.txt"]])
def test_a_folder_without_a_tokenizer_is_refused_naming_both_forms(classic_checkpoint, tmp_path, keep):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(classic_checkpoint, ckpt)
    for f in ("vocab.json", "merges.txt"):
        if f not in keep:
            (ckpt / f).unlink()
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=r"tokenizer\.json, or vocab\.json \+ merges\.txt"):
        export_model("gpt2", ckpt, out, variants="fp32", seed=0)
    assert not out.exists()
