"""Indexing a JSONL corpus into a store: vectors, counts, PQ, resume after interruption, bad input."""

import json

import numpy as np
import pytest
import torch

from _serving_helpers import corpus_docs, write_corpus
from arc_encoder.storage import VectorStore, indexing
from arc_encoder.storage.indexing import IndexSettings, index_corpus, read_corpus


def test_float32_vectors_equal_on_the_fly_compression(saved_model, tmp_path):
    _, model = saved_model
    docs = corpus_docs()
    report = index_corpus(
        model, write_corpus(tmp_path / "c.jsonl", docs), tmp_path / "store", batch_size=5, progress=False
    )
    assert (report.documents_added, report.documents_skipped) == (len(docs), 0)
    dec_tok = model.decoder_tokenizers[0]
    with VectorStore.open(tmp_path / "store", fingerprint=model.fingerprint()) as store:
        assert store.doc_ids() == [d for d, _ in docs]
        assert IndexSettings.load(store.path) == IndexSettings(0, model.config.decoders[0], 16)
        n_tokens = n_vectors = text_bytes = 0
        for doc_id, text in docs:
            stored = store.get(doc_id)
            expected = model.compress([text])[0].chunks  # config.chunk_tokens = 16, as the store
            assert len(stored) == len(expected) >= 1
            for s, e in zip(stored, expected):
                np.testing.assert_allclose(s, e.numpy(), atol=1e-5, rtol=1e-5)
            infos = store.chunks(doc_id)
            assert "".join(c.text for c in infos) == text  # chunks tile the document
            # the chunks' decoder tokens add up to the document's
            assert sum(c.n_tokens for c in infos) == len(dec_tok(text, add_special_tokens=False)["input_ids"])
            for c in infos:
                n_tokens += c.n_tokens
                n_vectors += c.n_vectors
                text_bytes += len(c.text.encode("utf-8"))
        assert any(len(store.chunks(d)) > 1 for d, _ in docs)  # multi-chunk documents were exercised
    s = report.stats
    assert (s.n_docs, s.n_tokens, s.n_vectors) == (len(docs), n_tokens, n_vectors)
    assert s.payload_bytes == n_vectors * 4 * model.config.bottleneck
    assert s.bytes_per_token == pytest.approx(s.vector_bytes / n_tokens)
    assert s.text_bytes_per_token == pytest.approx(text_bytes / n_tokens)
    assert s.vector_bytes >= s.payload_bytes
    assert "bytes per token" in report.lines()[-1]


def test_pq_store_holds_the_quantized_float32_vectors(saved_model, tmp_path):
    _, model = saved_model
    docs = corpus_docs(30)  # PQ training needs >= 256 vectors
    corpus = write_corpus(tmp_path / "c.jsonl", docs)
    index_corpus(model, corpus, tmp_path / "f32", progress=False)
    report = index_corpus(model, corpus, tmp_path / "pq", codec="pq2", progress=False)
    assert not (tmp_path / "pq.float32-staging").exists()  # staging removed once quantized
    with VectorStore.open(tmp_path / "f32") as f32, VectorStore.open(tmp_path / "pq") as pq:
        assert pq.codec.name == "pq2" and pq.fingerprint == f32.fingerprint == model.fingerprint()
        assert IndexSettings.load(pq.path) == IndexSettings.load(f32.path)
        originals = np.concatenate([v for d, _ in docs for v in f32.get(d)])
        decoded = np.concatenate([v for d, _ in docs for v in pq.get(d)])
        # Exactly the codebook's reconstruction of the original vectors ...
        np.testing.assert_allclose(decoded, pq.codec.decode(pq.codec.encode(originals)), atol=1e-6)
        # ... and a real approximation of them (k-means on the same points: far below their spread).
        error = ((decoded - originals) ** 2).sum(1).mean()
        spread = ((originals - originals.mean(0)) ** 2).sum(1).mean()
        assert error < 0.2 * spread
        # 2 bits per dimension: 8 bytes per 32-dim vector instead of 128.
        assert report.stats.payload_bytes == report.stats.n_vectors * 8
        assert report.stats.bytes_per_token < f32.stats().bytes_per_token / 8
    # More documents go straight into the PQ store, encoded with its codebook.
    more = docs + [("late", "A late walrus document about bridges and towers.")]
    again = index_corpus(model, write_corpus(tmp_path / "c2.jsonl", more), tmp_path / "pq", codec="pq2", progress=False)
    assert (again.documents_added, again.documents_skipped) == (1, len(docs))


def test_pq_with_too_few_vectors_keeps_the_float32_staging(saved_model, tmp_path):
    _, model = saved_model
    corpus = write_corpus(tmp_path / "c.jsonl", corpus_docs(3))
    with pytest.raises(ValueError, match="at least 256"):
        index_corpus(model, corpus, tmp_path / "pq", codec="pq1", progress=False)
    assert not (tmp_path / "pq").exists()
    with VectorStore.open(tmp_path / "pq.float32-staging") as staging:
        assert len(staging) == 3


def test_interrupted_indexing_resumes_without_duplicates_or_gaps(saved_model, tmp_path, monkeypatch):
    _, model = saved_model
    docs = corpus_docs(12)
    corpus = write_corpus(tmp_path / "c.jsonl", docs)
    real_plan = indexing.plan_chunks
    calls = {"n": 0}

    def plan_then_interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # Ctrl-C while the 8th document is being prepared
            raise KeyboardInterrupt
        return real_plan(*args, **kwargs)

    monkeypatch.setattr(indexing, "plan_chunks", plan_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        index_corpus(model, corpus, tmp_path / "store", batch_size=3, write_every=2, progress=False)
    with VectorStore.open(tmp_path / "store") as store:
        written = store.doc_ids()
    # Only whole transactions of 2 documents survive, in corpus order, and some work was kept.
    assert 2 <= len(written) < 8 and len(written) % 2 == 0
    assert written == [d for d, _ in docs[: len(written)]]

    monkeypatch.setattr(indexing, "plan_chunks", real_plan)
    report = index_corpus(model, corpus, tmp_path / "store", batch_size=3, write_every=2, progress=False)
    assert (report.documents_skipped, report.documents_added) == (len(written), len(docs) - len(written))
    index_corpus(model, corpus, tmp_path / "clean", batch_size=3, progress=False)
    with VectorStore.open(tmp_path / "store") as store, VectorStore.open(tmp_path / "clean") as clean:
        assert sorted(store.doc_ids()) == sorted(d for d, _ in docs)  # no gap, no duplicate
        assert store.stats().n_chunks == clean.stats().n_chunks
        for d, text in docs:
            assert store.text(d) == text
            for a, b in zip(store.get(d), clean.get(d), strict=True):
                np.testing.assert_allclose(a, b, atol=1e-5)


def test_replace_recompresses_and_mismatches_are_refused(saved_model, tiny_arc, tmp_path):
    _, model = saved_model
    docs = corpus_docs(4)
    index_corpus(model, write_corpus(tmp_path / "c.jsonl", docs), tmp_path / "store", progress=False)
    changed = [(docs[0][0], "A new text about a glacier."), *docs[1:]]
    corpus = write_corpus(tmp_path / "c2.jsonl", changed)
    skipped = index_corpus(model, corpus, tmp_path / "store", progress=False)
    assert skipped.documents_added == 0  # same ids: kept as they are without --replace
    replaced = index_corpus(model, corpus, tmp_path / "store", replace=True, progress=False)
    assert replaced.documents_added == 4
    with VectorStore.open(tmp_path / "store") as store:
        assert store.text(docs[0][0]) == "A new text about a glacier."
        assert len(store) == 4
    other = tiny_arc(seed=12, chunk_tokens=16)
    with pytest.raises(ValueError, match="fingerprint"):
        index_corpus(other, corpus, tmp_path / "store", progress=False)
    with pytest.raises(ValueError, match="chunked at 16 tokens, not 8"):
        index_corpus(model, corpus, tmp_path / "store", chunk_tokens=8, progress=False)
    with pytest.raises(ValueError, match="decoder index 1 does not exist"):
        index_corpus(model, corpus, tmp_path / "new", decoder=1, progress=False)
    with pytest.raises(ValueError, match="uses codec float32, not float16"):
        index_corpus(model, corpus, tmp_path / "store", codec="float16", progress=False)
    with pytest.raises(ValueError, match="unknown codec"):
        index_corpus(model, corpus, tmp_path / "new", codec="int8", progress=False)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "c.jsonl, line 2: invalid JSON"),
        ('["a", "b"]', "c.jsonl, line 2: expected a JSON object"),
        ('{"text": "x"}', "c.jsonl, line 2: missing field 'id'"),
        ('{"id": "b"}', "c.jsonl, line 2: missing field 'text'"),
        ('{"id": 1.5, "text": "x"}', "c.jsonl, line 2: field 'id' must be a string or an integer"),
        ('{"id": "b", "text": 3}', "c.jsonl, line 2: field 'text' must be a string"),
        ('{"id": "b", "text": "  "}', "c.jsonl, line 2: field 'text' is empty"),
        ('{"id": "a", "text": "again"}', "c.jsonl, line 2: document id 'a' appears twice"),
    ],
)
def test_bad_corpus_lines_are_named(tmp_path, line, message):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "fine"}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=message):
        list(read_corpus(path))


def test_corpus_reading_skips_blank_lines_and_accepts_integer_ids(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": 7, "text": "seven"}\n\n   \n{"id": "b", "text": "bee"}\n')
    assert list(read_corpus(path)) == [("7", "seven"), ("b", "bee")]
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        list(read_corpus(tmp_path / "missing.jsonl"))


def test_bad_corpus_fails_before_anything_is_written(saved_model, tmp_path):
    _, model = saved_model
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "text": "fine"}\n{"id": "b"}\n')
    with pytest.raises(ValueError, match="c.jsonl, line 2"):
        index_corpus(model, path, tmp_path / "store", progress=False)
    assert not (tmp_path / "store").exists()


def test_chunks_never_exceed_the_chunk_size(saved_model):
    _, model = saved_model
    text = " ".join(t for _, t in corpus_docs(6))
    settings = IndexSettings(0, model.config.decoders[0], 7)
    # the store keeps the library's max_chunks rule: 75 chunks of 7 tokens are refused
    with pytest.raises(ValueError, match="needs 75 chunks of 7, more than max_chunks=32"):
        indexing.plan_chunks(model, text, settings.decoder, settings.chunk_tokens)
    model.config.max_chunks = 100
    plans = indexing.plan_chunks(model, text, settings.decoder, settings.chunk_tokens)
    whole = model.encoder_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert [i for p in plans for i in p.encoder_ids] == whole  # every token, once, in order
    assert all(1 <= len(p.encoder_ids) <= 7 for p in plans)
    assert "".join(text[p.start : p.end] for p in plans) == text
    vectors = indexing.compress_chunks(model, plans, 0, batch_size=4)
    pooled = [(len(p.encoder_ids) + 1) // 2 for p in plans]  # pooling factor 2, last group partial
    assert [v.shape for v in vectors] == [torch.Size([m, 32]) for m in pooled]
