"""The OpenAI-compatible routes, driven by the official `openai` client against a real server on
127.0.0.1 (tiny model): answers equal the library's own generate() on the prompt the routes are
documented to build, streaming adds up to the same text, and refusals come as OpenAI errors."""

import json

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from _serving_helpers import corpus_docs, live_server  # noqa: E402
from arc_encoder import Doc  # noqa: E402
from arc_encoder.serving.app import create_app  # noqa: E402
from arc_encoder.serving.openai_routes import TextStream  # noqa: E402
from arc_encoder.serving.schemas import ServeLimits  # noqa: E402
from arc_encoder.serving.stored import stored_document  # noqa: E402
from arc_encoder.storage import VectorStore  # noqa: E402
from conftest import build_tiny_arc  # noqa: E402

KEY = "s3cret"
NAME = "tiny-arc"
LIMITS = ServeLimits(max_texts=4, max_chars=400, max_new_tokens=12, max_k=5)


@pytest.fixture(scope="module")
def model(tiny_models):
    """The conftest's saved_model, built once for this module's server."""
    return build_tiny_arc(tiny_models, seed=11, chunk_tokens=16).eval()


@pytest.fixture(scope="module")
def server(tmp_path_factory, model):
    """(base url, model, store path) of a service with key KEY, two stored documents."""
    store = tmp_path_factory.mktemp("openai") / "store"
    app = create_app(model, store, api_key=KEY, limits=LIMITS, model_name=NAME)
    with live_server(app) as (host, port):
        base = f"http://{host}:{port}"
        docs = [{"id": d, "text": t} for d, t in corpus_docs(2)]
        r = httpx.post(f"{base}/v1/documents", json={"documents": docs}, headers={"X-API-Key": KEY}, timeout=60)
        assert r.status_code == 200, r.text
        yield base, model, store


@pytest.fixture(scope="module")
def client(server):
    base, _, _ = server
    return openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=60)


def greedy(model, parts, n=LIMITS.max_new_tokens, stop=None):
    return model.generate([parts], max_new_tokens=n, stop=stop or [])[0]


def test_models_lists_the_served_name(client):
    # the conftest's decoder is the folder "llama": the model, and the model naming its decoder
    assert [m.id for m in client.models.list().data] == [NAME, f"{NAME}:llama"]
    assert client.models.retrieve(NAME).id == NAME
    assert client.models.retrieve(f"{NAME}:llama").id == f"{NAME}:llama"


def test_completion_equals_the_library_answer_and_counts_positions(client, server):
    _, model, _ = server
    r = client.completions.create(model=NAME, prompt="Question: who wrote it?\nAnswer:", max_tokens=8, temperature=0)
    expected = greedy(model, ["Question: who wrote it?\nAnswer:"], 8)
    assert r.choices[0].text == expected.text
    assert r.usage.prompt_tokens == expected.prompt_length
    assert r.usage.completion_tokens == len(expected.token_ids)
    assert r.choices[0].finish_reason == ("length" if len(expected.token_ids) == 8 else "stop")


def test_chat_with_a_stored_document_reads_its_vectors(client, server):
    _, model, store = server
    doc_id, text = corpus_docs(2)[1]
    r = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": "what is mentioned?"}],
        temperature=0,
        extra_body={"document_ids": [doc_id]},
    )
    # The tiny tokenizer has no chat template: the routes write a plain transcript, the
    # documents before the last user message's text.
    expected = greedy(model, ["user: Document: ", Doc(text), "\nwhat is mentioned?\nassistant:"])
    assert r.choices[0].message.content == expected.text
    assert r.usage.prompt_tokens == expected.prompt_length
    arc = r.model_extra["arc"]
    with VectorStore.open(store) as opened:
        vectors = stored_document(opened, doc_id, 0).n_vectors
    assert arc["compressed_vectors"] == vectors and arc["document_tokens"] == expected.document_tokens
    assert arc["positions_saved"] == expected.document_tokens - vectors > 0
    # the same text sent as a document is compressed exactly as the stored one was
    again = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": "what is mentioned?"}],
        temperature=0,
        extra_body={"documents": [text]},
    )
    assert again.choices[0].message.content == r.choices[0].message.content


def test_streaming_adds_up_to_the_plain_answer(client):
    args = dict(model=NAME, messages=[{"role": "user", "content": "who wrote it?"}], temperature=0, stop=["e"])
    plain = client.chat.completions.create(**args).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain
    assert "e" not in plain
    finished = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finished) == 1 and finished[0].model_extra["arc"]["compressed_vectors"] == 0
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    args = dict(model=NAME, prompt="Question:", temperature=0)
    text = "".join(c.choices[0].text for c in client.completions.create(stream=True, **args))
    assert text == client.completions.create(**args).choices[0].text


def test_retrieval_puts_the_stores_chunks_in_the_prompt(client, server):
    r = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": "what about the zebra?"}],
        temperature=0,
        extra_body={"retrieve": {"query": "zebra", "k": 1}},
    )
    sources = r.model_extra["arc"]["sources"]
    assert [s["doc_id"] for s in sources] == ["doc-0"] and r.model_extra["arc"]["compressed_vectors"] > 0


@pytest.mark.parametrize(
    "extra, error, param",
    [
        ({"n": 2}, "BadRequestError", "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "BadRequestError", "tools"),
        ({"model": "gpt-4"}, "NotFoundError", "model"),
        ({"extra_body": {"document_ids": ["nope"]}}, "NotFoundError", "document_ids[0]"),
        ({"extra_body": {"documents": []}}, "BadRequestError", "documents"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "BadRequestError", "messages[0].role"),
        ({"max_tokens": 10_000}, "BadRequestError", "max_tokens"),
    ],
)
def test_bad_requests_are_openai_errors_naming_the_field(client, extra, error, param):
    args = dict(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    args.update(extra)
    with pytest.raises(getattr(openai, error)) as caught:
        client.chat.completions.create(**args)
    assert caught.value.body["param"] == param, caught.value.body
    assert caught.value.body["type"] in ("invalid_request_error", "not_found_error")


def test_a_missing_key_is_an_authentication_error(server):
    base, _, _ = server
    anonymous = openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        anonymous.models.list()
    # OpenAI's own answer to a wrong key: an invalid_request_error with code invalid_api_key
    assert (caught.value.body["type"], caught.value.body["code"]) == ("invalid_request_error", "invalid_api_key")


@pytest.mark.parametrize(
    "field, value, param",
    [
        ("stream", "yes", "stream"),
        ("max_tokens", True, "max_tokens"),
        ("temperature", "0.5", "temperature"),
        ("seed", 1.0, "seed"),
        ("messages", [{"role": "user", "content": 5}], "messages[0].content"),
        ("messages", [{"role": "user", "content": [{"type": "text", "text": 5}]}], "messages[0].content[0].text"),
        ("messages", [{"role": "user", "content": "a\ud800b"}], "messages[0].content"),
        ("messages", [{"role": "user"}], "messages[0].content"),
        ("documents", ["fine", "\udfff"], "documents[1]"),
        ("retrieve", {"query": "q", "k": "2"}, "retrieve.k"),
        ("stream_options", {"include_usage": 1}, "stream_options.include_usage"),
    ],
)
def test_loose_types_and_lone_surrogates_are_refused_naming_the_field(server, field, value, param):
    """OpenAI's schema: no "yes" for a boolean, no true or 1.0 for an integer, no "0.5" for a
    number; a string escaping half a surrogate pair is no text. Sent raw (the openai client would
    not send these), so the JSON is exactly what a careless client writes."""
    base, _, _ = server
    body = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, field: value}
    raw = json.dumps(body).encode()  # a lone surrogate goes out as its JSON escape
    r = httpx.post(
        f"{base}/v1/chat/completions",
        content=raw,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param), error
    assert "lone surrogate" in error["message"] if "\\u" in raw.decode() else param in error["message"]


@pytest.mark.parametrize(
    "method, path, content, status, words",
    [
        ("POST", "/v1/chat/completions", b'{"model": "\xff"}', 400, "not UTF-8"),
        ("POST", "/v1/chat/completions", b'{"model": ', 400, "not valid JSON"),
        ("GET", "/v1/chat/completions", None, 405, "allowed: POST"),
        ("POST", "/v1/embeddings", b"{}", 404, "no route POST /v1/embeddings"),
        ("POST", "/v1/compress", b'{"texts": ["\xfe"]}', 400, "not UTF-8"),
        ("DELETE", "/v1/search", None, 405, "allowed: POST"),
    ],
)
def test_every_error_under_v1_is_openai_shaped(server, method, path, content, status, words):
    base, _, _ = server
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.request(method, f"{base}{path}", content=content, headers=headers, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert words in error["message"]
    if path.startswith("/v1/c") and path != "/v1/chat/completions":  # a native route keeps its "detail"
        assert r.json()["detail"] == error["message"]


def test_text_stream_never_shows_a_stop_string():
    stream = TextStream(["\n\n"])
    deltas = [stream.update(t) for t in ("Hel", "lo\n", "\nWor")] + [stream.finish("Hello")]
    assert deltas == ["He", "llo", "", ""]
    stream = TextStream([])
    assert [stream.update("caf"), stream.update("é"), stream.finish("café!")] == ["caf", "é", "!"]


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TRIMMING = (  # as Llama 3's template does: the content trimmed
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] | trim }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)
OLD_MARK = "\x00arc-documents\x00"  # the marker string the documents' place used to be found by


@pytest.mark.parametrize(
    "template, user, expected_before, expected_after",
    [
        (
            None,
            "what is it?",
            f"system: rules {OLD_MARK} here\nuser: first\nassistant: ok\nuser: ",
            "\nwhat is it?\nassistant:",
        ),
        (
            CHATML,
            "what is it?",
            f"<|im_start|>system\nrules {OLD_MARK} here<|im_end|>\n<|im_start|>user\nfirst<|im_end|>\n"
            "<|im_start|>assistant\nok<|im_end|>\n<|im_start|>user\n",
            "\nwhat is it?<|im_end|>\n<|im_start|>assistant\n",
        ),
        (
            TRIMMING,
            "  what is it?  ",
            f"[system] rules {OLD_MARK} here\n[user] first\n[assistant] ok\n[user] ",
            "\n  what is it?\n[assistant] ",  # the message trimmed, with its documents
        ),
        (CHATML, "", None, "\n<|im_end|>\n<|im_start|>assistant\n"),  # an empty message: the documents alone
    ],
)
def test_documents_go_before_the_last_user_message_whatever_the_messages_say(
    model, template, user, expected_before, expected_after
):
    """The documents' place comes from the template's structure: a message holding the string that
    used to mark it (here the system message) does not move them."""
    import copy

    from arc_encoder.serving.openai_routes import chat_request_prompt
    from arc_encoder.serving.openai_schemas import ChatMessage

    tokenizer = copy.deepcopy(model.decoder_tokenizers[0])
    tokenizer.chat_template = template
    messages = [
        ChatMessage(role="system", content=f"rules {OLD_MARK} here"),
        ChatMessage(role="user", content="first"),
        ChatMessage(role="assistant", content="ok"),
        ChatMessage(role="user", content=user),
    ]
    doc = Doc("a document")
    parts = chat_request_prompt(tokenizer, messages, [doc])
    assert parts[1] == doc and len(parts) == 3 and parts[0].endswith("Document: ")
    if expected_before is not None:
        assert parts[0] == expected_before + "Document: "
    assert parts[2] == expected_after
    # the conversation, whole and unchanged, its last message led by the document's place
    messages[-1] = ChatMessage(role="user", content=f"Document: \n{user}")
    assert parts[0] + parts[2] == chat_request_prompt(tokenizer, messages, [])[0]
