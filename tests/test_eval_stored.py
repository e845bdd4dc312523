"""StoredARC: the evaluation's ARC prompts with every document's vectors read from a store."""

import pytest
import torch

from _serving_helpers import corpus_docs, write_corpus
from arc_encoder.evaluation.methods import ARC, StoredARC
from arc_encoder.evaluation.tasks import Example
from arc_encoder.model.arc import Compressed
from arc_encoder.storage import VectorStore
from arc_encoder.storage.indexing import IndexSettings, index_corpus, quantize_store


@pytest.fixture
def indexed(saved_model, tmp_path):
    _, model = saved_model
    docs = corpus_docs(6)
    index_corpus(model, write_corpus(tmp_path / "c.jsonl", docs), tmp_path / "store", progress=False)
    examples = [Example(f"what is in {d}?", ["it"], [text], f"q-{d}") for d, text in docs]
    return model, tmp_path / "store", examples, {text: d for d, text in docs}


def test_stored_prompts_equal_on_the_fly_prompts(indexed, monkeypatch):
    model, path, examples, ids = indexed
    shots, scored = examples[:2], examples[2:]
    expected = ARC(model, 0, shots).prompts(scored)
    with VectorStore.open(path) as store:
        method = StoredARC(model, 0, shots, store, ids)
        monkeypatch.setattr(model.encoder, "forward", lambda *a, **k: pytest.fail("the encoder ran"))
        built = method.prompts(scored)
        assert method.describe()["codec"] == "float32"
    assert any(len(p.chunks) > 1 for b in built for p in b.parts if isinstance(p, Compressed))
    for got, want in zip(built, expected, strict=True):
        assert (got.document_tokens, got.document_positions) == (want.document_tokens, want.document_positions)
        assert len(got.parts) == len(want.parts) == 7  # 3 documents, text before and after each
        for g, w in zip(got.parts, want.parts):
            if isinstance(w, str):
                assert g == w
                continue
            assert len(g.chunks) == len(w.chunks)
            for a, b in zip(g.chunks, w.chunks):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_stored_arc_refuses_other_models_decoders_and_unknown_documents(indexed, tiny_arc):
    model, path, examples, ids = indexed
    with VectorStore.open(path) as store:
        with pytest.raises(ValueError, match="not of this model"):
            StoredARC(tiny_arc(seed=12, chunk_tokens=16), 0, examples[:1], store, ids)
        with pytest.raises(KeyError, match="no id in the store"):
            StoredARC(model, 0, examples[:1], store, {})
    IndexSettings(1, "another-decoder", 16).save(path)
    with VectorStore.open(path) as store, pytest.raises(ValueError, match="for decoder 1"):
        StoredARC(model, 0, examples[:1], store, ids)


def test_quantize_store_keeps_the_index_settings(saved_model, tmp_path):
    _, model = saved_model
    index_corpus(model, write_corpus(tmp_path / "c.jsonl", corpus_docs(4)), tmp_path / "f32", progress=False)
    with (
        quantize_store(tmp_path / "f32", tmp_path / "f16", "float16") as f16,
        VectorStore.open(tmp_path / "f32") as f32,
    ):
        assert f16.codec.name == "float16" and f16.doc_ids() == f32.doc_ids()
        assert f16.stats().payload_bytes * 2 == f32.stats().payload_bytes
    assert IndexSettings.load(tmp_path / "f16") == IndexSettings.load(tmp_path / "f32")
    with pytest.raises(ValueError, match="not built by index_corpus"):
        quantize_store(tmp_path / "f16" / "missing", tmp_path / "x", "float16")
