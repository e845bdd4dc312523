"""The HTTP service through fastapi's TestClient: every endpoint, refusals, API key, restart."""

import base64

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from _serving_helpers import corpus_docs  # noqa: E402
from arc_encoder import Doc  # noqa: E402
from arc_encoder.serving.app import create_app  # noqa: E402
from arc_encoder.serving.schemas import ServeLimits  # noqa: E402
from arc_encoder.storage import VectorStore  # noqa: E402

LIMITS = ServeLimits(
    max_texts=4, max_chars=400, max_new_tokens=16, max_parts=6, max_vectors=64, max_k=5, max_request_bytes=200_000
)
QUESTION = "\nQuestion: what is mentioned?\nAnswer:"


@pytest.fixture
def serve(saved_model, tmp_path):
    """serve(**overrides) -> TestClient (as a context manager) of an app on tmp_path/store."""
    _, model = saved_model

    def make(**overrides):
        options = dict(limits=LIMITS, window_s=0.005)
        options.update(overrides)
        return TestClient(create_app(model, tmp_path / "store", **options))

    return make


def add_corpus(client, n=6):
    docs = corpus_docs(n)
    for first in range(0, n, LIMITS.max_texts):
        batch = [{"id": d, "text": t} for d, t in docs[first : first + LIMITS.max_texts]]
        r = client.post("/v1/documents", json={"documents": batch})
        assert r.status_code == 200, r.text
    return dict(docs)


def test_health_and_openapi_docs(serve, saved_model):
    _, model = saved_model
    with serve() as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["fingerprint"] == model.fingerprint()
        assert (health["decoder"], health["chunk_tokens"], health["backend"]) == (0, 16, "hf")
        assert client.get("/docs").status_code == 200
        paths = client.get("/openapi.json").json()["paths"]
        assert {"/v1/compress", "/v1/generate", "/v1/documents", "/v1/documents/{doc_id}", "/v1/ask"} <= set(paths)


def test_compress_returns_the_models_vectors_as_floats_or_base64(serve, saved_model):
    _, model = saved_model
    texts = [t for _, t in corpus_docs(3)]
    expected = model.compress(texts)  # config.chunk_tokens 16 = the store's chunking
    with serve() as client:
        as_float = client.post("/v1/compress", json={"texts": texts}).json()
        as_b64 = client.post("/v1/compress", json={"texts": texts, "encoding": "base64"}).json()
    assert (as_float["decoder"], as_float["dim"]) == (0, 32)
    for f, b, e in zip(as_float["results"], as_b64["results"], expected, strict=True):
        assert f["n_vectors"] == e.n_vectors and f["document_tokens"] == e.document_tokens
        assert f["compression_ratio"] == pytest.approx(e.document_tokens / e.n_vectors)
        for fc, bc, ec in zip(f["chunks"], b["chunks"], e.chunks, strict=True):
            assert fc["shape"] == bc["shape"] == list(ec.shape)
            from_b64 = np.frombuffer(base64.b64decode(bc["base64"]), dtype="<f4").reshape(bc["shape"])
            np.testing.assert_allclose(np.array(fc["data"], dtype=np.float32), ec.numpy(), atol=1e-5)
            np.testing.assert_array_equal(from_b64, np.array(fc["data"], dtype=np.float32))


def test_generate_from_text_document_stored_id_and_vectors_agree(serve, saved_model):
    _, model = saved_model
    with serve() as client:
        docs = add_corpus(client)
        text = docs["doc-4"]
        direct = model.generate(["Document: ", Doc(text), QUESTION], max_new_tokens=8)[0]
        vectors = client.post("/v1/compress", json={"texts": [text], "encoding": "base64"}).json()["results"][0]
        prompts = {
            "document": {"document": text},
            "stored_id": {"stored_id": "doc-4"},
            "vectors": {"vectors": {"chunks": vectors["chunks"], "document_tokens": vectors["document_tokens"]}},
        }
        for name, part in prompts.items():
            body = {"prompt": [{"text": "Document: "}, part, {"text": QUESTION}], "max_new_tokens": 8}
            r = client.post("/v1/generate", json=body)
            assert r.status_code == 200, (name, r.text)
            out = r.json()
            assert out["token_ids"] == direct.token_ids, name
            assert out["text"] == direct.text and out["prompt_length"] == direct.prompt_length
            assert out["compressed_vectors"] == direct.compressed_vectors
        closed = client.post(
            "/v1/generate", json={"prompt": [{"text": "Question: who?\nAnswer:"}], "max_new_tokens": 5}
        ).json()
        assert closed["token_ids"] == model.generate(["Question: who?\nAnswer:"], max_new_tokens=5)[0].token_ids
        assert closed["compressed_vectors"] == 0 and closed["compression_ratio"] is None


def test_documents_add_get_replace_delete(serve, saved_model, tmp_path):
    _, model = saved_model
    with serve() as client:
        docs = add_corpus(client, 3)
        got = client.get("/v1/documents/doc-1", params={"vectors": "float"}).json()
        assert got["text"] == docs["doc-1"]
        with VectorStore.open(tmp_path / "store") as store:
            stored = store.get("doc-1")
        assert [c["n_vectors"] for c in got["chunks"]] == [v.shape[0] for v in stored]
        for c, v in zip(got["chunks"], stored):
            np.testing.assert_array_equal(np.array(c["vectors"]["data"], dtype=np.float32), v)
        assert "".join(docs["doc-1"][c["start"] : c["end"]] for c in got["chunks"]) == docs["doc-1"]
        assert client.get("/v1/documents/doc-1").json()["chunks"][0]["vectors"] is None

        again = client.post("/v1/documents", json={"documents": [{"id": "doc-1", "text": "A walrus."}]})
        assert again.status_code == 409 and "doc-1" in again.json()["detail"]
        replaced = client.post(
            "/v1/documents", json={"documents": [{"id": "doc-1", "text": "A walrus."}], "replace": True}
        )
        assert replaced.status_code == 200 and replaced.json()["added"][0]["chunks"] == 1
        assert client.get("/v1/documents/doc-1").json()["text"] == "A walrus."

        slash = client.post("/v1/documents", json={"documents": [{"id": "wiki/Paris", "text": "Paris."}]})
        assert slash.status_code == 200
        assert client.get("/v1/documents/wiki/Paris").json()["id"] == "wiki/Paris"

        assert client.delete("/v1/documents/doc-1").json() == {"deleted": "doc-1"}
        missing = client.get("/v1/documents/doc-1")
        assert missing.status_code == 404 and "doc-1" in missing.json()["detail"]
        assert client.delete("/v1/documents/doc-1").status_code == 404


def test_ask_answers_from_the_store_with_sources(serve, saved_model):
    _, model = saved_model
    with serve() as client:
        docs = add_corpus(client, 8)
        r = client.post("/v1/ask", json={"question": "Where is the harpsichord?", "k": 2, "max_new_tokens": 6})
        assert r.status_code == 200, r.text
        out = r.json()
        top = out["sources"][0]
        assert top["doc_id"] == "doc-6" and "harpsichord" in top["text"] and top["score"] > 0
        assert len(out["sources"]) <= 2 and top["text"] in docs["doc-6"]
        assert out["compressed_vectors"] > 0
        # After a new document the retrieval index follows the store.
        client.post("/v1/documents", json={"documents": [{"id": "new", "text": "The kangaroo jumps."}]})
        again = client.post("/v1/ask", json={"question": "kangaroo", "k": 1, "max_new_tokens": 2}).json()
        assert again["sources"][0]["doc_id"] == "new"


@pytest.mark.parametrize(
    "method, url, body, status, message",
    [
        ("post", "/v1/compress", {"texts": []}, 422, "texts: List should have at least 1 item"),
        ("post", "/v1/compress", {"texts": ["a"] * 5}, 413, "number of texts: 5 exceeds the server's limit of 4"),
        ("post", "/v1/compress", {"texts": ["a" * 401]}, 413, "texts[0] length in characters: 401"),
        ("post", "/v1/compress", {"texts": ["   "]}, 400, "empty"),
        ("post", "/v1/compress", {"texts": ["a"], "encoding": "hex"}, 422, "encoding"),
        ("post", "/v1/compress", {"texts": ["a"], "colour": 1}, 422, "colour: Extra inputs are not permitted"),
        ("post", "/v1/generate", {"prompt": []}, 422, "prompt: List should have at least 1 item"),
        ("post", "/v1/generate", {"prompt": [{"text": "a", "document": "b"}]}, 422, "exactly one of"),
        ("post", "/v1/generate", {"prompt": [{"text": "a"}] * 7}, 413, "number of prompt parts: 7"),
        (
            "post",
            "/v1/generate",
            {"prompt": [{"text": "a"}], "max_new_tokens": 17},
            422,
            "max_new_tokens=17 exceeds the server's cap of 16",
        ),
        ("post", "/v1/generate", {"prompt": [{"text": "a"}], "max_new_tokens": 0}, 422, "max_new_tokens"),
        ("post", "/v1/generate", {"prompt": [{"text": "a"}], "temperature": -1}, 422, "temperature"),
        ("post", "/v1/generate", {"prompt": [{"text": "a"}], "top_p": 0}, 422, "top_p"),
        ("post", "/v1/generate", {"prompt": [{"text": "a"}], "stop": [""]}, 422, "stop strings"),
        ("post", "/v1/generate", {"prompt": [{"stored_id": "ghost"}]}, 404, "stored_id 'ghost' is not in the store"),
        (
            "post",
            "/v1/generate",
            {"prompt": [{"vectors": {"chunks": [{"data": [[0.0] * 31]}]}}]},
            422,
            "expected shape [m >= 1, 32]",
        ),
        (
            "post",
            "/v1/generate",
            {"prompt": [{"vectors": {"chunks": [{"data": [[0.0] * 32] * 65}]}}]},
            413,
            "number of vectors: 65",
        ),
        (
            "post",
            "/v1/generate",
            {"prompt": [{"vectors": {"chunks": [{"base64": "AAAA", "shape": [1, 32]}]}}]},
            422,
            "base64 holds 3 bytes",
        ),
        ("post", "/v1/generate", {"prompt": [{"vectors": {"chunks": [{"base64": "AAAA"}]}}]}, 422, "needs its 'shape'"),
        ("post", "/v1/generate", {"prompt": [{"text": ""}]}, 400, "empty prompt"),
        ("post", "/v1/documents", {"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}, 422, "unique"),
        ("post", "/v1/documents", {"documents": [{"id": "a", "text": " "}]}, 422, "empty text"),
        ("post", "/v1/documents", {"documents": [{"id": "", "text": "x"}]}, 422, "documents.0.id"),
        ("get", "/v1/documents/a?vectors=hex", None, 422, "vectors"),
        ("post", "/v1/ask", {"question": "q", "k": 6}, 422, "k=6 exceeds the server's cap of 5"),
        ("post", "/v1/ask", {"question": ""}, 422, "question"),
        ("post", "/v1/ask", {"question": "q", "k": "2"}, 422, "k: Input should be a valid integer"),
        ("post", "/v1/ask", {"question": "q", "max_new_tokens": True}, 422, "max_new_tokens: Input should be"),
        ("post", "/v1/documents", {"documents": [{"id": "a", "text": "x"}], "replace": "yes"}, 422, "replace"),
        ("post", "/v1/compress", b'{"texts": ["a\\ud800"]}', 422, "texts.0: Value error, the text holds a lone"),
    ],
)
def test_invalid_requests_are_refused_clearly(serve, method, url, body, status, message):
    with serve() as client:
        if isinstance(body, bytes):  # JSON as written, not as httpx would encode it
            r = client.post(url, content=body, headers={"content-type": "application/json"})
        else:
            r = getattr(client, method)(url, **({"json": body} if body is not None else {}))
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


@pytest.mark.parametrize(
    "raw, message",
    [
        (b'{"prompt": [{"text": "a"}], "temperature": NaN}', "temperature: Input should be a finite number"),
        (b'{"prompt": [{"text": "a"}], "temperature": 1e400}', "temperature: Input should be a finite number"),
        (b'{"prompt": [{"text": "a"}], "top_p": NaN}', "top_p: Input should be a finite number"),
        (b'{"prompt": [{"text": "a"}], "seed": 1180591620717411303424}', "seed: Input should be less than or equal"),
        (b'{"prompt": [{"text": "a"}], "seed": -1}', "seed: Input should be greater than or equal to 0"),
    ],
)
def test_non_finite_and_huge_numbers_get_a_readable_422(serve, raw, message):
    with serve() as client:
        r = client.post("/v1/generate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]


def test_the_question_length_message_says_it_once(serve):
    with serve() as client:
        r = client.post("/v1/ask", json={"question": "q" * (LIMITS.max_chars + 1)})
    assert r.status_code == 413
    assert (
        r.json()["detail"] == f"question length in characters: {LIMITS.max_chars + 1} exceeds the server's limit of 400"
    )


def test_oversized_body_and_malformed_json(serve):
    with serve() as client:
        huge = client.post(
            "/v1/compress",
            content=b'{"texts": ["' + b"a" * 200_001 + b'"]}',
            headers={"content-type": "application/json"},
        )
        assert huge.status_code == 413 and "exceeds the limit of 200000 bytes" in huge.json()["detail"]
        broken = client.post("/v1/compress", content=b'{"texts": [', headers={"content-type": "application/json"})
        assert broken.status_code == 422 and "not valid JSON" in broken.json()["detail"]


def test_api_key_is_required_when_set(serve, monkeypatch):
    with serve(api_key="s3cret") as client:
        body = {"texts": ["Paris is the capital."]}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "s3cre"}, {"Authorization": "s3cret"}):
            r = client.post("/v1/compress", json=body, headers=headers)
            assert r.status_code == 401 and "API key" in r.json()["detail"], headers
        assert client.get("/v1/documents/x").status_code == 401
        assert client.post("/v1/compress", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.post("/v1/compress", json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/health").status_code == 200  # liveness stays open


def test_restart_keeps_documents(serve):
    with serve() as client:
        docs = add_corpus(client, 4)
        before = client.post("/v1/ask", json={"question": "zebra", "max_new_tokens": 4}).json()
    with serve() as client:  # a new app (new worker, new store connection) on the same folder
        assert client.get("/v1/documents/doc-2").json()["text"] == docs["doc-2"]
        after = client.post("/v1/ask", json={"question": "zebra", "max_new_tokens": 4}).json()
        assert after == before
        r = client.post("/v1/documents", json={"documents": [{"id": "doc-0", "text": "x y z"}]})
        assert r.status_code == 409


def test_store_of_another_model_is_refused(serve, tiny_arc, tmp_path):
    with serve() as client:
        add_corpus(client, 1)
    other = tiny_arc(seed=99, chunk_tokens=16)
    with pytest.raises(ValueError, match="fingerprint"):
        with TestClient(create_app(other, tmp_path / "store")):
            pass


def test_generate_requests_in_flight_together_are_batched(serve, saved_model):
    """Many clients at once: fewer model calls than requests, each answer as if it ran alone."""
    from concurrent.futures import ThreadPoolExecutor

    _, model = saved_model
    texts = [t for _, t in corpus_docs(6)]
    with serve(window_s=0.3, max_batch=4) as client:

        def one(text):
            body = {"prompt": [{"text": "Document: "}, {"document": text}, {"text": QUESTION}], "max_new_tokens": 5}
            return client.post("/v1/generate", json=body).json()

        with ThreadPoolExecutor(6) as pool:
            outs = list(pool.map(one, texts))
        health = client.get("/health").json()
    assert health["batched_jobs"] == 6 and health["batches"] < 6 and health["largest_batch"] > 1
    for text, out in zip(texts, outs):
        alone = model.generate(["Document: ", Doc(text), QUESTION], max_new_tokens=5)[0]
        assert out["token_ids"] == alone.token_ids


def test_library_store_and_service_compress_a_long_document_alike(tiny_arc, tmp_path):
    from _serving_helpers import SENTENCES

    model = tiny_arc(seed=5).eval()  # the default chunk size
    text = " ".join(SENTENCES * 4)
    expected = model.compress([text])[0]
    assert len(expected.chunks) > 1  # a document of several chunks
    app = create_app(model, tmp_path / "store", limits=ServeLimits(max_chars=10_000), window_s=0.005)
    with TestClient(app) as client:
        served = client.post("/v1/compress", json={"texts": [text]}).json()["results"][0]
        assert client.post("/v1/documents", json={"documents": [{"id": "d", "text": text}]}).status_code == 200
        stored = client.get("/v1/documents/d?vectors=float").json()["chunks"]
    assert len(served["chunks"]) == len(stored) == len(expected.chunks)
    for s, st, e in zip(served["chunks"], stored, expected.chunks):
        np.testing.assert_allclose(np.array(s["data"], dtype=np.float32), e.numpy(), atol=1e-5)
        np.testing.assert_allclose(np.array(st["vectors"]["data"], dtype=np.float32), e.numpy(), atol=1e-5)
