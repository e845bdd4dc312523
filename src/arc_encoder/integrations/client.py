"""A small client of the service's OpenAI-compatible chat route and its search: what the LangChain
and LlamaIndex adapters share (both optional extras; this module needs only httpx).

Documents reach the model three ways, as the chat route takes them (serving/openai_routes.py):
texts to compress (`documents`), stored documents by id (`document_ids`) and stored chunks by id
(`chunk_ids`, as `search` returns them: read from the store, never recompressed).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field


class ARCServiceError(RuntimeError):
    """The service refused a request: its status, message and the request field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(f"{status}: {message}" + (f" (field {param})" if param else ""))
        self.status, self.message, self.param = status, message, param


@dataclass
class Reply:
    text: str
    finish_reason: str
    usage: dict  # prompt_tokens (decoder positions used), completion_tokens, total_tokens
    compression: dict = field(default_factory=dict)  # the response's `arc` field


@dataclass
class Documents:
    """What a request gives the model to read, beside its messages."""

    texts: list[str] = field(default_factory=list)
    document_ids: list[str] = field(default_factory=list)
    chunk_ids: list[int] = field(default_factory=list)

    def fields(self) -> dict:
        out = {"documents": self.texts, "document_ids": self.document_ids, "chunk_ids": self.chunk_ids}
        return {k: v for k, v in out.items() if v}


class ARCClient:
    """Chat and search against one service.

        client = ARCClient("http://127.0.0.1:8000")
        hits = client.search("Who designed the tower?", k=2)
        reply = client.chat(
            [{"role": "user", "content": "Who designed the tower?"}],
            Documents(chunk_ids=[h["chunk_id"] for h in hits]),
        )
        print(reply.text, reply.compression)

    `model`: the model id to ask for; None (the default) asks the service which model it serves
    (`GET /v1/models`), once, on first use.
    """

    def __init__(self, base_url: str, api_key: str | None = None, model: str | None = None, timeout: float = 300.0):
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._model = model
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    @property
    def model(self) -> str:
        """The model id requests name: the one given, else the one the service serves."""
        if self._model is None:
            served = [m["id"] for m in _checked(self._http.get("/v1/models")).get("data", [])]
            if not served:
                raise ARCServiceError(404, "the service lists no model at /v1/models", "model")
            self._model = served[0]
        return self._model

    def _body(self, messages, documents, max_tokens, temperature, stop, stream) -> dict:
        body = {"model": self.model, "messages": messages, "temperature": temperature, "stream": stream}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if stop:
            body["stop"] = list(stop)
        return {**body, **(documents or Documents()).fields()}

    def chat(
        self,
        messages: list[dict],
        documents: Documents | None = None,
        max_tokens: int | None = None,
        temperature: float = 0.0,
        stop: list[str] | None = None,
    ) -> Reply:
        """One answer to OpenAI-style messages [{"role", "content"}], reading the documents."""
        r = self._http.post(
            "/v1/chat/completions", json=self._body(messages, documents, max_tokens, temperature, stop, False)
        )
        answer = _checked(r)
        choice = answer["choices"][0]
        return Reply(choice["message"]["content"], choice["finish_reason"], answer["usage"], answer.get("arc", {}))

    def stream_chat(
        self,
        messages: list[dict],
        documents: Documents | None = None,
        max_tokens: int | None = None,
        temperature: float = 0.0,
        stop: list[str] | None = None,
    ) -> Iterator[str]:
        """The answer's text as it is generated, piece by piece."""
        body = self._body(messages, documents, max_tokens, temperature, stop, True)
        with self._http.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code >= 400:
                r.read()
                _checked(r)
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: ") :])
                for choice in chunk["choices"]:
                    if choice["delta"].get("content"):
                        yield choice["delta"]["content"]

    def search(self, query: str, k: int = 3) -> list[dict]:
        """The store's top-k chunks for the query: doc_id, chunk_index, chunk_id, score, text."""
        return _checked(self._http.post("/v1/search", json={"query": query, "k": k}))["sources"]

    def close(self) -> None:
        self._http.close()


def connection(owner, model: str | None = None) -> ARCClient:
    """An adapter's client of the service (from its base_url, api_key and timeout fields), made on
    first use and kept in its private `_connection` (the adapters are pydantic models)."""
    if owner._connection is None:
        owner._connection = ARCClient(owner.base_url, owner.api_key, model, owner.timeout)
    return owner._connection


def _checked(response) -> dict:
    """The JSON answer, or ARCServiceError with what the service said (either error shape)."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code < 400:
        return body
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    message = error.get("message") or body.get("detail") or response.text or "no detail"
    raise ARCServiceError(response.status_code, str(message), error.get("param"))
