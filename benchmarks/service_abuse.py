"""What a hostile client costs `arc-encoder serve` (loopback only, tiny random model).

1. A 250 MB chunked upload (no Content-Length) without the API key: the server's peak memory
   (VmHWM) before and after, and how much was sent before the answer.
2. 24 clients send long generations (max_new_tokens 500) and hang up after 0.3 s; then one small
   /v1/compress: its latency, and the server's count of abandoned jobs.

    python benchmarks/service_abuse.py
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test import HOST, build_tiny_model, free_port, start_server, wait_healthy  # noqa: E402

KEY = "s3cret"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def chunked_upload_without_key(port: int, total_mb: int = 250) -> tuple[str, int]:
    """Send a chunked body of up to total_mb, 1 MB per chunk, until the server answers."""
    chunk = b"a" * (1 << 20)
    with socket.create_connection((HOST, port), timeout=30) as s:
        s.sendall(
            b"POST /v1/compress HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        s.setblocking(False)
        sent = 0
        while sent < total_mb:
            try:
                answer = s.recv(4096)
                if answer:
                    return answer.split(b"\r\n", 1)[0].decode(), sent
            except BlockingIOError:
                pass
            try:
                s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += 1
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
        s.settimeout(30)
        try:
            s.sendall(b"0\r\n\r\n")
        except OSError:
            pass
        return s.recv(4096).split(b"\r\n", 1)[0].decode(), sent


def abandoned_generation(port: int, hang_up_after: float = 0.3) -> None:
    body = json.dumps(
        {
            "prompt": [
                {"text": "Document: "},
                {"document": "The river runs past the old mill. " * 20},
                {"text": "\nQuestion: what runs past the mill?\nAnswer:"},
            ],
            "max_new_tokens": 500,
        }
    ).encode()
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(
            f"POST /v1/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        time.sleep(hang_up_after)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_model(tmp)
        port, log_path = free_port(), tmp / "server.log"
        server = start_server(model, tmp / "store", port, 8, log_path, ("--api-key", KEY))
        headers = {"Authorization": f"Bearer {KEY}"}
        try:
            with httpx.Client(base_url=f"http://{HOST}:{port}", headers=headers) as client:
                wait_healthy(client, server, log_path, time.monotonic() + 120)
                before = peak_rss_mb(server.pid)
                status, sent = chunked_upload_without_key(port)
                after = peak_rss_mb(server.pid)
                print(
                    json.dumps(
                        {
                            "test": "250 MB chunked upload, no key",
                            "answer": status,
                            "mb_sent_before_answer": sent,
                            "peak_rss_mb_before": round(before),
                            "peak_rss_mb_after": round(after),
                        }
                    )
                )
                clients = [threading.Thread(target=abandoned_generation, args=(port,)) for _ in range(24)]
                for c in clients:
                    c.start()
                for c in clients:
                    c.join()
                start = time.perf_counter()
                r = client.post("/v1/compress", json={"texts": ["a small text"]}, timeout=120)
                latency = time.perf_counter() - start
                time.sleep(1.0)
                health = client.get("/health").json()
                print(
                    json.dumps(
                        {
                            "test": "small compress behind 24 abandoned generations",
                            "status": r.status_code,
                            "latency_s": round(latency, 3),
                            "abandoned_jobs": health.get("abandoned_jobs"),
                            "pending_jobs": health.get("pending_jobs"),
                        }
                    )
                )
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
