"""Incremental detokenizing with stop strings: text released as complete UTF-8 only."""

from __future__ import annotations


class Detokenizer:
    """Incremental decoding that only ever emits complete UTF-8 text, in O(1) per token.

    Each token decodes a short window of ids (from `prefix` to the end) and emits what the
    window adds past the text already read: byte-level BPE splits multi-byte characters
    across tokens, and a window ending in an incomplete one (U+FFFD) waits for more ids.
    Text that could be the start of a stop string is held back; the output ends before a
    stop string. Stop strings are looked for from the `min_tokens`-th token on (vLLM's
    `min_tokens`: text before it is released as it comes, and cannot end the output).
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] | list[str] = (), min_tokens: int = 0):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.min_tokens = min_tokens
        self.ids: list[int] = []
        self.prefix = 0  # window start: ids before it are fully emitted
        self.read = 0  # ids[prefix:read] decode to text already released or held
        self.held = ""  # released by the tokenizer, withheld as a possible stop-string start
        self.stopped = False

    def push(self, token: int) -> str:
        self.ids.append(token)
        return self._advance(final=False)

    def flush(self) -> str:
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self.stopped:
            return ""
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        text = decode(self.ids[self.prefix :], skip_special_tokens=True)
        delta = ""
        if len(text) > len(before) and (final or not text.endswith("\ufffd")):
            delta = text[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)
        return self._release(self.held + delta, final)

    def _release(self, text: str, final: bool) -> str:
        if len(self.ids) < self.min_tokens:
            self.held = ""
            return text
        cuts = [at for at in (text.find(s) for s in self.stop) if at != -1]
        if cuts:
            self.stopped, self.held = True, ""
            return text[: min(cuts)]
        keep = 0
        if not final:  # the longest tail that may still grow into a stop string
            for s in self.stop:
                for k in range(min(len(s) - 1, len(text)), keep, -1):
                    if text.endswith(s[:k]):
                        keep = k
                        break
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]
