"""LangChain: a chat model that reads compressed documents, and a retriever over the store.

    pip install 'arc-encoder[langchain]'

    llm = ARCChatModel(base_url="http://127.0.0.1:8000")
    retriever = ARCRetriever(base_url="http://127.0.0.1:8000", k=3)
    docs = retriever.invoke("Who designed the tower?")
    llm.invoke("Who designed the tower?", documents=docs)
    llm.invoke("Who designed the tower?", documents="Gustave Eiffel's company designed the tower.")

The model id is the one the service serves unless `model_name=` says otherwise. `documents` takes a
list of LangChain Documents or plain strings; a single string (or Document) is one document, never
a list of characters. A Document from ARCRetriever carries its stored chunk's id (metadata
"chunk_id"): the model reads the stored vectors, nothing is compressed again. Any other Document or
string is compressed by the service for this request. Stored documents can also be named whole:
`document_ids=["doc-1"]`. Both work inside chains (`.bind()`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.retrievers import BaseRetriever
from pydantic import PrivateAttr

from .client import ARCClient, Documents, connection

ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def to_openai(messages: list[BaseMessage]) -> list[dict]:
    out = []
    for m in messages:
        if m.type not in ROLES:
            raise ValueError(f"ARCChatModel reads system, human and ai messages, not {m.type!r} ones")
        out.append({"role": ROLES[m.type], "content": m.text if hasattr(m, "text") else m.content})
    return out


def to_documents(documents=None, document_ids=None) -> Documents:
    """LangChain Documents / strings / stored ids -> what the request carries. A single string or
    Document is one document (a str is iterable: it would otherwise be read as its characters)."""
    if isinstance(documents, (str, Document)):
        documents = [documents]
    if isinstance(document_ids, str):
        document_ids = [document_ids]
    out = Documents(document_ids=list(document_ids or []))
    for d in documents or []:
        if isinstance(d, str):
            out.texts.append(d)
        elif isinstance(d, Document) and "chunk_id" in d.metadata:
            out.chunk_ids.append(int(d.metadata["chunk_id"]))
        elif isinstance(d, Document):
            out.texts.append(d.page_content)
        else:
            raise TypeError(f"documents must be strings or LangChain Documents, got {type(d).__name__}")
    return out


class ARCChatModel(BaseChatModel):
    base_url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    model_name: str | None = None  # None: the model the service serves (its --served-model-name)
    max_tokens: int | None = None
    temperature: float = 0.0
    timeout: float = 300.0
    _connection: ARCClient | None = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "arc-encoder"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "model_name": self.model_name, "temperature": self.temperature}

    def _request(self, messages, stop, kwargs) -> dict:
        docs = to_documents(kwargs.pop("documents", None), kwargs.pop("document_ids", None))
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}; ARCChatModel takes documents= and document_ids=")
        return dict(
            messages=to_openai(messages),
            documents=docs,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            stop=stop,
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        reply = connection(self, self.model_name).chat(**self._request(messages, stop, kwargs))
        usage = reply.usage
        message = AIMessage(
            content=reply.text,
            response_metadata={"finish_reason": reply.finish_reason, "arc": reply.compression},
            usage_metadata={
                "input_tokens": usage["prompt_tokens"],
                "output_tokens": usage["completion_tokens"],
                "total_tokens": usage["total_tokens"],
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for piece in connection(self, self.model_name).stream_chat(**self._request(messages, stop, kwargs)):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk


class ARCRetriever(BaseRetriever):
    """The store's BM25 top-k chunks, as Documents that carry their stored chunk's id."""

    base_url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    k: int = 3
    timeout: float = 60.0
    _connection: ARCClient | None = PrivateAttr(default=None)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [
            Document(
                page_content=s["text"],
                metadata={k: s[k] for k in ("doc_id", "chunk_index", "chunk_id", "score")},
            )
            for s in connection(self).search(query, self.k)
        ]
