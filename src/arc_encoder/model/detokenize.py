"""The text of a generation as it grows, decoding only its newest tokens.

Decoding the whole id list after every token costs time in the length of the answer, per token. An
IncrementalDecoder decodes a short window instead: the tokens not yet turned into text, after a few
already turned (the context that decides how the new ones join them, e.g. a SentencePiece word's
leading space). A token that ends inside a multi-byte character (byte-level and byte-fallback
tokenizers split characters across tokens) decodes to U+FFFD: its text is held until the
character is complete, so no piece ever shows half a character.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"  # what a decoder writes for bytes that are not (yet) a whole character


class IncrementalDecoder:
    """Text of a growing list of token ids; `add` returns what the newest tokens add."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.text = ""  # the text of ids[:done]
        self.context = 0  # ids[context:done]: decoded already, decoded again as context
        self.done = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens) if ids else ""

    def add(self, ids: list[int]) -> str:
        """`ids`: every token so far, the earlier ones as given before. The text the tokens since
        the last call add to `text`; "" while they end inside a character."""
        known = self._decode(ids[self.context : self.done])
        grown = self._decode(ids[self.context :])
        if len(grown) <= len(known) or grown.endswith(REPLACEMENT) or not grown.startswith(known):
            return ""  # nothing yet, half a character, or text that the next tokens will settle
        new = grown[len(known) :]
        self.context, self.done = self.done, len(ids)
        self.text += new
        return new


class StopStrings:
    """Whether a growing generation has written one of the stop strings, each new token's text
    searched together with the end of the text before it (a stop string may span tokens)."""

    def __init__(self, tokenizer, stop: list[str]):
        self.decoder = IncrementalDecoder(tokenizer, skip_special_tokens=False)
        self.stop = stop
        self.reach = max((len(s) for s in stop), default=1) - 1  # how far back a stop string may start

    def reached(self, ids: list[int]) -> bool:
        before = len(self.decoder.text)
        if not self.stop or not self.decoder.add(ids):
            return False
        tail = self.decoder.text[max(0, before - self.reach) :]
        return any(s in tail for s in self.stop)
