"""One compressor: the library (ARCModel.compress), the store (index_corpus) and the service
(/v1/compress) give the same vectors and the same compression_ratio for the same document."""

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from _serving_helpers import corpus_docs, write_corpus  # noqa: E402
from arc_encoder.model.chunking import chunk_document  # noqa: E402
from arc_encoder.serving.app import create_app  # noqa: E402
from arc_encoder.serving.stored import stored_document  # noqa: E402
from arc_encoder.storage import VectorStore  # noqa: E402
from arc_encoder.storage.indexing import index_corpus  # noqa: E402
from data_tokenizers import other_bpe  # noqa: E402


def count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_library_store_and_service_compress_a_document_alike(saved_model, tmp_path):
    _, model = saved_model
    # A decoder tokenizer other than the encoder's: the chunks (cut at encoder tokens) may split one
    # of its tokens, so counting each chunk's text on its own is not counting the document.
    decoder_tokenizer = other_bpe()
    model.decoder_tokenizers[0] = decoder_tokenizer
    doc_id, text = corpus_docs(3)[2]
    chunks = chunk_document(text, model.encoder_tokenizer, model.config.chunk_tokens)
    document_tokens = count(decoder_tokenizer, text)  # what the decoder reads for the text
    assert sum(count(decoder_tokenizer, text[c.start : c.end]) for c in chunks) != document_tokens

    library = model.compress([text])[0]
    index_corpus(model, write_corpus(tmp_path / "c.jsonl", [(doc_id, text)]), tmp_path / "store", progress=False)
    with VectorStore.open(tmp_path / "store") as store:
        stored = stored_document(store, doc_id, 0)
    with TestClient(create_app(model, tmp_path / "service")) as client:
        served = client.post("/v1/compress", json={"texts": [text]}).json()["results"][0]

    assert library.document_tokens == stored.document_tokens == served["document_tokens"] == document_tokens
    assert library.compression_ratio == stored.compression_ratio == served["compression_ratio"]
    assert len(library.chunks) == len(stored.chunks) == len(served["chunks"]) == len(chunks) > 1
    for own, kept, sent in zip(library.chunks, stored.chunks, served["chunks"]):
        np.testing.assert_allclose(kept.numpy(), own.float().cpu().numpy(), atol=1e-6)
        np.testing.assert_allclose(np.array(sent["data"], dtype=np.float32), kept.numpy(), atol=1e-6)
