"""The cache of compressed documents: a document asked about again is not compressed again (the
encoder's calls are counted), anything that shapes the vectors is part of the key, the byte bound
drops the least recently used document, and identical requests at once compress once."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from _serving_helpers import SENTENCES, corpus_docs  # noqa: E402
from arc_encoder.serving.app import create_app  # noqa: E402
from arc_encoder.serving.cache import CHUNK_OVERHEAD_BYTES, DocumentCache  # noqa: E402
from arc_encoder.serving.documents import DocumentCompressor  # noqa: E402
from arc_encoder.storage.indexing import resolve_settings  # noqa: E402
from arc_encoder.storage.store import ChunkRecord  # noqa: E402
from conftest import build_tiny_arc  # noqa: E402

NAME = "tiny"
TEXT = " ".join(SENTENCES)  # several chunks of 16 tokens


def counted(model) -> list[int]:
    """Count the encoder's calls on this model: a list that gets the number of segments of each."""
    calls: list[int] = []
    encode = model.encode_segments
    model.encode_segments = lambda segments, decoder: calls.append(len(segments)) or encode(segments, decoder)
    return calls


@pytest.fixture(scope="module")
def model(tiny_models):
    return build_tiny_arc(tiny_models, seed=6, chunk_tokens=16).eval()


def records(n_vectors: int, dim: int = 8) -> list[ChunkRecord]:
    return [ChunkRecord(torch.zeros(n_vectors, dim), 3, 0, 1)]


def test_the_byte_bound_drops_the_least_recently_used():
    one = 10 * 8 * 4 + CHUNK_OVERHEAD_BYTES  # a 10 x 8 float32 chunk and its record
    cache = DocumentCache(3 * one)
    for key in "abc":
        cache.put(key, records(10))
    assert cache.stats().bytes == 3 * one and cache.stats().entries == 3
    assert cache.get("a") is not None  # now a is the most recently used: b is the least
    cache.put("d", records(10))
    assert "b" not in cache and {"a", "c", "d"} <= {k for k in "acd" if k in cache}
    cache.put("e", records(20))  # twice the size: drops c, then a
    assert [k for k in "abcde" if k in cache] == ["d", "e"]
    assert cache.stats() == cache.stats().__class__(1, 0, 3, 2, one + (20 * 8 * 4 + CHUNK_OVERHEAD_BYTES), 3 * one)
    cache.put("huge", records(1000))  # larger than the whole cache: not kept, nothing dropped for it
    assert "huge" not in cache and [k for k in "de" if k in cache] == ["d", "e"]
    with pytest.raises(ValueError, match="cache size"):
        DocumentCache.of_megabytes(-1)


def test_the_second_compression_of_a_document_is_read_from_the_cache(model):
    calls = counted(model)
    cache = DocumentCache(64 << 20)
    settings = resolve_settings(model, 0, 16)
    compressor = DocumentCompressor(model, settings, cache=cache)
    first = compressor.compress([compressor.plan(TEXT)])[0]
    assert sum(calls) == len(first) > 1 and cache.stats().misses == 1
    calls.clear()
    again = compressor.plan(TEXT)
    second = compressor.compress([again])[0]
    assert calls == [] and again.cached and cache.stats().hits == 1
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.vectors, b.vectors) and (a.n_tokens, a.start, a.end) == (b.n_tokens, b.start, b.end)
    # a text given twice in one call is compressed once
    calls.clear()
    twice = [compressor.plan("The walrus sleeps."), compressor.plan("The walrus sleeps.")]
    compressor.compress(twice)
    assert len(calls) == 1 and [d.cached for d in twice] == [False, True]


def test_anything_that_shapes_the_vectors_is_in_the_key(tiny_models, model):
    """One shared cache, compressors that differ in one thing each: every one of them misses."""
    cache = DocumentCache(64 << 20)

    def compress(m, decoder=0, chunk_tokens=16, fingerprint=None):
        c = DocumentCompressor(m, resolve_settings(m, decoder, chunk_tokens), cache=cache, fingerprint=fingerprint)
        doc = c.plan(TEXT)
        c.compress([doc])
        return doc.cached

    assert compress(model) is False and compress(model) is True
    assert compress(model, chunk_tokens=32) is False  # other chunking
    retrained = build_tiny_arc(tiny_models, seed=7, chunk_tokens=16).eval()  # another version of the weights
    assert compress(retrained) is False
    two = build_tiny_arc(tiny_models, seed=6, chunk_tokens=16, decoders=[tiny_models["llama"]] * 2).eval()
    assert compress(two, decoder=0) is False and compress(two, decoder=1) is False  # another decoder
    x4 = build_tiny_arc(tiny_models, seed=6, chunk_tokens=16, pooling_factors=[4]).eval()
    assert compress(x4, fingerprint=model.fingerprint()) is False  # another pooling factor, even if mislabelled
    assert cache.stats().hits == 1 and cache.stats().entries == 6


@pytest.fixture
def served(model, tmp_path):
    """(TestClient, encoder calls) of a service with the cache, the tiny model's encoder counted."""
    calls = counted(model)
    app = create_app(model, tmp_path / "store", model_name=NAME, cache_mb=16, window_s=0.2, max_batch=8)
    with TestClient(app) as client:
        yield client, calls
    model.encode_segments = type(model).encode_segments.__get__(model)


def chat(client, documents, question="what is mentioned?"):
    body = {"model": NAME, "messages": [{"role": "user", "content": question}], "max_tokens": 3, "temperature": 0}
    r = client.post("/v1/chat/completions", json={**body, "documents": documents})
    assert r.status_code == 200, r.text
    return r.json()


def metrics(client) -> dict[str, float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        line.split()[0]: float(line.split()[1]) for line in r.text.splitlines() if line and not line.startswith("#")
    }


def test_a_second_question_about_a_document_does_not_compress_it(served, model):
    client, calls = served
    first = chat(client, [TEXT])
    chunks = len(model.chunks_of(TEXT, 16))
    assert sum(calls) == chunks and first["arc"]["cache"] == {"hits": 0, "misses": 1}
    calls.clear()
    second = chat(client, [TEXT], "who wrote it?")
    assert calls == [] and second["arc"]["cache"] == {"hits": 1, "misses": 0}
    assert second["arc"]["compressed_vectors"] == first["arc"]["compressed_vectors"]
    # every route shares the cache: compress, generate and store read it too
    r = client.post("/v1/compress", json={"texts": [TEXT, "The zebra runs."]}).json()
    assert r["cache"] == {"hits": 1, "misses": 1} and sum(calls) == 1
    r = client.post(
        "/v1/generate", json={"prompt": [{"document": "The zebra runs."}, {"text": "Q"}], "max_new_tokens": 2}
    )
    assert r.json()["cache"] == {"hits": 1, "misses": 0}
    r = client.post("/v1/documents", json={"documents": [{"id": "d", "text": TEXT}]})
    assert r.json()["cache"] == {"hits": 1, "misses": 0} and sum(calls) == 1
    m = metrics(client)
    assert (m["arc_cache_hits_total"], m["arc_cache_misses_total"], m["arc_cache_entries"]) == (4, 2, 2)
    vectors = sum(c.numel() * 4 for c in model.compress([TEXT, "The zebra runs."]) for c in c.chunks)
    n_chunks = chunks + 1
    assert m["arc_cache_bytes"] == vectors + n_chunks * CHUNK_OVERHEAD_BYTES
    assert m["arc_cache_capacity_bytes"] == 16 << 20


def test_identical_requests_at_once_compress_once(served, model):
    client, calls = served
    text = corpus_docs(3)[2][1] + " " + TEXT
    with ThreadPoolExecutor(4) as pool:  # within the batching window: one model call for all four
        answers = list(pool.map(lambda _: chat(client, [text]), range(4)))
    assert sum(calls) == len(model.chunks_of(text, 16))  # each chunk through the encoder once
    assert len({a["choices"][0]["message"]["content"] for a in answers}) == 1
    assert sorted(a["arc"]["cache"]["misses"] for a in answers) == [0, 0, 0, 1]
