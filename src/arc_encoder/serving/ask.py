"""Answer a question from a store: BM25 picks chunks, their stored vectors go into the prompt.

Prompt: `"Document: " [C1] [C2] ... [Ck] "\\nQuestion: q\\nAnswer:"`, the chunks in rank order
(best first), each its own block followed by its special token. This is the evaluation template
with separately compressed passages (evaluation/prompts.py, separate_passages=True), which is the
shape fine-tuning prompts have; one builder writes them all (prompt.qa_prompt). With no chunk
matching the question, the prompt is closed-book: `"Question: q\\nAnswer:"`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model.arc import Generation
from ..prompt import QA, qa_prompt
from ..storage.retrieval import BM25Index
from ..storage.store import VectorStore
from .stored import stored_chunks


@dataclass
class Source:
    doc_id: str
    chunk_index: int  # position of the chunk in its document
    chunk_id: int
    score: float  # BM25
    text: str


@dataclass
class Answer:
    text: str
    sources: list[Source]
    generation: Generation


def retrieve(store: VectorStore, index, question: str, k: int) -> list[Source]:
    """Top-k chunks for the question from a BM25Index over the store, best first."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question is empty")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    hits = index.search(question, k)  # [(chunk_id, doc_id, score)]
    infos = store.chunk_info([cid for cid, _, _ in hits])
    return [Source(doc_id, info.index, cid, score, info.text) for (cid, doc_id, score), info in zip(hits, infos)]


def ask_prompt(store: VectorStore, sources: list[Source], question: str, decoder: int) -> list:
    """The prompt parts (see module doc) for a question and its retrieved chunks."""
    documents = [stored_chunks(store, [s.chunk_id for s in sources], decoder)] if sources else []
    return qa_prompt([], QA(documents, question))


def open_retrieval(store: VectorStore):
    """The store's BM25 index (rebuilt if stale); a clear error without bm25s."""
    return BM25Index.open(store)


def ask(
    model,
    store: VectorStore,
    question: str,
    decoder: int | str,
    k: int = 3,
    index=None,
    max_new_tokens: int = 64,
    stop: list[str] | None = None,
    **generate_kwargs,
) -> Answer:
    """Retrieve, splice the stored vectors, generate. Stops at a newline unless `stop` says otherwise.
    `decoder`: the store's (an index or a name)."""
    decoder = model.decoder_index(decoder)
    index = index if index is not None else open_retrieval(store)
    sources = retrieve(store, index, question, k)
    prompt = ask_prompt(store, sources, question, decoder)
    generation = model.generate(
        [prompt],
        decoder=decoder,
        max_new_tokens=max_new_tokens,
        stop=["\n"] if stop is None else stop,
        **generate_kwargs,
    )[0]
    return Answer(generation.text.strip(), sources, generation)
