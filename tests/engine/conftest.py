"""The engine on its fake runner: no model, no export. A real (tiny, word-level) tokenizer
turns the fake's token ids into text."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from engine.config import EngineConfig
from engine.core import Engine
from engine.runners.fake import FakeClock, FakeCost, FakeRunner
from engine.types import Sink

VOCAB = 64


def word_tokenizer(vocab: int = VOCAB) -> Tokenizer:
    """Token `i` is the word `t<i>`; text is the words joined by spaces."""
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with a space
    return tok


class Recorder(Sink):
    def __init__(self):
        self.text, self.finished = {}, []

    def on_text(self, request, text):
        assert text, "the engine delivers only non-empty text"
        self.text.setdefault(id(request), []).append(text)

    def on_finish(self, request):
        self.finished.append(request)


class Setup:
    """An engine over a fake runner, with its clock and a recording sink."""

    def __init__(self, slots=4, max_len=64, cost=None, companion=False, eos=None, **config):
        self.clock = FakeClock()
        self.runner = FakeRunner(
            slots, max_len, VOCAB, self.clock, cost or FakeCost(), eos=eos, companion=companion
        )
        self.sink = Recorder()
        self.engine = Engine(
            self.runner, word_tokenizer(), EngineConfig(slots=slots, **config), self.sink, self.clock
        )

    def reference(self, prompt, n) -> list[int]:
        """Greedy tokens of `prompt` computed from the fake's logits alone: what the engine
        must produce however it schedules the request."""
        seq, out = list(prompt), []
        for _ in range(n):
            out.append(int(self.runner.logits_of(seq).argmax()))
            seq.append(out[-1])
        return out

    def calls(self, phase=None):
        return [c for c in self.runner.calls if phase is None or c.phase is phase]


@pytest.fixture
def make():
    return Setup
