"""The one compressor: documents -> chunks -> bottleneck vectors, for the library (ARCModel.compress),
the store (storage/indexing.py) and the service (serving/documents.py) alike.

A document is cut by the model's chunker (ARCModel.chunks_of) at a chunk size. Each chunk counts
the decoder tokens of the document's own tokenization that start inside it: a chunk's text
tokenized alone can differ by a token at its edges (the cut may fall inside a decoder token, the
encoder's and the decoder's tokenizers differing), and the document's chunks then would not add up
to what the decoder reads for its text. compression_ratio is that count over the vectors.

Chunks are compressed in encoder batches, longest first, so that a batch pads little; the vectors
of a chunk do not depend on which others share its batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from .chunking import Chunk
from .prompting import Compressed


def tokens_in_spans(tokenizer, text: str, spans: list[tuple[int, int]]) -> list[int]:
    """Per span of `text` (spans tiling it, in order), the tokens of the whole text's tokenization
    (no special tokens) that start inside it."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("counting a chunk's decoder tokens needs a fast (Rust) decoder tokenizer: it uses offsets")
    starts = [s for s, e in tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
    counts, k = [], 0
    for j, (_, end) in enumerate(spans):
        last = j == len(spans) - 1
        n = 0
        while k < len(starts) and (last or starts[k] < end):
            n, k = n + 1, k + 1
        counts.append(n)
    return counts


def plan_chunks(model, text: str, decoder: int, chunk_tokens: int | None = None) -> list[Chunk]:
    """A document's chunks at `chunk_tokens` (default: the model's), with their decoder-token counts."""
    chunks = model.chunks_of(text, chunk_tokens)
    counts = tokens_in_spans(model.decoder_tokenizers[decoder], text, [(c.start, c.end) for c in chunks])
    return [dataclasses.replace(c, n_tokens=n) for c, n in zip(chunks, counts)]


@torch.no_grad()
def compress_chunks(
    model, plans: list[Chunk], decoder: int, batch_size: int = 16, wanted: Callable[[int], bool] | None = None
) -> list[torch.Tensor | None]:
    """Bottleneck vectors [m_i, bottleneck] per chunk, in the order given, on the model's device and
    in its dtype.

    wanted(i), if given, is asked before every encoder batch for each chunk still to compress; a
    chunk no longer wanted is skipped and its entry is None: a caller whose reader has gone stops
    within one batch."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    order = sorted(range(len(plans)), key=lambda i: -len(plans[i].encoder_ids))  # little padding
    out: list[torch.Tensor | None] = [None] * len(plans)
    while order:
        if wanted is not None:
            order = [i for i in order if wanted(i)]
        batch, order = order[:batch_size], order[batch_size:]
        if not batch:
            break
        vectors = model.encode_segments([plans[i].encoder_ids for i in batch], decoder)
        for i, v in zip(batch, vectors):
            out[i] = v
    return out


def compress_documents(
    model, texts: list[str], decoder: int, batch_size: int = 16, chunk_tokens: int | None = None
) -> list[Compressed]:
    """Documents as Compressed prompt parts: their chunks' vectors and decoder-token counts."""
    plans = [plan_chunks(model, text, decoder, chunk_tokens) for text in texts]
    vectors = iter(compress_chunks(model, [p for doc in plans for p in doc], decoder, batch_size))
    return [Compressed([next(vectors) for _ in doc], decoder, sum(p.n_tokens for p in doc)) for doc in plans]
