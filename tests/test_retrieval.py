"""BM25Index: finds rare words, persists in the store folder, follows store changes."""

import numpy as np
import pytest

from _store_helpers import make_doc, make_text
from arc_encoder.storage import BM25Index, VectorStore

pytest.importorskip("bm25s")
DIM = 8


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    store = VectorStore.create(tmp_path / "s", "m", DIM)
    items = []
    for i in range(40):
        text, chunks = make_doc(rng, DIM, n_chunks=4)
        items.append((f"doc{i}", text, chunks))
    # One chunk of one document gets a word nowhere else in the corpus.
    words = make_text(rng, 30).split()
    words[20] = "zyzzyva"
    text = " ".join(words)
    _, chunks = make_doc(rng, DIM, n_chunks=3, text=text)
    items.insert(17, ("rare", text, chunks))
    store.add_many(items, batch_docs=10)
    return store


def chunk_with(store, doc_id, word):
    return [c.id for c in store.chunks(doc_id) if word in c.text]


def test_finds_the_chunk_with_a_rare_word(store):
    index = BM25Index.build(store)
    hits = index.search("where is the zyzzyva?", k=5)
    assert len(hits) == 1  # only one chunk has a positive score
    chunk_id, doc_id, score = hits[0]
    assert doc_id == "rare" and score > 0
    assert [chunk_id] == chunk_with(store, "rare", "zyzzyva")
    # A common word matches many chunks, best first.
    many = index.search("castle", k=10)
    assert len(many) == 10 and all(a[2] >= b[2] for a, b in zip(many, many[1:]))
    assert all("castle" in c.text for c in store.chunk_info([h[0] for h in many]))
    assert index.search("the of and", k=5) == []  # stopwords only


def test_index_is_persisted_and_reused(store, monkeypatch):
    first = BM25Index.build(store)
    assert (store.path / "bm25" / "meta.json").is_file()

    def no_build(_store):
        raise AssertionError("rebuilt although the store did not change")

    monkeypatch.setattr(BM25Index, "build", classmethod(lambda cls, s: no_build(s)))
    reopened = BM25Index.open(VectorStore.open(store.path))
    assert reopened.search("zyzzyva", 3) == first.search("zyzzyva", 3)


def test_index_follows_store_changes(store):
    index = BM25Index.build(store)
    version = store.version
    rng = np.random.default_rng(1)
    text = make_text(rng, 10) + " quokka " + make_text(rng, 10)
    _, chunks = make_doc(rng, DIM, n_chunks=1, text=text)
    store.add("new", text, chunks)
    assert store.version == version + 1
    assert [h[1] for h in index.search("quokka", 3)] == ["new"]  # rebuilt before searching
    store.delete("rare")
    assert index.search("zyzzyva", 3) == []
    # compact() keeps chunk ids and the version: the saved index stays valid.
    store.compact()
    assert BM25Index.open(store).version == store.version
    assert [h[1] for h in BM25Index.open(store).search("quokka", 3)] == ["new"]
    # A damaged saved index is rebuilt rather than trusted.
    (store.path / "bm25" / "chunk_ids.npy").write_bytes(b"garbage")
    (store.path / "bm25" / "meta.json").write_text("{")
    assert [h[1] for h in BM25Index.open(store).search("quokka", 3)] == ["new"]


def test_open_rebuilds_a_stale_saved_index(store):
    BM25Index.build(store)
    saved_version = store.version
    rng = np.random.default_rng(2)
    text = "the wombat " + make_text(rng, 5)
    store.add("w", text, make_doc(rng, DIM, n_chunks=1, text=text)[1])
    opened = BM25Index.open(VectorStore.open(store.path))
    assert opened.version == store.version == saved_version + 1
    assert [h[1] for h in opened.search("wombat", 3)] == ["w"]


def test_empty_store(tmp_path):
    store = VectorStore.create(tmp_path / "s", "m", DIM)
    assert BM25Index.build(store).search("anything", 5) == []
    assert BM25Index.open(store).search("anything", 5) == []
