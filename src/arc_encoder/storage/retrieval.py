"""BM25 retrieval over a VectorStore's chunk texts (bm25s), to pick which compressed chunks to read.

The index lives in the store folder (bm25/) with the store's content version it was built from;
an index whose version differs from the store's is rebuilt, at open() and before each search.
Chunk ids never change (not even by compact()), so the index maps its rows to chunk ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic import remove_debris, write_folder
from .store import VectorStore

INDEX_DIR = "bm25"
_META_FILE = "meta.json"
_IDS_FILE = "chunk_ids.npy"
_STOPWORDS = "en"


def _import_bm25s():
    try:
        import bm25s
    except ImportError as e:
        raise ImportError("BM25 retrieval needs bm25s: pip install 'arc-encoder[store]'") from e
    return bm25s


def _tokenize(texts: list[str]) -> list[list[str]]:
    # One tokenization for chunks and queries: lower-cased words, English stopwords removed.
    bm25s = _import_bm25s()
    return bm25s.tokenize(texts, stopwords=_STOPWORDS, return_ids=False, show_progress=False)


def bm25_scores(query: str, texts: list[str]) -> np.ndarray:
    """[len(texts)] BM25 scores of `query` against `texts`, indexed on their own (their document
    frequencies only): e.g. the paragraphs of one long document. Zero where nothing matches."""
    if not texts:
        raise ValueError("BM25 needs at least one text to score")
    query_tokens = _tokenize([query])[0]
    if not query_tokens:
        return np.zeros(len(texts))  # only stopwords or punctuation: nothing to match
    retriever = _import_bm25s().BM25()
    retriever.index(_tokenize(texts), show_progress=False)
    return np.asarray(retriever.get_scores(query_tokens), dtype=np.float64)


def top_k_texts(query: str, texts: list[str], k: int) -> list[int]:
    """Indices of the k texts that score highest for `query` (bm25_scores), best first; ties,
    zero scores included, keep the texts' order, so there are always min(k, len(texts))."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    scores = bm25_scores(query, texts)
    order = sorted(range(len(texts)), key=lambda i: (-scores[i], i))
    return order[:k]


class BM25Index:
    """BM25 over every chunk text of a store: search(query, k) -> [(chunk_id, doc_id, score)]."""

    def __init__(self, store: VectorStore, retriever, chunk_ids: np.ndarray, version: int):
        # Use BM25Index.build / BM25Index.open.
        self.store = store
        self._retriever = retriever  # bm25s.BM25, or None for a store without chunks
        self._chunk_ids = chunk_ids  # [n_chunks] int64: index row -> chunk id
        self.version = version

    @classmethod
    def build(cls, store: VectorStore) -> BM25Index:
        """Index the store's chunk texts now and save the index in the store folder."""
        bm25s = _import_bm25s()
        version = store.version
        chunks = list(store.iter_chunks())
        chunk_ids = np.array([c.id for c in chunks], dtype=np.int64)
        retriever = None
        if chunks:
            retriever = bm25s.BM25()
            retriever.index(_tokenize([c.text for c in chunks]), show_progress=False)
        index = cls(store, retriever, chunk_ids, version)
        index._save()
        return index

    @classmethod
    def open(cls, store: VectorStore) -> BM25Index:
        """The saved index if it matches the store's content version, else a freshly built one."""
        folder = store.path / INDEX_DIR
        try:
            meta = json.loads((folder / _META_FILE).read_text())
            if meta["version"] != store.version:
                return cls.build(store)
            chunk_ids = np.load(folder / _IDS_FILE)
            retriever = None
            if len(chunk_ids):
                retriever = _import_bm25s().BM25.load(str(folder), show_progress=False)
        except (OSError, ValueError, KeyError):
            # Missing or damaged index (e.g. a crash between the folder swaps): it is only a cache.
            return cls.build(store)
        return cls(store, retriever, chunk_ids, meta["version"])

    def _save(self) -> None:
        # Built in a temporary folder and swapped in: a reader never sees a half-written index.
        remove_debris(self.store.path / INDEX_DIR)  # what a kill during an earlier build left

        def write(folder: Path) -> None:
            if self._retriever is not None:
                self._retriever.save(str(folder), show_progress=False)
            np.save(folder / _IDS_FILE, self._chunk_ids)
            (folder / _META_FILE).write_text(json.dumps({"version": self.version, "n_chunks": len(self._chunk_ids)}))

        write_folder(self.store.path / INDEX_DIR, write)

    def search(self, query: str, k: int = 10) -> list[tuple[int, str, float]]:
        """Up to k (chunk_id, doc_id, score) with a positive BM25 score, best first."""
        if self.store.version != self.version:
            fresh = BM25Index.build(self.store)
            self._retriever, self._chunk_ids, self.version = fresh._retriever, fresh._chunk_ids, fresh.version
        if self._retriever is None or k < 1:
            return []
        query_tokens = _tokenize([query])
        if not query_tokens[0]:
            return []  # only stopwords or punctuation: nothing to match
        k = min(k, len(self._chunk_ids))
        rows, scores = self._retriever.retrieve(query_tokens, k=k, show_progress=False)  # [1, k] each
        hits = [(int(self._chunk_ids[r]), float(s)) for r, s in zip(rows[0], scores[0]) if s > 0]
        infos = self.store.chunk_info([cid for cid, _ in hits])
        return [(cid, info.doc_id, score) for (cid, score), info in zip(hits, infos)]
