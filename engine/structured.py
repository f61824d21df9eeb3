"""Structured output: a grammar decides which tokens each step may take (llguidance).

A request's `structured_output` is one of `{"json": schema}`, `{"json_object": true}`,
`{"regex": pattern}`, `{"choice": [strings]}` or `{"grammar": lark}` (vLLM's structured-
output kinds; a GBNF grammar is converted to Lark). It becomes an `llguidance.LLMatcher` over
the served tokenizer; every step the logits of the tokens the grammar forbids go to -inf
before the sampler (or the arg-max) picks, and the chosen token advances the matcher. JSON
is compiled without free whitespace, so an output is as short as its content.

The mask of a request's next step is computed on a worker thread as soon as its token is
taken, while the runner computes the next logits (llguidance releases the GIL): the mask is
usually ready when the logits are.

llguidance was chosen over xgrammar by what each brings: llguidance is one 3 MB wheel with
no dependencies and computes a mask from the tokenizer.json the server already has;
xgrammar pulls in the Triton compiler and TVM's FFI, and takes its tokenizer from
`transformers`, which the serving image does not carry.
"""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

KINDS = ("json", "json_object", "regex", "choice", "grammar")
# JSON without free whitespace: `{"a":1,"b":[2,3]}`; unknown schema keywords are ignored
JSON_OPTIONS = {"whitespace_flexible": False, "lenient": True}
MAX_SPEC_BYTES = 256 * 1024


def check_spec(value) -> str | None:
    """Why `value` is not a structured-output spec (None: it is one)."""
    if not isinstance(value, dict) or len(value) != 1:
        return f"an object with exactly one of {', '.join(KINDS)}"
    ((kind, arg),) = value.items()
    if kind not in KINDS:
        return f"an object with exactly one of {', '.join(KINDS)}, got {kind!r}"
    if kind == "json" and not isinstance(arg, (dict, bool, str)):
        return "json: a JSON schema (an object)"
    if kind in ("regex", "grammar") and (not isinstance(arg, str) or not arg):
        return f"{kind}: a non-empty string"
    if kind == "choice" and (
        not isinstance(arg, list) or not arg or not all(isinstance(c, str) and c for c in arg)
    ):
        return "choice: a non-empty list of non-empty strings"
    if len(json.dumps(value)) > MAX_SPEC_BYTES:
        return f"at most {MAX_SPEC_BYTES} bytes of JSON"
    return None


def grammar_of(spec: dict) -> str:
    """llguidance's grammar for a checked spec."""
    from llguidance import LLMatcher, gbnf_to_lark

    ((kind, arg),) = spec.items()
    if kind == "json":
        schema = json.loads(arg) if isinstance(arg, str) else arg
        return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    if kind == "json_object":
        return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_OPTIONS)
    if kind == "regex":
        return LLMatcher.grammar_from_regex(arg)
    if kind == "choice":
        return LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in arg))
    lark = gbnf_to_lark(arg) if "::=" in arg else arg
    return LLMatcher.grammar_from_lark(lark)


class Grammars:
    """The served tokenizer as llguidance sees it (built once, on first use) and the thread
    that computes masks ahead."""

    def __init__(self, tokenizer, eos: int | None, vocab: int):
        self.tokenizer, self.eos, self.vocab = tokenizer, eos, vocab
        self._ll = None
        self._pool: ThreadPoolExecutor | None = None

    def matcher(self, spec_text: str) -> Matcher:
        """A matcher for a request's spec (JSON text); ValueError naming what is wrong."""
        import llguidance

        if self._ll is None:
            size = self.tokenizer.get_vocab_size()
            self._ll = llguidance.LLTokenizer(
                self.tokenizer.to_str(), n_vocab=max(size, self.vocab), eos_token=self.eos
            )
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="grammar-masks")
        try:
            grammar = grammar_of(json.loads(spec_text))
        except ValueError as exc:
            raise ValueError(f"structured_output: {exc}") from None
        m = llguidance.LLMatcher(self._ll, grammar, log_level=0)
        if m.is_error():
            raise ValueError(f"structured_output: {m.get_error()}")
        return Matcher(m, self._pool, self.vocab)


class Matcher:
    """One request's grammar state: the allowed tokens of its next step, and its tokens."""

    def __init__(self, matcher, pool: ThreadPoolExecutor, vocab: int):
        self._m, self._pool, self.vocab = matcher, pool, vocab
        self._next: Future = pool.submit(self._compute)

    def _compute(self) -> np.ndarray:
        bias = np.frombuffer(self._m.compute_logit_bias(), np.uint8)[: self.vocab]
        return bias > 0

    def allowed(self) -> np.ndarray:
        """(vocab,) bool: the tokens the grammar admits next (computed ahead)."""
        return self._next.result()

    def take(self, token: int) -> bool:
        """Advance by the chosen token; whether the grammar is complete (nothing may follow).
        ValueError when the token breaks it (only a bug can choose such a token)."""
        if not self._m.consume_token(int(token)):
            raise ValueError(f"structured_output: token {token} breaks the grammar: {self._m.get_error()}")
        done = self._m.is_stopped()
        if not done:
            self._next = self._pool.submit(self._compute)  # overlaps the next runner call
        return done
