"""Requests too large for the model are refused from their token counts, before any compression,
on every route: the encoder is never called (its calls are counted), and the error names the field."""

import time

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from _serving_helpers import SENTENCES  # noqa: E402
from arc_encoder.model.chunking import chunk_document  # noqa: E402
from arc_encoder.serving.app import create_app  # noqa: E402
from arc_encoder.serving.schemas import ServeLimits  # noqa: E402
from conftest import build_tiny_arc  # noqa: E402

NAME = "tiny"
LIMITS = ServeLimits(max_chars=100_000, max_new_tokens=600, max_k=20)
MAX_CHUNKS = 40


@pytest.fixture(scope="module")
def served(tiny_models, tmp_path_factory):
    """(TestClient, encoder calls): the tiny model (512 decoder positions, x2 pooling, chunks of 16
    tokens, at most 40 chunks a document) with its encoder calls counted."""
    model = build_tiny_arc(tiny_models, seed=4, chunk_tokens=16, max_chunks=MAX_CHUNKS).eval()
    calls = []
    encode = model.encode_segments
    model.encode_segments = lambda segments, decoder: calls.append(len(segments)) or encode(segments, decoder)
    app = create_app(model, tmp_path_factory.mktemp("limits") / "store", limits=LIMITS, model_name=NAME)
    with TestClient(app) as client:
        r = client.post("/v1/documents", json={"documents": [{"id": "d", "text": " ".join(SENTENCES)}]})
        assert r.status_code == 200, r.text
        yield client, model, calls


def text_of_chunks(model, n: int) -> str:
    """A text of about n chunks (of the store's 16 tokens)."""
    text = ""
    while len(chunk_document(text or "x", model.encoder_tokenizer, 16)) < n:
        text += " ".join(SENTENCES) + " "
    return text


def refused(client, calls, url, body):
    """The response to a request that must be refused without an encoder call."""
    calls.clear()
    started = time.perf_counter()
    r = client.post(url, json=body)
    elapsed = time.perf_counter() - started
    assert calls == [], f"{url}: the encoder ran {calls}"
    assert elapsed < 2.0, f"{url}: refused after {elapsed:.2f} s"  # a prompt's tokenization, not its compression
    return r


def test_documents_past_the_decoders_positions_are_refused_before_compression(served):
    client, model, calls = served
    text = text_of_chunks(model, 30)  # 30 chunks x (8 vectors + 1 special) = 270 positions
    assert len(chunk_document(text, model.encoder_tokenizer, 16)) <= MAX_CHUNKS
    docs = [text, text + " again", "another " + text]  # about 810 positions: over the 512
    chat = {"model": NAME, "messages": [{"role": "user", "content": "q?"}], "max_tokens": 2, "documents": docs}
    r = refused(client, calls, "/v1/chat/completions", chat)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == ("messages", "context_length_exceeded")
    assert "more than decoder 0's 512" in error["message"]

    completion = {"model": NAME, "prompt": "q?", "max_tokens": 2, "documents": docs}
    r = refused(client, calls, "/v1/completions", completion)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text

    generate = {"prompt": [{"document": d} for d in docs] + [{"text": "q?"}], "max_new_tokens": 2}
    r = refused(client, calls, "/v1/generate", generate)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    assert "decoder positions" in r.json()["detail"]

    # one document fits: it is compressed (the counter sees the encoder)
    r = client.post("/v1/chat/completions", json={**chat, "documents": docs[:1]})
    assert r.status_code == 200 and calls, r.text


def test_new_tokens_past_the_positions_are_refused_before_the_decoder(served):
    client, _, calls = served
    r = refused(client, calls, "/v1/ask", {"question": "what?", "k": 3, "max_new_tokens": 510})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "question" and "+ 510 new tokens" in r.json()["detail"]


@pytest.mark.parametrize(
    "url, body, param",
    [
        ("/v1/compress", lambda long: {"texts": ["short text", long]}, "texts[1]"),
        ("/v1/documents", lambda long: {"documents": [{"id": "a", "text": "ok"}, {"id": "b", "text": long}]}, None),
        ("/v1/generate", lambda long: {"prompt": [{"text": "q"}, {"document": long}]}, "prompt[1].document"),
        ("/v1/chat/completions", lambda long: {"model": NAME, "messages": [], "documents": ["x", long]}, None),
    ],
)
def test_a_document_over_max_chunks_is_refused_naming_it(served, url, body, param):
    client, model, calls = served
    long = text_of_chunks(model, MAX_CHUNKS + 5)
    body = body(long)
    if url == "/v1/chat/completions":
        body["messages"] = [{"role": "user", "content": "q?"}]
        param = "documents[1]"
    param = param or "documents[1].text"
    r = refused(client, calls, url, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and "max_chunks=40" in r.json()["error"]["message"]
    if url == "/v1/documents":  # nothing of the request was stored
        assert client.get("/v1/documents/a").status_code == 404
