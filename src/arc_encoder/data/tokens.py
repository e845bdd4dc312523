"""Decoder tokens with the characters they cover, so the encoder can read the same text.

Encoder and decoder may use different tokenizers. A piece of a document is chosen in decoder
tokens (that is what sequence lengths count); its encoder input is the *same characters*
re-tokenized with the encoder's tokenizer, never a translation of token ids. The character span
of decoder tokens comes from a fast tokenizer's offset mapping.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model.splice import Sample


def decoder_tokenizers(decoder_tokenizer) -> list:
    """One tokenizer or a list (one per decoder) -> a checked, non-empty list of fast tokenizers."""
    tokenizers = list(decoder_tokenizer) if isinstance(decoder_tokenizer, (list, tuple)) else [decoder_tokenizer]
    if not tokenizers:
        raise ValueError("at least one decoder tokenizer is needed")
    for i, tok in enumerate(tokenizers):
        check_fast(tok, f"decoder {i}")
    return tokenizers


def check_fast(tokenizer, role: str) -> None:
    """Offsets need a Rust-backed ("fast") tokenizer."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"the {role} tokenizer ({type(tokenizer).__name__}) is not a fast tokenizer: character "
            "offsets are needed to give encoder and decoder the same text"
        )


def added_prefix(tokenizer) -> list[int]:
    """Ids the tokenizer itself puts before a text (its BOS, if it adds one), else []."""
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return list(full[:start])
    return []


@dataclass
class DecoderText:
    """A document as the decoder reads it, `ids = BOS + text tokens + EOS`.

    Token j covers `text[bounds[j]:bounds[j + 1]]`; BOS and EOS cover no characters, and the
    bounds partition the text, so consecutive pieces of a document re-tokenize to all of it.
    """

    text: str
    ids: list[int]
    bounds: list[int]  # len(ids) + 1 non-decreasing character positions
    n_bos: int  # how many leading ids the tokenizer added (0 or 1 in practice)
    has_eos: bool

    def chars(self, a: int, b: int) -> str:
        """The characters under decoder tokens ids[a:b]."""
        return self.text[self.bounds[a] : self.bounds[b]]


def decoder_text(text: str, tokenizer, bos: list[int], add_eos: bool) -> DecoderText:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    # A token's span runs from its start to the next token's start: whitespace a tokenizer leaves
    # out of its offsets goes to the token before it, and the first token starts at 0.
    starts = [0] + [int(start) for start, _ in offsets[1:]]
    eos = add_eos and tokenizer.eos_token_id is not None
    bounds = [0] * len(bos) + starts + [len(text)] * (2 if eos else 1)
    for j in range(1, len(bounds)):  # guard against tokenizers whose offsets step back
        bounds[j] = min(max(bounds[j], bounds[j - 1]), len(text))
    all_ids = list(bos) + ids + ([tokenizer.eos_token_id] if eos else [])
    return DecoderText(text, all_ids, bounds, len(bos), eos)


class EncoderView:
    """Encoder token ids for a span of a document's decoder tokens."""

    def __init__(self, tokenizer, special_tokens: bool):
        check_fast(tokenizer, "encoder")
        self.tokenizer = tokenizer
        # Document boundary marks (method.md §5.2): the encoder's own BOS when a span starts the
        # document, its EOS when the span ends it. Inference compresses without them.
        self.bos = added_prefix(tokenizer) if special_tokens else []
        self.eos = [tokenizer.eos_token_id] if special_tokens and tokenizer.eos_token_id is not None else []

    def ids(self, doc: DecoderText, a: int, b: int) -> list[int]:
        chars = doc.chars(a, b)
        ids = self.tokenizer(chars, add_special_tokens=False)["input_ids"] if chars else []
        start = self.bos if a == 0 else []
        end = self.eos if doc.has_eos and b == len(doc.ids) else []
        return list(start) + list(ids) + list(end)

    def text_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def sample_to_dict(sample: Sample) -> dict:
    return dict(
        text_ids=list(sample.text_ids),
        segments=[list(s) for s in sample.segments],
        offsets=list(sample.offsets),
        targets=None if sample.targets is None else list(sample.targets),
    )


def sample_from_dict(values: dict) -> Sample:
    return Sample(values["text_ids"], values["segments"], values["offsets"], values["targets"])
