"""One thread owns the model and the store; requests reach it through a queue and are batched.

Why one thread: the model is not thread-safe, and SQLite connections belong to the thread that
opened them. Why batching: a decoder step costs about the same for 1 or 8 sequences, so answering
requests that arrive close together in one `generate` call multiplies throughput.

The worker takes the first waiting job; if it can be batched (generation, compression), it waits up
to `window_s` for more jobs of the same kind and parameters, up to `max_batch`, and runs them as one
call. Jobs that do not fit the batch keep their order and run next. Generation jobs with a seeded
sampler run alone, so that the seed alone decides their output.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..prompt import Doc
from .ask import open_retrieval
from .cache import DocumentCache
from .decoding import DecodeParams
from .documents import DocumentCompressor, Planned, as_compressed, cache_counts
from .refusals import Busy, ClientError

log = logging.getLogger(__name__)

# How often a request waiting for the model checks that its client is still there.
DISCONNECT_POLL_S = 0.1


class Resources:
    """What jobs may use, all owned by the worker thread: model, store, retrieval index, generator."""

    def __init__(
        self,
        model,
        store,
        settings,
        generate: Callable | None = None,
        compress_batch: int = 16,
        cache: DocumentCache | None = None,
    ):
        self.model = model
        self.store = store
        self.settings = settings  # IndexSettings: decoder and chunk size of the store's vectors
        # request documents, chunked and compressed as the store's are, through the cache
        self.documents = DocumentCompressor(model, settings, compress_batch, cache, store.fingerprint)
        # generate(prompts, decoder, params, on_token) -> list[Generation]; the HF decoder unless a
        # backend says. on_token(i, ids) after each new token of prompt i; True ends that prompt.
        self.generate = generate or self._generate_hf
        self._bm25 = None

    def _generate_hf(self, prompts, decoder: int, params: DecodeParams, on_token=None):
        return self.model.generate(
            prompts,
            decoder=decoder,
            max_new_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=list(params.stop),
            seed=params.seed,
            batch_size=len(prompts),
            on_token=on_token,
        )

    @property
    def bm25(self):
        if self._bm25 is None:
            self._bm25 = open_retrieval(self.store)
        return self._bm25

    def plan_prompt(
        self, prompt: list, params: DecodeParams, param: str, abandoned: threading.Event | None = None
    ) -> list[Planned]:
        """The prompt's documents, planned; a ClientError (400, naming `param`, OpenAI's code
        context_length_exceeded) if the prompt and its new tokens would not fit the decoder's
        positions, counted from token counts before anything is compressed. `abandoned`: the
        request's event (its documents stop being compressed once it is set)."""
        planned: dict[str, Planned] = {}
        for part in prompt:
            if isinstance(part, Doc) and part.text not in planned:
                planned[part.text] = self.documents.plan(part.text, getattr(part, "param", None), abandoned)
        decoder, new_tokens = self.settings.decoder, params.max_new_tokens
        try:
            self.model.check_prompt(prompt, decoder, new_tokens, doc_chunks=lambda d: planned[d.text].chunk_lengths())
        except ValueError as e:
            raise ClientError(400, str(e), param, "context_length_exceeded") from None
        return list(planned.values())

    def close(self) -> None:
        self.store.close()


# Every job has a future (its answer) and `abandoned`, set by the service when its client has gone:
# a waiting job is then skipped, and a generation in progress stops at its next token.
@dataclass
class GenerateJob:
    # build(resources) -> (prompt parts: str | Doc | Compressed, extra data returned with the result)
    build: Callable[[Resources], tuple[list, Any]]
    params: DecodeParams
    param: str = "prompt"  # the request field named when the prompt is too long for the decoder
    future: Future = field(default_factory=Future)
    abandoned: threading.Event = field(default_factory=threading.Event)
    cache: dict | None = None  # set by the worker: how many of its documents the cache had (cache_counts)
    # called in the worker thread with the new token ids so far, after every token (streaming)
    on_token: Callable[[list[int]], None] | None = None

    def watch(self, ids: list[int]) -> bool:
        """After each new token: stream it, and say whether to stop (the client has gone)."""
        if self.on_token is not None:
            self.on_token(ids)
        return self.abandoned.is_set()


@dataclass
class CompressJob:
    texts: list[str]
    fields: list[str] | None = None  # the request field of each text, for errors
    future: Future = field(default_factory=Future)
    abandoned: threading.Event = field(default_factory=threading.Event)
    cache: dict | None = None  # as GenerateJob.cache


@dataclass
class CallJob:
    fn: Callable[[Resources], Any]  # runs alone: store reads and writes, anything else
    future: Future = field(default_factory=Future)
    abandoned: threading.Event = field(default_factory=threading.Event)


_STOP = object()


class BatchingWorker:
    def __init__(
        self, open_resources: Callable[[], Resources], window_s: float = 0.01, max_batch: int = 8, max_pending: int = 64
    ):
        if max_batch < 1 or max_pending < 1:
            raise ValueError("max_batch and max_pending must be >= 1")
        if window_s < 0:
            raise ValueError("window_s must be >= 0")
        self._open_resources = open_resources
        self.window_s = window_s
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self.batches = 0  # model calls made for batchable jobs
        self.batched_jobs = 0  # jobs answered by those calls
        self.largest_batch = 0
        self.abandoned = 0  # jobs whose client went away: dropped before running, or stopped early

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the thread and wait until it has opened the model's resources (errors re-raised)."""
        self._thread = threading.Thread(target=self._run, name="arc-model-worker", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    def stop(self, timeout: float = 60.0) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def submit(self, job) -> Future:
        """Queue a job; `Busy` (503) when `max_pending` jobs already wait."""
        if not self.alive:
            raise RuntimeError("the model worker is not running")
        pending = self._queue.qsize()
        if pending >= self.max_pending:
            raise Busy(pending)
        self._queue.put(job)
        return job.future

    # ----------------------------------------------------------------- the loop
    def _run(self) -> None:
        try:
            resources = self._open_resources()
        except BaseException as e:  # reported to start()
            self._startup_error = e
            self._ready.set()
            return
        self._ready.set()
        backlog: deque = deque()  # jobs taken from the queue that did not fit a batch, in order
        try:
            while True:
                job = backlog.popleft() if backlog else self._queue.get()
                if job is _STOP:
                    break
                batch = self._collect(job, backlog)
                if isinstance(job, GenerateJob):
                    self._run_generate(resources, batch)
                elif isinstance(job, CompressJob):
                    self._run_compress(resources, batch)
                elif self._start(job):
                    _settle(job.future, lambda: job.fn(resources), running=True)
        finally:
            for job in list(backlog) + _drain(self._queue):
                if job is not _STOP and job.future.set_running_or_notify_cancel():
                    job.future.set_exception(RuntimeError("the server is shutting down"))
            resources.close()

    def _collect(self, first, backlog: deque) -> list:
        """first plus compatible jobs already waiting or arriving within the window."""
        if not _batch_key(first):
            return [first]
        key = _batch_key(first)
        batch = [first]
        for job in list(backlog):
            if len(batch) == self.max_batch:
                return batch
            if job is not _STOP and _batch_key(job) == key:
                backlog.remove(job)
                batch.append(job)
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP and _batch_key(job) == key:
                batch.append(job)
            else:
                backlog.append(job)
                if job is _STOP:
                    break
        return batch

    def _start(self, job) -> bool:
        """Mark a job running; False (and the job dropped) if it was cancelled or its client has gone."""
        if job.abandoned.is_set():
            self.abandoned += 1
            job.future.cancel()
        return job.future.set_running_or_notify_cancel()

    def _count(self, n: int) -> None:
        self.batches += 1
        self.batched_jobs += n
        self.largest_batch = max(self.largest_batch, n)

    def _run_generate(self, res: Resources, batch: list[GenerateJob]) -> None:
        prepared = []  # (job, prompt, extra, planned documents)
        for job in batch:
            if not self._start(job):
                continue
            try:
                prompt, extra = job.build(res)
                # refused here, before any compression, if it cannot fit the decoder
                prepared.append((job, prompt, extra, res.plan_prompt(prompt, job.params, job.param, job.abandoned)))
            except Exception as e:
                _set_error(job.future, e)
        if not prepared:
            return
        params, decoder = batch[0].params, res.settings.decoder

        def run(items) -> list:
            """Compress the items' documents (shared encoder batches, chunked like stored ones),
            then generate for the items whose clients are still there: [(item, Generation)]."""
            planned = [d for *_, docs in items for d in docs]
            records = res.documents.compress(planned) if planned else []
            compressed = {d.text: as_compressed(r, decoder) for d, r in zip(planned, records) if r is not None}
            live = []
            for item in items:
                if all(d.text in compressed for d in item[3]):
                    live.append(item)
                else:  # its client left while its documents were being compressed
                    self._gone(item[0], item[3])
            if not live:
                return []
            prompts = [[compressed[p.text] if isinstance(p, Doc) else p for p in prompt] for _, prompt, *_ in live]
            return list(zip(live, res.generate(prompts, decoder, params, lambda i, ids: live[i][0].watch(ids))))

        self._count(len(prepared))
        try:
            answered = run(prepared)
        except Exception as e:
            if len(prepared) == 1:
                _set_error(prepared[0][0].future, e)
                return
            # One bad prompt must not fail its batch-mates: answer them one by one.
            answered = []
            for item in prepared:
                if item[0].future.done():
                    continue
                try:
                    answered += run([item])
                except Exception as e:
                    _set_error(item[0].future, e)
        for (job, _, extra, docs), out in answered:
            job.cache = cache_counts(docs)
            self.abandoned += job.abandoned.is_set()  # stopped at its next token
            job.future.set_result((out, extra))

    def _run_compress(self, res: Resources, batch: list[CompressJob]) -> None:
        planned = []  # (job, its planned documents): every job refused before any compression
        for job in batch:
            if not self._start(job):
                continue
            try:
                fields = job.fields or [None] * len(job.texts)
                planned.append((job, [res.documents.plan(t, f, job.abandoned) for t, f in zip(job.texts, fields)]))
            except Exception as e:
                _set_error(job.future, e)
        if not planned:
            return
        self._count(len(planned))
        decoder = res.settings.decoder

        def finish(job: CompressJob, docs: list[Planned], records: list) -> None:
            if any(r is None for r in records):  # its client left while they were being compressed
                self._gone(job, docs)
                return
            job.cache = cache_counts(docs)
            job.future.set_result([as_compressed(r, decoder) for r in records])

        try:
            out = iter(res.documents.compress([d for _, docs in planned for d in docs]))
            results = [[next(out) for _ in docs] for _, docs in planned]
        except Exception:
            for job, docs in planned:
                try:
                    finish(job, docs, res.documents.compress(docs))
                except Exception as e:
                    _set_error(job.future, e)
            return
        for (job, docs), records in zip(planned, results):
            finish(job, docs, records)

    def _gone(self, job, docs: list[Planned]) -> None:
        """End a running job whose client has gone (nobody reads the answer)."""
        self.abandoned += 1
        job.cache = cache_counts(docs)
        job.future.set_exception(ClientError(499, "the client closed the request"))


async def run_job(worker: BatchingWorker, job, request) -> object:
    """The job's answer; if the client goes away first, the job is abandoned (dropped if it
    has not started, a generation stops at its next token) and nobody waits for it."""
    answer = asyncio.wrap_future(worker.submit(job))
    while True:
        done, _ = await asyncio.wait({answer}, timeout=DISCONNECT_POLL_S)
        if done:
            return answer.result()
        if await request.is_disconnected():
            job.abandoned.set()
            job.future.cancel()
            answer.cancel()
            raise ClientError(499, "the client closed the request")


def _batch_key(job):
    """Jobs with equal keys can share one model call; None: the job runs alone."""
    if isinstance(job, GenerateJob):
        return ("generate", job.params) if job.params.batchable else None
    if isinstance(job, CompressJob):
        return ("compress",)
    return None


def _settle(future: Future, fn: Callable[[], Any], running: bool = False) -> None:
    if not running and not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn())
    except Exception as e:
        _set_error(future, e)


def _set_error(future: Future, error: Exception) -> None:
    if not isinstance(error, (ClientError, ValueError, TypeError, LookupError)):  # not the client's fault: log it
        log.error("request failed", exc_info=error)
    future.set_exception(error)


def _drain(q: queue.Queue) -> list:
    items = []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items
