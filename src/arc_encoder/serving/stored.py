"""Prompts from stored vectors: a store's chunks become `Compressed` parts, so generation splices
them in without running the encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..model.arc import Compressed
from ..storage.store import VectorStore


def stored_chunks(
    store: VectorStore, chunk_ids: Sequence[int], decoder: int, dtype: torch.dtype = torch.float32
) -> Compressed:
    """The given chunks (in the order given) as one Compressed part: one block per chunk, each
    followed by its own special token, as a document compressed in chunks is."""
    chunk_ids = list(chunk_ids)
    if not chunk_ids:
        raise ValueError("no chunk to turn into a prompt part")
    vectors = store.chunk_vectors(chunk_ids)  # per chunk [m, bottleneck] float32
    tokens = sum(info.n_tokens for info in store.chunk_info(chunk_ids))
    return Compressed([torch.from_numpy(v).to(dtype) for v in vectors], decoder, tokens)


def stored_document(store: VectorStore, doc_id: str, decoder: int, dtype: torch.dtype = torch.float32) -> Compressed:
    """A stored document (all its chunks, in order) as a Compressed part; KeyError if absent."""
    return stored_chunks(store, [c.id for c in store.chunks(doc_id)], decoder, dtype)
