"""The CTranslate2 peer: converting the checkpoint with `TransformersConverter`, and
generating with `Generator`."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.peers.peer import Runner


def convert(checkpoint: Path, out: Path, settings: dict, threads: int) -> dict:
    from ctranslate2.converters import TransformersConverter

    TransformersConverter(str(checkpoint)).convert(
        str(out), quantization=settings["quantization"], force=True
    )
    return {"config": json.loads((out / "config.json").read_text())}


class CTranslate2Runner(Runner):
    def __init__(self, folder: Path, checkpoint: Path, threads: int) -> None:
        import ctranslate2

        self.properties = {"device": "cpu", "intra_threads": threads, "inter_threads": 1}
        self.generator = ctranslate2.Generator(str(folder), **self.properties)
        self.properties["compute_type"] = self.generator.compute_type
        vocab = folder / "vocabulary.json"
        if vocab.is_file():
            self.vocab = json.loads(vocab.read_text(encoding="utf-8"))
        else:
            self.vocab = (folder / "vocabulary.txt").read_text(encoding="utf-8").split("\n")

    def generate(self, ids: list[int], n: int, timer) -> list[int]:
        prompt = [self.vocab[i] for i in ids]  # the Python API takes token strings
        timer.put(ids)
        out: list[int] = []
        # min_length = max_length: EOS is masked until n tokens, and n is where it stops
        for step in self.generator.generate_tokens(prompt, max_length=n, min_length=n, sampling_topk=1):
            timer.put(step.token_id)
            out.append(int(step.token_id))
        return out
