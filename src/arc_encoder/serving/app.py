"""HTTP service: compress, generate with compressed / stored documents, manage and query a store.

    GET    /health                 liveness, model fingerprint, batching counters (no key needed)
    POST   /v1/compress            texts -> bottleneck vectors per chunk (+ counts)
    POST   /v1/generate            prompt parts {text | document | stored_id | vectors} -> text
    POST   /v1/documents           compress and store documents (replace flag)
    GET    /v1/documents/{id}      a stored document: text, chunks (vectors with ?vectors=float|base64)
    DELETE /v1/documents/{id}
    POST   /v1/search              BM25 top-k stored chunks (ids, scores, texts)
    POST   /v1/ask                 BM25 top-k stored chunks -> answer + sources
    GET    /metrics                Prometheus counters: the cache of compressed documents, the worker
    GET    /v1/models, POST /v1/chat/completions, POST /v1/completions
                                   OpenAI-compatible, with compressed documents (openai_routes.py);
                                   `model`: MODEL or MODEL:DECODER (model_ids.py)
    GET    /docs                   OpenAPI documentation

Every request that touches the model or the store becomes a job for one worker thread
(worker.py), which batches generation and compression requests that arrive together. The store is
on disk: a restarted service finds every document it had. Documents sent as text (to compress,
generate from, chat about or store) go through one cache of compressed documents (cache.py): a
document asked about again is not compressed again.
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import PlainTextResponse

from ..model.arc import Compressed
from ..storage.indexing import open_store
from .ask import ask_prompt, retrieve
from .cache import DEFAULT_CACHE_MB, DocumentCache
from .decoding import DecodeParams, decode_params
from .documents import RequestDoc, cache_counts
from .errors import install_error_handlers
from .guard import RequestGuard
from .metrics import CONTENT_TYPE, metrics_text
from .openai_routes import add_openai_routes
from .schemas import (
    AddDocumentsRequest,
    AddDocumentsResponse,
    AskRequest,
    AskResponse,
    ChunkOut,
    CompressRequest,
    CompressResponse,
    DocumentOut,
    GenerateRequest,
    GenerateResponse,
    SearchRequest,
    SearchResponse,
    ServeLimits,
    vectors_from_json,
    vectors_to_json,
)
from .stored import stored_document
from .worker import (
    BatchingWorker,
    CallJob,
    ClientError,
    CompressJob,
    GenerateJob,
    Resources,
    run_job,
)

log = logging.getLogger(__name__)

DEFAULT_NEW_TOKENS = 64  # the native routes' default max_new_tokens (schemas.DecodeOptions)


def create_app(
    model,
    store_path: str | os.PathLike,
    *,
    decoder: int | str | None = None,
    chunk_tokens: int | None = None,
    api_key: str | None = None,
    limits: ServeLimits = ServeLimits(),
    window_s: float = 0.01,
    max_batch: int = 8,
    backend=None,
    backend_name: str = "hf",
    model_name: str = "arc-encoder",
    cache_mb: float = DEFAULT_CACHE_MB,
    cache: DocumentCache | None = None,
    compress_batch: int = 16,
) -> FastAPI:
    """The service for one model and one store (created if missing), for one decoder: `decoder`
    (an index or a name; default the store's, else the first) must be the one the store was built
    for, as every route reads and writes the store's vectors (model_ids.py for the OpenAI ids).

    backend: None (generate with the model's HF decoder) or a factory called in the worker thread
    with (model, decoder index), returning generate(prompts, decoder, DecodeParams, on_token) ->
    list[Generation]. model_name: the id the OpenAI-compatible routes answer to (openai_routes.py).
    cache_mb: the bound of the cache of compressed documents (0: none kept); `cache` gives one
    instead (several services may share one: its keys hold the model, decoder and chunking).
    compress_batch: chunks per encoder call; a request whose client has left stops being
    compressed at the next call, so smaller batches free the worker sooner (GPUs want larger ones).
    """
    cache = cache if cache is not None else DocumentCache.of_megabytes(cache_mb)
    store_path = Path(store_path)
    bottleneck = model.vector_dim
    info: dict = {}

    def open_resources() -> Resources:
        store, settings = open_store(store_path, model, decoder, chunk_tokens)
        info.update(
            fingerprint=store.fingerprint,
            decoder=settings.decoder,
            decoder_name=settings.decoder_name,
            chunk_tokens=settings.chunk_tokens,
        )
        generate = backend(model, settings.decoder) if backend is not None else None
        return Resources(model, store, settings, generate, compress_batch, cache)

    worker = BatchingWorker(open_resources, window_s=window_s, max_batch=max_batch, max_pending=limits.max_pending)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        try:
            yield
        finally:
            worker.stop()

    app = FastAPI(
        title="arc-encoder",
        lifespan=lifespan,
        description="ARC-Encoder context compression: compressed documents for a frozen LLM.",
    )
    app.state.worker = worker

    install_error_handlers(app)

    # the key and the body size are checked before the body is read (guard.py)
    app.add_middleware(RequestGuard, max_bytes=limits.max_request_bytes, api_key=api_key or None)

    checks = Checks(limits)
    api = APIRouter(prefix="/v1")

    @app.get("/health")
    async def health():
        return {
            "status": "ok" if worker.alive else "down",
            "backend": backend_name,
            **info,
            "pending_jobs": worker.pending,
            "abandoned_jobs": worker.abandoned,
            "batches": worker.batches,
            "batched_jobs": worker.batched_jobs,
            "largest_batch": worker.largest_batch,
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return PlainTextResponse(metrics_text(cache, worker), media_type=CONTENT_TYPE)

    add_generation_routes(api, worker, checks, info, bottleneck)
    add_store_routes(api, worker, checks)
    app.include_router(api)
    add_openai_routes(app, worker, checks, model, model_name, info)
    return app


class Checks:
    """The server's limits on one request (ServeLimits), as errors naming what is too large."""

    def __init__(self, limits: ServeLimits):
        self.limits = limits

    def too_large(self, what: str, n: int, limit: int, param: str | None = None) -> ClientError:
        return ClientError(413, f"{what}: {n} exceeds the server's limit of {limit}", param)

    def text(self, field: str, text: str) -> None:
        """`field`: the request field holding the text, as errors name it (`messages[0].content`)."""
        if len(text) > self.limits.max_chars:
            raise self.too_large(f"{field} length in characters", len(text), self.limits.max_chars, field)

    def decode_params(self, body) -> DecodeParams:
        """A native request's decoding parameters (DecodeOptions): its default and status code."""
        cap = self.limits.max_new_tokens
        options = (body.temperature, body.top_p, body.stop, body.seed)
        return decode_params(body.max_new_tokens, "max_new_tokens", DEFAULT_NEW_TOKENS, cap, 422, *options)


def add_generation_routes(api: APIRouter, worker: BatchingWorker, checks: Checks, info: dict, bottleneck: int) -> None:
    """/v1/compress, /v1/generate, /v1/search, /v1/ask."""
    limits = checks.limits

    @api.post("/compress", response_model=CompressResponse)
    async def compress(request: Request, body: CompressRequest):
        if len(body.texts) > limits.max_texts:
            raise checks.too_large("number of texts", len(body.texts), limits.max_texts, "texts")
        for i, t in enumerate(body.texts):
            checks.text(f"texts[{i}]", t)
        fields = [f"texts[{i}]" for i in range(len(body.texts))]
        job = CompressJob(body.texts, fields)
        results: list[Compressed] = await run_job(worker, job, request)
        return {
            "decoder": info["decoder"],
            "decoder_name": info["decoder_name"],
            "dim": bottleneck,
            "cache": job.cache,
            "results": [
                {
                    "chunks": [vectors_to_json(c, body.encoding) for c in r.chunks],
                    "n_vectors": r.n_vectors,
                    "document_tokens": r.document_tokens,
                    "compression_ratio": r.compression_ratio,
                }
                for r in results
            ],
        }

    @api.post("/generate", response_model=GenerateResponse)
    async def generate(request: Request, body: GenerateRequest):
        if len(body.prompt) > limits.max_parts:
            raise checks.too_large("number of prompt parts", len(body.prompt), limits.max_parts, "prompt")
        params = checks.decode_params(body)
        # Each part is text, a Doc, or a function of the worker's resources (store reads happen there).
        parts, n_vectors = [], 0
        for i, part in enumerate(body.prompt):
            if part.text is not None:
                checks.text(f"prompt[{i}].text", part.text)
                parts.append(part.text)
            elif part.document is not None:
                checks.text(f"prompt[{i}].document", part.document)
                parts.append(RequestDoc(part.document, f"prompt[{i}].document"))
            elif part.stored_id is not None:
                parts.append(lambda res, doc_id=part.stored_id, i=i: _stored(res, doc_id, f"prompt[{i}].stored_id"))
            else:
                n_vectors += sum(c.rows() for c in part.vectors.chunks)
                if n_vectors > limits.max_vectors:
                    raise checks.too_large("number of vectors", n_vectors, limits.max_vectors, f"prompt[{i}].vectors")
                try:
                    chunks = [vectors_from_json(c, bottleneck) for c in part.vectors.chunks]
                except ValueError as e:
                    raise ClientError(422, f"prompt[{i}].vectors: {e}", f"prompt[{i}].vectors") from None
                tokens = part.vectors.document_tokens
                parts.append(lambda res, chunks=chunks, tokens=tokens: Compressed(chunks, res.settings.decoder, tokens))

        def build(res: Resources):
            return [p(res) if callable(p) else p for p in parts], None

        job = GenerateJob(build, params, "prompt")
        out, _ = await run_job(worker, job, request)
        return {**_generation(out), "cache": job.cache}

    @api.post("/search", response_model=SearchResponse)
    async def search(request: Request, body: SearchRequest):
        checks.text("query", body.query)
        if body.k > limits.max_k:
            raise ClientError(422, f"k={body.k} exceeds the server's cap of {limits.max_k}", "k")
        found = await run_job(worker, CallJob(lambda res: retrieve(res.store, res.bm25, body.query, body.k)), request)
        return {"sources": [vars(s) for s in found]}

    @api.post("/ask", response_model=AskResponse)
    async def ask(request: Request, body: AskRequest):
        checks.text("question", body.question)
        if body.k > limits.max_k:
            raise ClientError(422, f"k={body.k} exceeds the server's cap of {limits.max_k}", "k")
        params = checks.decode_params(body)

        def build(res: Resources):
            sources = retrieve(res.store, res.bm25, body.question, body.k)
            return ask_prompt(res.store, sources, body.question, res.settings.decoder), sources

        out, sources = await run_job(worker, GenerateJob(build, params, "question"), request)
        return {
            "answer": out.text.strip(),
            "prompt_length": out.prompt_length,
            "compressed_vectors": out.compressed_vectors,
            "sources": [vars(s) for s in sources],
        }


def add_store_routes(api: APIRouter, worker: BatchingWorker, checks: Checks) -> None:
    """/v1/documents: add, read, delete."""
    limits = checks.limits

    @api.post("/documents", response_model=AddDocumentsResponse)
    async def add_documents(request: Request, body: AddDocumentsRequest):
        if len(body.documents) > limits.max_texts:
            raise checks.too_large("number of documents", len(body.documents), limits.max_texts, "documents")
        ids = [d.id for d in body.documents]
        if len(set(ids)) != len(ids):
            raise ClientError(422, "document ids must be unique within a request", "documents")
        for i, d in enumerate(body.documents):
            checks.text(f"documents[{i}].text", d.text)
            if not d.text.strip():
                raise ClientError(422, f"document {d.id!r} has an empty text", f"documents[{i}].text")

        def add(res: Resources):
            if not body.replace:
                present = [i for i in ids if res.store.has(i)]
                if present:
                    raise ClientError(409, f'already stored: {present} (set "replace": true to overwrite)')
            docs = enumerate(body.documents)
            planned = [res.documents.plan(d.text, f"documents[{i}].text", job.abandoned) for i, d in docs]
            records = res.documents.compress(planned)
            if any(r is None for r in records):  # the client left while they were being compressed
                raise ClientError(499, "the client closed the request")
            res.store.add_many(((d.id, d.text, r) for d, r in zip(body.documents, records)), replace=body.replace)
            added = [
                {
                    "id": d.id,
                    "chunks": len(r),
                    "vectors": sum(c.vectors.shape[0] for c in r),
                    "tokens": sum(c.n_tokens for c in r),
                }
                for d, r in zip(body.documents, records)
            ]
            return {"added": added, "cache": cache_counts(planned)}

        job = CallJob(add)
        return await run_job(worker, job, request)

    @api.get("/documents/{doc_id:path}", response_model=DocumentOut)
    async def get_document(request: Request, doc_id: str, vectors: str = "none"):
        if vectors not in ("none", "float", "base64"):
            raise ClientError(422, "query parameter 'vectors' must be none, float or base64", "vectors")

        def read(res: Resources):
            try:
                chunks, text = res.store.chunks(doc_id), res.store.text(doc_id)
            except KeyError:
                raise ClientError(404, f"document {doc_id!r} is not in the store") from None
            arrays = res.store.chunk_vectors([c.id for c in chunks]) if vectors != "none" else None
            out = []
            for k, c in enumerate(chunks):
                item = ChunkOut(index=c.index, start=c.start, end=c.end, n_vectors=c.n_vectors, n_tokens=c.n_tokens)
                if arrays is not None:
                    item.vectors = vectors_to_json(torch.from_numpy(arrays[k]), vectors)
                out.append(item)
            return DocumentOut(id=doc_id, text=text, chunks=out)

        return await run_job(worker, CallJob(read), request)

    @api.delete("/documents/{doc_id:path}")
    async def delete_document(request: Request, doc_id: str):
        def delete(res: Resources):
            try:
                res.store.delete(doc_id)
            except KeyError:
                raise ClientError(404, f"document {doc_id!r} is not in the store") from None
            return {"deleted": doc_id}

        return await run_job(worker, CallJob(delete), request)


def _stored(res: Resources, doc_id: str, param: str) -> Compressed:
    try:
        return stored_document(res.store, doc_id, res.settings.decoder)
    except KeyError:
        raise ClientError(404, f"stored_id {doc_id!r} is not in the store", param) from None


def _generation(out) -> dict:
    return {
        "text": out.text,
        "token_ids": out.token_ids,
        "prompt_length": out.prompt_length,
        "document_tokens": out.document_tokens,
        "compressed_vectors": out.compressed_vectors,
        "compression_ratio": out.compression_ratio,
    }
