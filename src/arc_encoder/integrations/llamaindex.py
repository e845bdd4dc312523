"""LlamaIndex: an LLM that reads compressed documents, a retriever over the store, a query engine.

    pip install 'arc-encoder[llamaindex]'

    llm = ARCLLM(base_url="http://127.0.0.1:8000")
    engine = ARCQueryEngine(retriever=ARCRetriever(base_url="http://127.0.0.1:8000", k=3), llm=llm)
    engine.query("Who designed the tower?")
    llm.complete("Who designed the tower?", documents="Gustave Eiffel's company designed the tower.")

The query engine hands the retrieved nodes to the model as compressed documents: nodes from
ARCRetriever carry their stored chunk's id (metadata "chunk_id") and are read from the store without
recompressing; nodes of any other LlamaIndex retriever are compressed by the service. `ARCLLM` also
takes `documents=` / `document_ids=` in `complete`, `chat` and their streaming forms: a list of nodes
or strings, and a single string (or node) is one document, never a list of characters. The model
id is the one the service serves unless `model_name=` says otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.base.response.schema import Response
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle, TextNode
from pydantic import Field, PrivateAttr

from .client import ARCClient, Documents, connection

ROLES = {MessageRole.SYSTEM: "system", MessageRole.USER: "user", MessageRole.ASSISTANT: "assistant"}


def to_documents(documents=None, document_ids=None) -> Documents:
    """Nodes / strings / stored ids -> what the request carries. A single string or node is one
    document (a str is iterable: it would otherwise be read as its characters)."""
    if isinstance(documents, (str, BaseNode, NodeWithScore)):
        documents = [documents]
    if isinstance(document_ids, str):
        document_ids = [document_ids]
    out = Documents(document_ids=list(document_ids or []))
    for d in documents or []:
        node = d.node if isinstance(d, NodeWithScore) else d
        if isinstance(node, str):
            out.texts.append(node)
        elif "chunk_id" in getattr(node, "metadata", {}):
            out.chunk_ids.append(int(node.metadata["chunk_id"]))
        elif hasattr(node, "get_content"):
            out.texts.append(node.get_content())
        else:
            raise TypeError(f"documents must be strings or LlamaIndex nodes, got {type(d).__name__}")
    return out


def to_openai(messages: Sequence[ChatMessage]) -> list[dict]:
    out = []
    for m in messages:
        if m.role not in ROLES:
            raise ValueError(f"ARCLLM reads system, user and assistant messages, not {m.role.value!r} ones")
        out.append({"role": ROLES[m.role], "content": m.content or ""})
    return out


class ARCLLM(CustomLLM):
    base_url: str = Field("http://127.0.0.1:8000", description="the arc-encoder service")
    api_key: str | None = None
    model_name: str | None = None  # None: the model the service serves (its --served-model-name)
    max_tokens: int | None = None
    temperature: float = 0.0
    context_window: int = 8192  # the decoder's positions (SmolLM2-135M: 8,192)
    timeout: float = 300.0
    _connection: ARCClient | None = PrivateAttr(default=None)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_tokens or 256,
            # no request from here (LlamaIndex reads metadata when it sets things up): the served
            # model's id once a request has asked for it
            model_name=self.model_name or getattr(self._connection, "_model", None) or "arc-encoder",
            is_chat_model=True,
        )

    def _request(self, messages: list[dict], kwargs: dict) -> dict:
        docs = to_documents(kwargs.pop("documents", None), kwargs.pop("document_ids", None))
        kwargs.pop("formatted", None)
        stop = kwargs.pop("stop", None)
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}; ARCLLM takes documents= and document_ids=")
        return dict(
            messages=messages, documents=docs, max_tokens=self.max_tokens, temperature=self.temperature, stop=stop
        )

    def _client(self) -> ARCClient:
        return connection(self, self.model_name)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        reply = self._client().chat(**self._request([{"role": "user", "content": prompt}], kwargs))
        return CompletionResponse(text=reply.text, raw={"usage": reply.usage, "arc": reply.compression})

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        request = self._request([{"role": "user", "content": prompt}], kwargs)

        def gen():
            text = ""
            for piece in self._client().stream_chat(**request):
                text += piece
                yield CompletionResponse(text=text, delta=piece)

        return gen()

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        reply = self._client().chat(**self._request(to_openai(messages), kwargs))
        message = ChatMessage(role=MessageRole.ASSISTANT, content=reply.text)
        return ChatResponse(message=message, raw={"usage": reply.usage, "arc": reply.compression})

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        request = self._request(to_openai(messages), kwargs)

        def gen():
            text = ""
            for piece in self._client().stream_chat(**request):
                text += piece
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=piece)

        return gen()


class ARCRetriever(BaseRetriever):
    """The store's BM25 top-k chunks, as nodes that carry their stored chunk's id."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, k: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.client = ARCClient(base_url, api_key, timeout=60.0)
        self.k = k

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        out = []
        for s in self.client.search(query_bundle.query_str, self.k):
            node = TextNode(
                text=s["text"],
                id_=f"{s['doc_id']}#{s['chunk_index']}",
                metadata={k: s[k] for k in ("doc_id", "chunk_index", "chunk_id")},
            )
            out.append(NodeWithScore(node=node, score=s["score"]))
        return out


class ARCQueryEngine(CustomQueryEngine):
    """Retrieve, then answer with the retrieved nodes as compressed documents."""

    retriever: BaseRetriever
    llm: ARCLLM

    def custom_query(self, query_str: str) -> Response:
        nodes = self.retriever.retrieve(query_str)
        answer = self.llm.chat([ChatMessage(role=MessageRole.USER, content=query_str)], documents=nodes)
        return Response(response=answer.message.content, source_nodes=nodes, metadata=answer.raw)
