"""LangChain and LlamaIndex adapters against a BackgroundServer with the tiny model: answers equal
the library's own generate() on the documented prompt, retrieved chunks are read from the store by
id (never recompressed), and refusals surface as errors naming the field. Each framework's tests
are skipped when its extra is not installed."""

import importlib
import inspect

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
    # a model id other than the adapters' old default "arc-encoder": they must ask the server
    app = create_app(model, store, limits=ServeLimits(max_new_tokens=NEW), model_name="tiny-served")
    with BackgroundServer(app) as server:
        client = ARCClient(server.url)
        docs = [{"id": d, "text": t} for d, t in corpus_docs(4)]
        client._http.post("/v1/documents", json={"documents": docs}).raise_for_status()
        yield server.url, model, store


def expected(model, question, documents=()):
    """The prompt the chat route documents: the plain transcript of the tiny tokenizer (it has no
    chat template), each document as "Document: " [vectors] "\\n" before the user's text."""
    parts, text = [], "user: "
    for d in documents:
        parts += [text + "Document: ", d]
        text = "\n"
    parts.append(f"{text}{question}\nassistant:")
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


def test_the_client_asks_the_server_for_its_model(served):
    url, _, _ = served
    assert ARCClient(url).model == "tiny-served"
    assert ARCClient(url, model="mine").model == "mine"  # a given id is used as is
    with pytest.raises(ARCServiceError) as caught:
        ARCClient(url, model="mine").chat([{"role": "user", "content": "hi"}])
    assert caught.value.status == 404 and caught.value.param == "model"


def test_a_string_is_one_document_not_its_characters(served):
    """`documents="text"` (a str is iterable) reads as one document, in both adapters."""
    url, model, _ = served
    text = corpus_docs(4)[3][1]
    one = expected(model, "what is mentioned?", [Doc(text)])
    if importlib.util.find_spec("langchain_core") is not None:
        from arc_encoder.integrations.langchain import ARCChatModel

        answer = ARCChatModel(base_url=url).invoke("what is mentioned?", documents=text)
        assert answer.content == one
        assert answer.response_metadata["arc"]["document_tokens"] == model.compress([text])[0].document_tokens
    if importlib.util.find_spec("llama_index") is not None:
        from arc_encoder.integrations.llamaindex import ARCLLM

        assert ARCLLM(base_url=url).complete("what is mentioned?", documents=text).text == one


def docstring_examples(module) -> list[str]:
    """The code blocks (lines indented under a docstring's text) of a module's docstring and of its
    classes' docstrings, `pip install` lines left out."""
    own = [c for c in vars(module).values() if inspect.isclass(c) and c.__module__ == module.__name__]
    docs = [inspect.getdoc(module)] + [inspect.cleandoc(c.__doc__) for c in own if c.__dict__.get("__doc__")]
    blocks = []
    for doc in filter(None, docs):
        block: list[str] = []
        for line in doc.splitlines() + [""]:
            if line.startswith("    ") and not line.strip().startswith("pip "):
                block.append(line[4:])
            elif block and line.strip():
                blocks.append("\n".join(block))
                block = []
        if block:
            blocks.append("\n".join(block))
    return blocks


@pytest.mark.parametrize("name", ["client", "langchain", "llamaindex"])
def test_every_docstring_example_runs_against_a_server(served, name):
    """The examples as written (the server's address swapped in), with the model id left to the
    server: the old default model name made each of them a 404."""
    pytest.importorskip({"client": "httpx", "langchain": "langchain_core", "llamaindex": "llama_index.core"}[name])
    url, _, _ = served
    module = importlib.import_module(f"arc_encoder.integrations.{name}")
    examples = docstring_examples(module)
    assert examples, f"no example in {module.__name__}"
    for code in examples:
        exec(code.replace("http://127.0.0.1:8000", url), dict(vars(module)))
