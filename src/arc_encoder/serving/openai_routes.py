"""OpenAI-compatible routes, with compressed documents: what `openai`, LangChain and LlamaIndex speak.

    GET  /v1/models               the ids this server answers to: MODEL and MODEL:DECODER (model_ids.py)
    POST /v1/chat/completions     messages (the decoder's chat template), stream as server-sent events
    POST /v1/completions          a raw prompt

Documents travel as extension fields of the request body (the openai client's `extra_body`):

    "document_ids": ["id", ...]             stored documents' vectors (the encoder does not run)
    "chunk_ids":    [12, 7, ...]             stored chunks' vectors, as /v1/search returns them
    "documents":    ["text", ...]            compressed now, chunked like stored documents
    "retrieve":     {"query": "...", "k": 3} the store's BM25 top-k chunks for the query

They go, in that order, each as `"Document: " [vectors] "\n"`, just before the text of the last user
message (chat: the chat layout chat fine-tuning trains on, prompt.py) or before the prompt
(completions). The standard response fields stay standard (`usage.prompt_tokens` counts the decoder
positions actually used, vectors included); the extension field `arc` says what compression did:
document tokens, vectors, ratio, positions saved, cache hits and misses, sources.

These routes share the worker, the batching, the key and the limits of the native ones (app.py);
their errors take OpenAI's shape (errors.py).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..model.arc import Generation
from ..model.detokenize import IncrementalDecoder
from ..prompt import chat_message, chat_prompt, documents_before
from .ask import retrieve
from .decoding import DecodeParams, decode_params
from .documents import RequestDoc
from .model_ids import check_model_id, served_ids
from .openai_schemas import ChatCompletionRequest, ChatMessage, CompletionRequest, OpenAIRequest
from .stored import stored_chunks, stored_document
from .worker import DISCONNECT_POLL_S, BatchingWorker, ClientError, GenerateJob, Resources, run_job

COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions


# ----------------------------------------------------------------------------- prompts


def chat_request_prompt(tokenizer, messages: list[ChatMessage], documents: list) -> list:
    """Prompt parts of a chat request: the chat layout of prompt.py, the documents in the last user
    message (`"Document: " [vectors] "\n"` each) ahead of its text."""
    rendered: list[dict] = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages
    ]
    if documents:
        users = [i for i, m in enumerate(rendered) if m["role"] == "user"]
        if not users:
            raise ClientError(400, "documents go before the last user message, and there is none", "messages")
        last = rendered[users[-1]]
        last["content"] = chat_message([], documents, last["content"])
    try:
        return chat_prompt(tokenizer, rendered)
    except ValueError as e:
        raise ClientError(400, str(e), "messages") from None


def gather_documents(res: Resources, body: OpenAIRequest) -> tuple[list, list[dict]]:
    """The request's documents as prompt parts (in the worker thread: the store lives there), and
    the retrieved sources."""
    decoder = res.settings.decoder
    documents: list = []
    for i, doc_id in enumerate(body.document_ids or []):
        try:
            documents.append(stored_document(res.store, doc_id, decoder))
        except KeyError:
            raise ClientError(404, f"document {doc_id!r} is not in the store", f"document_ids[{i}]") from None
    if body.chunk_ids:
        try:
            documents.append(stored_chunks(res.store, body.chunk_ids, decoder))
        except KeyError as e:
            raise ClientError(404, str(e.args[0]), "chunk_ids") from None
    documents += [RequestDoc(text, f"documents[{i}]") for i, text in enumerate(body.documents or [])]
    sources = []
    if body.retrieve is not None:
        found = retrieve(res.store, res.bm25, body.retrieve.query, body.retrieve.k)
        if found:
            documents.append(stored_chunks(res.store, [s.chunk_id for s in found], decoder))
        sources = [vars(s) for s in found]
    return documents, sources


# ----------------------------------------------------------------------------- responses


class TextStream:
    """Turns the pieces of a generation's text, as they come, into deltas that never show a stop
    string or text after one: the concatenated deltas are the final text."""

    def __init__(self, stop: list[str]):
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=1) - 1  # a stop string may be forming
        self.text = ""
        self.sent = ""

    def update(self, piece: str) -> str:
        self.text += piece
        # a stop string never starts in text already sent (it would have been found whole first)
        cuts = [at for s in self.stop if (at := self.text.find(s, len(self.sent))) >= 0]
        return self._emit(self.text[: min(cuts)] if cuts else self.text[: len(self.text) - self.hold])

    def finish(self, final: str) -> str:
        return self._emit(final)

    def _emit(self, ready: str) -> str:
        if len(ready) <= len(self.sent) or not ready.startswith(self.sent):
            return ""
        delta, self.sent = ready[len(self.sent) :], ready
        return delta


def finish_reason(out: Generation, params: DecodeParams, tokenizer) -> str:
    full = tokenizer.decode(out.token_ids, skip_special_tokens=True)
    hit_stop = any(s in full for s in params.stop)
    return "length" if len(out.token_ids) >= params.max_new_tokens and not hit_stop else "stop"


def usage(out: Generation) -> dict:
    new = len(out.token_ids)
    return {"prompt_tokens": out.prompt_length, "completion_tokens": new, "total_tokens": out.prompt_length + new}


def compression(out: Generation, sources: list[dict], cache: dict | None) -> dict:
    """The `arc` extension field. Positions saved: document tokens minus the vectors that replaced
    them (the one special vector per chunk not counted). cache: of the `documents` sent as text,
    how many the cache of compressed documents had (hits) and how many were compressed (misses)."""
    return {
        "document_tokens": out.document_tokens,
        "compressed_vectors": out.compressed_vectors,
        "compression_ratio": out.compression_ratio,
        "positions_saved": out.document_tokens - out.compressed_vectors,
        "cache": cache or {"hits": 0, "misses": 0},
        "sources": sources,
    }


class ChatShape:
    object, chunk_object, prefix = "chat.completion", "chat.completion.chunk", "chatcmpl"

    @staticmethod
    def choice(text: str, finish: str) -> dict:
        return {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish,
        }

    @staticmethod
    def delta(text: str | None, finish: str | None, first: bool = False) -> dict:
        delta = {} if text is None else {"content": text}
        if first:
            delta["role"] = "assistant"
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


class CompletionShape:
    object, chunk_object, prefix = "text_completion", "text_completion", "cmpl"

    @staticmethod
    def choice(text: str, finish: str) -> dict:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

    @staticmethod
    def delta(text: str | None, finish: str | None, first: bool = False) -> dict:
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}


# ----------------------------------------------------------------------------- routes


def add_openai_routes(app, worker: BatchingWorker, checks, model, model_name: str, info: dict) -> None:
    """Mount the OpenAI-compatible routes on `app` (see module doc)."""
    api = APIRouter(prefix="/v1")
    created = int(time.time())

    def card(model_id: str) -> dict:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "arc-encoder"}

    def check(model_id: str) -> None:
        check_model_id(model, model_name, info["decoder"], model_id)

    @api.get("/models")
    async def list_models():
        return {"object": "list", "data": [card(i) for i in served_ids(model_name, info["decoder_name"])]}

    @api.get("/models/{model_id:path}")
    async def get_model(model_id: str):
        check(model_id)
        return card(model_id)

    def tokenizer():
        return model.decoder_tokenizers[info["decoder"]]

    def checked(body: OpenAIRequest) -> DecodeParams:
        """The request's decoding parameters, every field this server refuses named."""
        check(body.model)
        for field, why in body.unsupported():
            raise ClientError(400, why, field)
        limits = checks.limits
        if body.documents is not None and len(body.documents) > limits.max_texts:
            raise ClientError(
                413, f"{len(body.documents)} documents exceed the limit of {limits.max_texts}", "documents"
            )
        for name in ("documents", "document_ids", "chunk_ids"):
            values = getattr(body, name)
            if values is not None and not values:
                raise ClientError(400, f"{name} is an empty list (leave it out for no documents)", name)
        for i, text in enumerate(body.documents or []):
            if not text.strip():
                raise ClientError(400, "the document is empty", f"documents[{i}]")
            if len(text) > limits.max_chars:
                raise ClientError(
                    413, f"{len(text)} characters exceed the server's limit of {limits.max_chars}", f"documents[{i}]"
                )
        if body.retrieve is not None and body.retrieve.k > limits.max_k:
            raise ClientError(400, f"k={body.retrieve.k} exceeds the server's cap of {limits.max_k}", "retrieve.k")
        cap = limits.max_new_tokens
        default = COMPLETION_DEFAULT_TOKENS if isinstance(body, CompletionRequest) else cap
        field = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
        options = (body.temperature, body.top_p, body.stop_strings(), body.seed)
        return decode_params(body.new_tokens(), field, default, cap, 400, *options)

    @api.post("/chat/completions")
    async def chat_completions(request: Request, body: ChatCompletionRequest):
        params = checked(body)
        for i, m in enumerate(body.messages):
            checks.text(f"messages[{i}].content", m.text())

        def build(res: Resources):
            documents, sources = gather_documents(res, body)
            return chat_request_prompt(tokenizer(), body.messages, documents), sources

        return await answer(request, body, GenerateJob(build, params, "messages"), ChatShape)

    @api.post("/completions")
    async def completions(request: Request, body: CompletionRequest):
        params = checked(body)
        checks.text("prompt", body.prompt_text())

        def build(res: Resources):
            documents, sources = gather_documents(res, body)
            return documents_before(documents, body.prompt_text()), sources

        return await answer(request, body, GenerateJob(build, params, "prompt"), CompletionShape)

    async def answer(request: Request, body: OpenAIRequest, job: GenerateJob, shape):
        ident = f"{shape.prefix}-{uuid.uuid4().hex[:24]}"
        stamp = {"id": ident, "created": int(time.time()), "model": body.model}
        if not body.stream:
            out, sources = await run_job(worker, job, request)
            return {
                **stamp,
                "object": shape.object,
                "choices": [shape.choice(out.text, finish_reason(out, job.params, tokenizer()))],
                "usage": usage(out),
                "arc": compression(out, sources, job.cache),
            }
        return await stream(request, body, job, shape, stamp)

    async def stream(request: Request, body: OpenAIRequest, job: GenerateJob, shape, stamp: dict):
        """Server-sent events: a chunk per new piece of text, a last chunk with the finish reason
        (and the `arc` field), a usage chunk if asked, then `[DONE]`. Errors before the first token
        (a missing document, a prompt too long) are ordinary error responses."""
        loop = asyncio.get_running_loop()
        texts: asyncio.Queue = asyncio.Queue()  # pieces of text, then `done`
        done = object()
        pieces = IncrementalDecoder(tokenizer())  # decodes only the newest tokens, whole characters

        def on_token(ids: list[int]) -> None:  # in the worker thread
            piece = pieces.add(ids)
            if piece:
                loop.call_soon_threadsafe(texts.put_nowait, piece)

        job.on_token = on_token
        future = worker.submit(job)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(texts.put_nowait, done))

        def abandon():
            job.abandoned.set()
            future.cancel()

        first = None
        while first is None:  # until the first token (or the end), watching for a client that left
            try:
                first = await asyncio.wait_for(texts.get(), DISCONNECT_POLL_S)
            except TimeoutError:
                if await request.is_disconnected():
                    abandon()
                    raise ClientError(499, "the client closed the request") from None
        if first is done and future.exception() is not None:
            raise future.exception()

        def event(choice: dict | None, **extra) -> str:
            chunk = {**stamp, "object": shape.chunk_object, "choices": [] if choice is None else [choice], **extra}
            return f"data: {_json(chunk)}\n\n"

        async def events():
            text = TextStream(list(job.params.stop))
            item, finished = first, False
            try:
                yield event(shape.delta("", None, first=True))
                while item is not done:
                    delta = text.update(item)
                    if delta:
                        yield event(shape.delta(delta, None))
                    item = await texts.get()
                out, sources = future.result()
                tail = text.finish(out.text)
                if tail:
                    yield event(shape.delta(tail, None))
                yield event(
                    shape.delta(None, finish_reason(out, job.params, tokenizer())),
                    arc=compression(out, sources, job.cache),
                )
                if body.stream_options is not None and body.stream_options.include_usage:
                    yield event(None, usage=usage(out))
                yield "data: [DONE]\n\n"
                finished = True
            finally:
                if not finished:  # the client went away mid-stream
                    abandon()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    app.include_router(api)


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
