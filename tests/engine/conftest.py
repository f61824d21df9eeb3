"""The engine on its fake runner: no model, no export. A real (tiny, word-level) tokenizer
turns the fake's token ids into text."""

from __future__ import annotations

import pytest
from references import Recorder

from engine.config import EngineConfig
from engine.core import Engine
from engine.runners.fake import FakeClock, FakeCost, FakeRunner, word_tokenizer

VOCAB = 64


class Setup:
    """An engine over a fake runner, with its clock and a recording sink."""

    def __init__(
        self,
        slots=4,
        max_len=64,
        cost=None,
        companion=False,
        eos=None,
        mixed=False,
        block_size=0,
        blocks=0,
        copies=True,
        group_past=False,
        block_tables=True,
        mixed_slots=False,
        padded_prompts=False,
        **config,
    ):
        self.clock = FakeClock()
        self.runner = FakeRunner(
            slots,
            max_len,
            VOCAB,
            self.clock,
            cost or FakeCost(),
            eos=eos,
            companion=companion,
            mixed=mixed,
            block_size=block_size,
            blocks=blocks,
            copies=copies,
            group_past=group_past,
            block_tables=block_tables,
            mixed_slots=mixed_slots,
            padded_prompts=padded_prompts,
        )
        self.sink = Recorder()
        self.engine = Engine(
            self.runner, word_tokenizer(VOCAB), EngineConfig(slots=slots, **config), self.sink, self.clock
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
