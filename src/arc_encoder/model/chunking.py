"""The one chunker: a document split into consecutive chunks of at most max_tokens tokens, used by
the library (ARCModel.compress), fine-tuning data, the store and the service alike.

The text is tokenized once; chunk boundaries fall at the start of a token, so the chunks cover the
text exactly (no gap, no overlap): whitespace between two tokens ends the earlier chunk, text
before the first token starts the first chunk, text after the last token ends the last one.
A chunk ends at the last word boundary within its budget (a word split over two chunks could not
be found by a keyword search of either), unless a single word fills the whole budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

# tokenize(text) -> (token ids, per-token (start, end) char offsets), e.g. a Hugging Face fast
# tokenizer called with return_offsets_mapping=True.
Tokenize = Callable[[str], tuple[Sequence[int], Sequence[Sequence[int]]]]


def chunk_text(text: str, tokenize: Tokenize, max_tokens: int) -> list[tuple[int, int, int]]:
    """(start_char, end_char, n_tokens) per chunk; the spans tile [0, len(text)).

    n_tokens counts the tokens of the whole-text tokenization that fall in the chunk; tokenizing
    the chunk on its own can differ by a token at the edges (a leading space merges differently).
    Zero-width tokens (special tokens such as BOS, offsets (0, 0)) are not text and are not counted.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if not text.strip():
        raise ValueError("cannot chunk an empty or whitespace-only text")
    ids, offsets = tokenize(text)
    if len(ids) != len(offsets):
        raise ValueError(f"tokenize returned {len(ids)} ids but {len(offsets)} offsets")
    spans = [(int(s), int(e)) for s, e in offsets if int(e) > int(s)]
    if not spans:
        raise ValueError("the tokenizer found no tokens in the text")
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        if s1 < s0 or e1 < e0:
            raise ValueError(f"token offsets are not in text order: ({s0}, {e0}) then ({s1}, {e1})")

    chunks = []
    first = 0  # index of the first token of the current chunk
    start_char = 0
    n = len(spans)
    while first < n:
        stop = min(first + max_tokens, n)  # tokens [first, stop) form the chunk
        # Byte-level tokenizers can split one character over several tokens (same offsets).
        # A boundary inside a character is impossible, so move the cut back to a clean one.
        while stop < n and spans[stop][0] < spans[stop - 1][1]:
            stop -= 1
            if stop == first:
                raise ValueError(
                    f"max_tokens={max_tokens} is too small: a chunk would end inside one character "
                    f"(tokens at chars {spans[first][0]}..{spans[first][1]})"
                )
        if stop < n:
            stop = _word_start_at_or_before(text, spans, first, stop)
        end_char = spans[stop][0] if stop < n else len(text)
        chunks.append((start_char, end_char, stop - first))
        start_char = end_char
        first = stop
    return chunks


def _word_start_at_or_before(text: str, spans: list[tuple[int, int]], first: int, stop: int) -> int:
    """The last token index in (first, stop] that starts a word (whitespace before it, or its
    text begins with whitespace); `stop` itself if no token after `first` does."""
    for j in range(stop, first, -1):
        start = spans[j][0]
        if (start > 0 and text[start - 1].isspace()) or text[start].isspace():
            return j
    return stop


@dataclass
class Chunk:
    """One chunk of a document: the encoder token ids inside it, its character span and, once
    counted for a decoder (model/compression.plan_chunks), that decoder's tokens starting in it."""

    encoder_ids: list[int]
    start: int  # char offsets into the document
    end: int
    n_tokens: int | None = None  # decoder tokens of the whole text's tokenization that start in it


def chunk_document(text: str, tokenizer, max_tokens: int | None) -> list[Chunk]:
    """A document in chunks of at most max_tokens encoder tokens (None: one chunk).

    The ids of a chunk are the whole-text tokenization's ids inside it. Needs a fast (Rust)
    tokenizer: chunking uses its character offsets. Zero-width tokens (special tokens the
    tokenizer adds or finds, offsets (s, s)) are not text and are left out.
    """
    if not isinstance(text, str):
        raise TypeError(f"a document must be a str, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("cannot compress an empty or whitespace-only document")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("chunking needs a fast (Rust) encoder tokenizer: it uses the tokens' character offsets")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    real = [i for i, (s, e) in zip(ids, offsets) if e > s]
    if max_tokens is None:
        return [Chunk(real, 0, len(text))]
    chunks, cursor = [], 0
    for start, end, n in chunk_text(text, lambda _: (ids, offsets), max_tokens):
        chunks.append(Chunk(real[cursor : cursor + n], start, end))
        cursor += n
    return chunks
