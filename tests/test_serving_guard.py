"""The service refuses a request without the key, or with too large a body, before reading it:
checked on a real server on 127.0.0.1 with raw sockets (chunked uploads have no Content-Length)."""

import socket
import time

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from _serving_helpers import live_server  # noqa: E402
from arc_encoder.serving.app import create_app  # noqa: E402
from arc_encoder.serving.schemas import ServeLimits  # noqa: E402

LIMIT = 100_000


@pytest.fixture
def server(saved_model, tmp_path):
    """(host, port) of a running service with API key 's3cret' and a 100 kB body limit."""
    _, model = saved_model
    app = create_app(model, tmp_path / "store", api_key="s3cret", limits=ServeLimits(max_request_bytes=LIMIT))
    with live_server(app) as address:
        yield address


def chunked_upload(address, headers: str, chunks: int, chunk_bytes: int = 16_384):
    """Send request headers, then up to `chunks` chunks, stopping as soon as the server answers.
    Returns (status line, chunks sent before the answer)."""
    with socket.create_connection(address, timeout=10) as s:
        s.sendall(
            f"POST /v1/compress HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\n{headers}\r\n".encode()
        )
        sent = 0
        s.setblocking(False)
        for sent in range(chunks + 1):
            try:
                answer = s.recv(4096)
                if answer:
                    return answer.split(b"\r\n", 1)[0].decode(), sent
            except BlockingIOError:
                pass
            if sent == chunks:
                break
            try:
                s.sendall(f"{chunk_bytes:x}\r\n".encode() + b"a" * chunk_bytes + b"\r\n")
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.01)  # give the server the chance to answer early
        s.settimeout(10)
        try:
            s.sendall(b"0\r\n\r\n")  # the end of the body: a server that read it all answers now
        except (BrokenPipeError, ConnectionResetError):
            pass
        return s.recv(4096).split(b"\r\n", 1)[0].decode(), sent


def test_no_key_is_refused_before_any_of_the_body_is_sent(server):
    status, sent = chunked_upload(server, "", chunks=200)  # would be 3.3 MB
    assert status.endswith("401 Unauthorized") and sent <= 1


def test_a_chunked_body_over_the_limit_stops_being_read_at_the_limit(server):
    status, sent = chunked_upload(server, "Authorization: Bearer s3cret\r\n", chunks=200)
    assert status.endswith("413 Request Entity Too Large"), status
    assert sent * 16_384 < 3 * LIMIT  # answered near the limit, not after 3.3 MB


def test_a_declared_content_length_over_the_limit_is_refused_from_the_headers(server):
    with socket.create_connection(server, timeout=10) as s:
        s.sendall(
            b"POST /v1/compress HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
            b"Content-Type: application/json\r\nContent-Length: 250000000\r\n\r\n"
        )
        assert s.recv(4096).split(b"\r\n", 1)[0].endswith(b"413 Request Entity Too Large")
