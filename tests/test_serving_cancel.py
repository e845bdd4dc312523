"""A request whose client leaves while its documents are being compressed stops at the next encoder
call (one chunk at a time here), frees the worker for the next request, and leaves nothing half
compressed in the cache."""

import json
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")

from _serving_helpers import SENTENCES, live_server  # noqa: E402
from arc_encoder.serving.app import create_app  # noqa: E402
from arc_encoder.serving.cache import DocumentCache  # noqa: E402
from arc_encoder.serving.documents import RequestDoc  # noqa: E402
from arc_encoder.serving.refusals import ClientError  # noqa: E402
from arc_encoder.serving.worker import BatchingWorker, CompressJob, DecodeParams, GenerateJob, Resources  # noqa: E402
from arc_encoder.storage.indexing import open_store  # noqa: E402
from conftest import build_tiny_arc  # noqa: E402

TEXT = " ".join(SENTENCES * 3)  # about 15 chunks of 16 tokens


@pytest.fixture
def model(tiny_models):
    model = build_tiny_arc(tiny_models, seed=8, chunk_tokens=16).eval()
    assert len(model.chunks_of(TEXT, 16)) >= 10
    return model


def encoder_hook(model, on_call) -> list[int]:
    """Record the encoder's calls (segments per call) and run on_call(number of calls so far) after each."""
    calls: list[int] = []
    encode = model.encode_segments

    def counted(segments, decoder):
        out = encode(segments, decoder)
        calls.append(len(segments))
        on_call(len(calls))
        return out

    model.encode_segments = counted
    return calls


@pytest.mark.parametrize("kind", ["generate", "compress"])
def test_compression_stops_at_the_next_chunk_once_the_client_has_gone(model, tmp_path, kind):
    cache = DocumentCache(64 << 20)
    params = DecodeParams(max_new_tokens=2)
    if kind == "generate":
        job = GenerateJob(lambda res: (["Document: ", RequestDoc(TEXT, "documents[0]"), "\nAnswer:"], None), params)
    else:
        job = CompressJob([TEXT], ["texts[0]"])
    calls = encoder_hook(model, lambda n: n == 2 and job.abandoned.set())  # the client leaves during chunk 2

    def open_resources():
        store, settings = open_store(tmp_path / "store", model, chunk_tokens=16)
        return Resources(model, store, settings, compress_batch=1, cache=cache)

    worker = BatchingWorker(open_resources, window_s=0.0)
    worker.start()
    try:
        worker.submit(job)
        error = job.future.exception(timeout=60)
        assert isinstance(error, ClientError) and error.status == 499
        assert calls == [1, 1]  # the third chunk never reached the encoder
        assert worker.abandoned == 1 and cache.stats().entries == 0  # nothing half compressed kept
        # the worker is free: the next request is answered, its document compressed whole
        calls.clear()
        text = "The walrus sleeps on the ice, far from the town."
        following = worker.submit(CompressJob([text]))
        assert following.result(timeout=60)[0].n_vectors > 0 and sum(calls) == len(model.chunks_of(text, 16))
    finally:
        worker.stop()


def post_and_hang_up(address, path: str, body: dict, hang_up: threading.Event) -> None:
    """Send a whole request on a raw socket, then close it (without reading) once hang_up is set."""
    raw = json.dumps(body).encode()
    with socket.create_connection(address, timeout=30) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(raw)}\r\n\r\n".encode()
            + raw
        )
        hang_up.wait(30)


def test_a_client_that_leaves_mid_compression_does_not_delay_the_next_request(model, tmp_path):
    import httpx

    hang_up = threading.Event()
    slow = 1.0  # seconds per encoder call: the whole document would take ~15 s

    def on_call(n):
        if n == 1:
            hang_up.set()  # the client closes its connection while chunk 1 is compressed
        time.sleep(slow)

    calls = encoder_hook(model, on_call)
    app = create_app(model, tmp_path / "store", model_name="tiny", compress_batch=1, window_s=0.0)
    with live_server(app) as address:
        url = f"http://{address[0]}:{address[1]}/v1/chat/completions"
        body = {"model": "tiny", "messages": [{"role": "user", "content": "q?"}], "max_tokens": 2}
        started = time.perf_counter()
        assert httpx.post(url, json=body, timeout=60).status_code == 200
        alone = time.perf_counter() - started  # the next request's own time, on this (busy) machine
        client = threading.Thread(
            target=post_and_hang_up,
            args=(address, "/v1/chat/completions", {**body, "documents": [TEXT]}, hang_up),
        )
        client.start()
        assert hang_up.wait(30)
        client.join(30)
        started = time.perf_counter()
        r = httpx.post(url, json=body, timeout=60)
        waited = time.perf_counter() - started
        assert r.status_code == 200, r.text
        # the hang-up is seen within a poll (0.1 s): the chunk being compressed then is the last,
        # and the next request waits for it alone, not for the ~13 chunks left
        assert len(calls) <= 3, calls
        assert waited < alone + 2 * slow, (waited, alone)
        assert httpx.get(f"http://{address[0]}:{address[1]}/health").json()["abandoned_jobs"] == 1
