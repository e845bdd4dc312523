"""BPE merges for a SentencePiece-BPE vocabulary stored in a GGUF file.

A GGUF keeps a SentencePiece BPE tokenizer (`tokenizer.ggml.model: llama`, e.g. Gemma 3) as its
pieces with scores and no merge list: SentencePiece joins, at each step, the adjacent pair whose
joined piece scores highest. A `tokenizers` BPE model wants an ordered merge list instead, and
without one it cuts every word into characters (what transformers' GGUF conversion gives Gemma 3:
about four times the tokens, and a decoder that no longer reads English). The merge list here is
every split of a piece into two pieces of the vocabulary, ranked by the joined piece's score, so
the BPE model joins pairs in SentencePiece's order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gguf import GGUFReader
from tokenizers.models import BPE

NORMAL, UNKNOWN = 1, 2  # GGUF token types of an ordinary piece and of <unk> (3 control, 6 byte)


def merges_from_scores(pieces: Sequence[str], scores: Sequence[float], types: Sequence[int]) -> list[tuple[str, str]]:
    """Merges (left, right), first applied first: each split of an ordinary piece into two
    ordinary pieces, by the joined piece's score (highest first; ties: lower id first), then by
    the ids of its halves."""
    ids = {piece: i for i, piece in enumerate(pieces) if types[i] == NORMAL}
    ranked = []
    for piece, i in ids.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                ranked.append((-scores[i], i, ids[left], ids[right]))
    ranked.sort()
    return [(pieces[left], pieces[right]) for _, _, left, right in ranked]


def gguf_spm_tokenizer(path: Path, tokenizer):
    """`tokenizer` (transformers' conversion of the GGUF at `path`) with its model replaced by
    the BPE model of the GGUF's pieces and the merges above (byte fallback as SentencePiece), and
    the GGUF's BOS setting, which the conversion drops (Gemma reads nothing well without BOS)."""
    fields = GGUFReader(str(path)).fields

    def values(name, default=None):
        if name not in fields:
            if default is not None:
                return default
            raise ValueError(f"{path}: the GGUF has no {name!r}; it cannot hold a SentencePiece BPE tokenizer")
        field = fields[name]
        return [field.parts[i] for i in field.data]

    pieces = [bytes(p).decode("utf-8") for p in values("tokenizer.ggml.tokens")]
    scores = [float(s[0]) for s in values("tokenizer.ggml.scores")]
    types = [int(t[0]) for t in values("tokenizer.ggml.token_type")]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    merges = merges_from_scores(pieces, scores, types)
    unk = pieces[types.index(UNKNOWN)] if UNKNOWN in types else None
    tokenizer.backend_tokenizer.model = BPE(
        vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True
    )
    add_bos = bool(values("tokenizer.ggml.add_bos_token", default=[[False]])[0][0])
    tokenizer.add_bos_token = add_bos  # rewrites the post-processor
    tokenizer.init_kwargs["add_bos_token"] = add_bos  # saved, so a reload keeps it
    return tokenizer
