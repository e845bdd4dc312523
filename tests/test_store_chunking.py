"""chunk_text: chunks tile the text exactly and respect max_tokens."""

import re
from pathlib import Path

import pytest

from arc_encoder.storage import chunk_text


def whitespace_tokenize(text):
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    return list(range(len(spans))), spans


def check_tiling(text, chunks, max_tokens):
    assert chunks[0][0] == 0 and chunks[-1][1] == len(text)
    for (_, end, _), (start, _, _) in zip(chunks, chunks[1:]):
        assert end == start  # no gap, no overlap
    assert all(s < e for s, e, _ in chunks)
    assert "".join(text[s:e] for s, e, _ in chunks) == text
    assert all(1 <= n <= max_tokens for _, _, n in chunks)


@pytest.mark.parametrize("max_tokens", [1, 3, 7, 100])
def test_whitespace_tokenizer_chunks_cover_the_text(max_tokens):
    text = "  The quick brown fox\njumps over\t the lazy dog.  Again and again, and again.\n"
    chunks = chunk_text(text, whitespace_tokenize, max_tokens)
    check_tiling(text, chunks, max_tokens)
    n_words = len(text.split())
    assert sum(n for _, _, n in chunks) == n_words
    # Each chunk's count is what the tokenizer finds in it, and all chunks but the last are full.
    assert [len(text[s:e].split()) for s, e, _ in chunks] == [n for _, _, n in chunks]
    assert all(n == max_tokens for _, _, n in chunks[:-1])
    assert len(chunks) == -(-n_words // max_tokens)


def test_boundaries_fall_on_token_starts():
    text = "aa bb cc dd ee"
    assert chunk_text(text, whitespace_tokenize, 2) == [(0, 6, 2), (6, 12, 2), (12, 14, 1)]


def test_empty_or_whitespace_text_is_refused():
    for text in ["", "   \n\t "]:
        with pytest.raises(ValueError, match="empty"):
            chunk_text(text, whitespace_tokenize, 4)
    with pytest.raises(ValueError, match="max_tokens"):
        chunk_text("a b", whitespace_tokenize, 0)


def test_special_tokens_and_split_characters():
    # A byte-level tokenizer: BOS with offsets (0, 0), one token per character except 'é',
    # which is two byte tokens with the same offsets. A chunk must never end inside 'é'.
    text = "abé d"

    def tokenize(t):
        offsets = [(0, 0)]
        for i, ch in enumerate(t):
            if ch == " ":
                continue
            offsets += [(i, i + 1)] * (2 if ch == "é" else 1)
        return list(range(len(offsets))), offsets

    chunks = chunk_text(text, tokenize, 3)
    check_tiling(text, chunks, 3)
    assert chunks == [(0, 2, 2), (2, 5, 3)]  # first cut moved back before "é"
    with pytest.raises(ValueError, match="too small"):
        chunk_text(text, tokenize, 1)


def _cached_tokenizer_dirs():
    root = Path.home() / ".cache" / "arc-encoder"
    return sorted({p.parent for p in root.rglob("tokenizer.json")}) if root.is_dir() else []


@pytest.mark.skipif(not _cached_tokenizer_dirs(), reason="no tokenizer under ~/.cache/arc-encoder")
def test_real_tokenizer_chunks_cover_the_text():
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(_cached_tokenizer_dirs()[0]))

    def tokenize(t):
        enc = tok(t, return_offsets_mapping=True, add_special_tokens=True)
        return enc["input_ids"], enc["offset_mapping"]

    text = (
        "Product quantization splits a vector into sub-vectors and replaces each by the index of "
        "its nearest centroid. Naïve café prices — 12.5 € — and emoji 🙂 test multi-byte text.\n\n"
        "A second paragraph follows, with more words to make several chunks. "
    ) * 3
    n_total = len([1 for s, e in tokenize(text)[1] if e > s])
    for max_tokens in (5, 16, 64):
        chunks = chunk_text(text, tokenize, max_tokens)
        check_tiling(text, chunks, max_tokens)
        assert sum(n for _, _, n in chunks) == n_total
        # Re-tokenizing a chunk alone gives about the same count (edges may merge differently).
        for s, e, n in chunks:
            alone = len([1 for a, b in tokenize(text[s:e])[1] if b > a])
            assert abs(alone - n) <= 2


def pieces_tokenize(text):
    """Each word in pieces of 3 characters (as a BPE splits rare words), offsets of each piece."""
    spans = []
    for m in re.finditer(r"\S+", text):
        spans += [(s, min(s + 3, m.end())) for s in range(m.start(), m.end(), 3)]
    return list(range(len(spans))), spans


def test_chunks_end_at_word_boundaries_not_inside_words():
    text = "aa harpsichord bb"  # aa | har psi cho rd | bb
    assert chunk_text(text, pieces_tokenize, 4) == [(0, 3, 1), (3, 15, 4), (15, 17, 1)]
    # a word longer than the budget is cut inside it: there is no other way to respect the budget
    assert chunk_text("harpsichord", pieces_tokenize, 2) == [(0, 6, 2), (6, 11, 2)]
    # over a longer text no chunk boundary falls inside a word
    text = " ".join(["harpsichord", "a", "fugue", "counterpoint", "bb"] * 20)
    for max_tokens in (4, 5, 8, 13):  # every word fits in 4 tokens
        chunks = chunk_text(text, pieces_tokenize, max_tokens)
        check_tiling(text, chunks, max_tokens)
        assert all(text[s - 1] == " " for s, _, _ in chunks[1:]), max_tokens
