"""LangChain and LlamaIndex adapters against a BackgroundServer with the tiny model: answers equal
the library's own generate() on the documented prompt, retrieved chunks are read from the store by
id (never recompressed), and refusals surface as errors naming the field. Each framework's tests
are skipped when its extra is not installed."""

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from _serving_helpers import corpus_docs  # noqa: E402
from arc_encoder import Doc  # noqa: E402
from arc_encoder.integrations.client import ARCClient, ARCServiceError  # noqa: E402
from arc_encoder.serving.app import create_app  # noqa: E402
from arc_encoder.serving.background import BackgroundServer  # noqa: E402
from arc_encoder.serving.schemas import ServeLimits  # noqa: E402
from arc_encoder.serving.stored import stored_chunks  # noqa: E402
from arc_encoder.storage import VectorStore  # noqa: E402
from conftest import build_tiny_arc  # noqa: E402

NEW = 6


@pytest.fixture(scope="module")
def served(tiny_models, tmp_path_factory):
    """(url, model, store path): the tiny model serving a store of four documents."""
    model = build_tiny_arc(tiny_models, seed=3, chunk_tokens=16).eval()
    store = tmp_path_factory.mktemp("integrations") / "store"
    app = create_app(model, store, limits=ServeLimits(max_new_tokens=NEW))
    with BackgroundServer(app) as server:
        client = ARCClient(server.url)
        docs = [{"id": d, "text": t} for d, t in corpus_docs(4)]
        client._http.post("/v1/documents", json={"documents": docs}).raise_for_status()
        yield server.url, model, store


def expected(model, question, documents=()):
    """The prompt the chat route documents: the plain transcript of the tiny tokenizer (it has no
    chat template), each document as "Document: " [vectors] "\\n" before the user's text."""
    parts = ["user: "] + [p for d in documents for p in ("Document: ", d, "\n")] + [f"{question}\nassistant:"]
    return model.generate([parts], max_new_tokens=NEW, stop=[])[0].text


def stored(store, chunk_ids):
    with VectorStore.open(store) as s:
        return stored_chunks(s, chunk_ids, 0)


def test_client_search_and_refusal(served):
    url, _, _ = served
    client = ARCClient(url)
    hits = client.search("zebra", k=2)
    assert hits[0]["doc_id"] == "doc-0" and {"chunk_id", "score", "text"} <= set(hits[0])
    with pytest.raises(ARCServiceError) as caught:
        client.chat([{"role": "user", "content": "hi"}], max_tokens=10_000)
    assert caught.value.status == 400 and caught.value.param == "max_tokens"


def test_langchain_chat_model_reads_retrieved_chunks_by_id(served):
    pytest.importorskip("langchain_core")
    from arc_encoder.integrations.langchain import ARCChatModel, ARCRetriever

    url, model, store = served
    llm = ARCChatModel(base_url=url)
    docs = ARCRetriever(base_url=url, k=2).invoke("zebra")
    assert [d.metadata["doc_id"] for d in docs][0] == "doc-0"
    answer = llm.invoke("what is mentioned?", documents=docs)
    ids = [d.metadata["chunk_id"] for d in docs]
    assert answer.content == expected(model, "what is mentioned?", [stored(store, ids)])
    assert answer.response_metadata["arc"]["compressed_vectors"] == stored(store, ids).n_vectors
    assert answer.usage_metadata["output_tokens"] >= 1
    # plain strings are compressed for the request; streaming adds up to the same answer
    text = corpus_docs(4)[2][1]
    plain = llm.invoke("what is mentioned?", documents=[text]).content
    assert plain == expected(model, "what is mentioned?", [Doc(text)])
    assert "".join(c.content for c in llm.stream("what is mentioned?", documents=[text])) == plain
    # in a chain, documents bound to the model
    assert llm.bind(document_ids=["doc-2"]).invoke("what is mentioned?").content == plain


def test_langchain_refuses_unknown_arguments_and_tool_messages(served):
    pytest.importorskip("langchain_core")
    from langchain_core.messages import ToolMessage

    from arc_encoder.integrations.langchain import ARCChatModel

    llm = ARCChatModel(base_url=served[0])
    with pytest.raises(TypeError, match="documnts"):
        llm.invoke("hi", documnts=["x"])
    with pytest.raises(ValueError, match="tool"):
        llm.invoke([ToolMessage(content="x", tool_call_id="1")])
    with pytest.raises(ARCServiceError, match="not in the store"):
        llm.invoke("hi", document_ids=["missing"])


def test_llamaindex_query_engine_answers_from_stored_chunks(served):
    pytest.importorskip("llama_index.core")
    from llama_index.core.base.llms.types import ChatMessage, MessageRole
    from llama_index.core.schema import NodeWithScore, TextNode

    from arc_encoder.integrations.llamaindex import ARCLLM, ARCQueryEngine, ARCRetriever

    url, model, store = served
    llm = ARCLLM(base_url=url)
    retriever = ARCRetriever(base_url=url, k=2)
    response = ARCQueryEngine(retriever=retriever, llm=llm).query("zebra")
    ids = [n.node.metadata["chunk_id"] for n in response.source_nodes]
    assert response.source_nodes[0].node.metadata["doc_id"] == "doc-0"
    assert str(response) == expected(model, "zebra", [stored(store, ids)])
    # nodes of other retrievers are compressed for the request
    text = corpus_docs(4)[1][1]
    node = NodeWithScore(node=TextNode(text=text), score=1.0)
    answer = llm.chat([ChatMessage(role=MessageRole.USER, content="what is mentioned?")], documents=[node])
    assert answer.message.content == expected(model, "what is mentioned?", [Doc(text)])
    assert llm.complete("what is mentioned?", documents=[text]).text == answer.message.content
    assert list(llm.stream_complete("what is mentioned?", documents=[text]))[-1].text == answer.message.content
