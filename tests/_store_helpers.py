"""Shared helpers for the storage tests: synthetic documents with known vectors."""

import numpy as np

from arc_encoder.storage import ChunkRecord

WORDS = (
    "alpha beta gamma delta epsilon river mountain castle garden window paper music "
    "engine orbit salt copper lantern meadow harbor violin"
).split()


def make_text(rng: np.random.Generator, n_words: int) -> str:
    return " ".join(rng.choice(WORDS, size=n_words))


def make_doc(
    rng: np.random.Generator, dim: int, n_chunks: int = 3, words_per_chunk: int = 8, text: str | None = None
) -> tuple[str, list[ChunkRecord]]:
    """A text cut into n_chunks char spans, each with random vectors [m, dim] (m = 1..5)."""
    if text is None:
        text = make_text(rng, n_chunks * words_per_chunk)
    cuts = np.linspace(0, len(text), n_chunks + 1).astype(int)
    chunks = []
    for start, end in zip(cuts[:-1], cuts[1:]):
        m = int(rng.integers(1, 6))
        vectors = rng.standard_normal((m, dim)).astype(np.float32)
        chunks.append(
            ChunkRecord(vectors, n_tokens=int(rng.integers(4 * m, 4 * m + 4)), start=int(start), end=int(end))
        )
    return text, chunks
