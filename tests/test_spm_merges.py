"""The BPE merges rebuilt from a SentencePiece-BPE vocabulary (pieces and scores, as a GGUF keeps
them) tokenize as SentencePiece does: checked on a hand case and against a naive reference."""

from __future__ import annotations

import random

import pytest
from gguf import GGUFWriter
from tokenizers import Tokenizer
from tokenizers.models import BPE

from arc_encoder.model.spm_merges import NORMAL, gguf_spm_tokenizer, merges_from_scores


def spm_reference(word: str, scores: dict[str, float]) -> list[str]:
    """SentencePiece BPE written out: start from characters; while some adjacent pair joins into a
    piece of the vocabulary, join the pair whose piece scores highest (leftmost on a tie)."""
    parts = list(word)
    while True:
        best = None
        for i in range(len(parts) - 1):
            joined = parts[i] + parts[i + 1]
            if joined in scores and (best is None or scores[joined] > scores[parts[best] + parts[best + 1]]):
                best = i
        if best is None:
            return parts
        parts[best : best + 2] = [parts[best] + parts[best + 1]]


def bpe_tokens(pieces, scores, types, word) -> list[str]:
    vocab = {p: i for i, p in enumerate(pieces)}
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges_from_scores(pieces, scores, types), unk_token="<unk>"))
    return tokenizer.encode(word).tokens


def test_merges_of_a_hand_case():
    # "abc" scores above "bc" above "ab": its two splits come first (the left half's id breaks
    # the tie), then b+c, then a+b; the control piece <unk> takes part in none
    pieces = ["<unk>", "a", "b", "c", "ab", "bc", "abc"]
    scores = [0.0, -1.0, -2.0, -3.0, -10.0, -5.0, -4.0]
    types = [3, NORMAL, NORMAL, NORMAL, NORMAL, NORMAL, NORMAL]
    assert merges_from_scores(pieces, scores, types) == [("a", "bc"), ("ab", "c"), ("b", "c"), ("a", "b")]
    # b+c joins first (-5 beats -10), then a+bc: one piece; "ab" alone still joins
    assert bpe_tokens(pieces, scores, types, "abc") == ["abc"]
    assert bpe_tokens(pieces, scores, types, "abab") == ["ab", "ab"]


def test_bpe_with_the_merges_tokenizes_as_sentencepiece_on_random_words():
    rng = random.Random(0)
    letters = "abcd"
    pieces = ["<unk>", *letters]
    while len(pieces) < 40:  # pieces SentencePiece could have learned: joins of two pieces
        joined = rng.choice(pieces[1:]) + rng.choice(pieces[1:])
        if len(joined) <= 5 and joined not in pieces:
            pieces.append(joined)
    scores = [0.0] + [-float(i) + rng.random() * 0.5 for i in range(1, len(pieces))]  # distinct
    rng.shuffle(order := list(range(len(letters) + 1, len(pieces))))  # scores unrelated to ids
    scores = scores[: len(letters) + 1] + [scores[i] for i in order]
    types = [3] + [NORMAL] * (len(pieces) - 1)
    by_piece = dict(zip(pieces[1:], scores[1:]))
    for _ in range(300):
        word = "".join(rng.choice(letters) for _ in range(rng.randint(1, 12)))
        assert bpe_tokens(pieces, scores, types, word) == spm_reference(word, by_piece), word


def test_a_gguf_without_scores_is_refused_by_name(tmp_path):
    path = tmp_path / "no_scores.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_token_list(["<unk>", "a"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="tokenizer.ggml.scores"):
        gguf_spm_tokenizer(path, tokenizer=None)
