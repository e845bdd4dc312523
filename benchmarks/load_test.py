"""Bounded load test of `arc-encoder serve`, on loopback only.

Starts the server in a subprocess on a free 127.0.0.1 port with a fresh store, adds a few
documents, then runs N concurrent clients that each send a fixed number of requests (a mix of
/v1/generate with a document to compress, /v1/generate with a stored document, /v1/ask and
/v1/compress). Everything is bounded: a per-request timeout and an overall time limit, after which
unfinished requests count as lost. The server is stopped at the end, whatever happens.

    python benchmarks/load_test.py --tiny                      # tiny random model: the serving overhead
    python benchmarks/load_test.py --model smollm2-arc4        # the shipped model (the default)
    python benchmarks/load_test.py --model runs/my-model --clients 64 --requests 8

Prints: requests planned / sent / answered, errors, lost, latency p50/p90/p99, throughput, and the
server's batching counters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

HOST = "127.0.0.1"  # loopback only, by design
REPO_SRC = Path(__file__).resolve().parents[1] / "src"
DOCUMENTS = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, named after the engineer Gustave Eiffel.",
    "The Amazon rainforest covers much of the Amazon basin of South America, mostly in Brazil.",
    "Mount Everest, on the border of Nepal and China, is the highest mountain above sea level.",
    "The Great Barrier Reef, off the coast of Queensland, is the largest coral reef system in the world.",
    "Marie Curie was the first person to win Nobel Prizes in two different sciences, physics and chemistry.",
    "The Nile flows north through eleven countries and empties into the Mediterranean Sea in Egypt.",
]
QUESTIONS = [
    "Who is the tower named after?",
    "Which country holds most of the forest?",
    "What is the highest mountain?",
    "Where is the coral reef?",
    "Who won two Nobel Prizes?",
    "Where does the Nile end?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def build_tiny_model(folder: Path) -> str:
    """A tiny random ARC model (2-block Llama encoder and decoder, SmolLM2's tokenizer), saved."""
    import torch
    import transformers

    from arc_encoder import ARCConfig, ARCModel
    from arc_encoder.loading import quiet_transformers
    from arc_encoder.model.registry import resolve_model

    quiet_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    base = folder / "tiny-llama"
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    arc = ARCModel.from_config(
        ARCConfig(
            backbone=str(base),
            drop_layers=0,
            decoders=[str(base)],
            bottleneck=32,
            pooling_factors=[4],
            chunk_tokens=128,
        )
    )
    arc.save_pretrained(folder / "arc")
    return str(folder / "arc")


def start_server(
    model: str, store: Path, port: int, max_batch: int, log_path: Path, extra: tuple[str, ...] = ()
) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_SRC), os.environ.get("PYTHONPATH", "")]))
    env.pop("ARC_ENCODER_API_KEY", None)
    command = [
        sys.executable,
        "-m",
        "arc_encoder",
        "serve",
        "--model",
        model,
        "--store",
        str(store),
        "--host",
        HOST,
        "--port",
        str(port),
        "--device",
        "cpu",
        "--max-batch",
        str(max_batch),
        "--log-level",
        "warning",
        *extra,
    ]
    return subprocess.Popen(command, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)


def wait_healthy(client: httpx.Client, server: subprocess.Popen, log_path: Path, deadline: float) -> dict:
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            r = client.get("/health", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError("the server did not become healthy in time")


def request_for(i: int, max_new_tokens: int) -> tuple[str, str, dict]:
    """(kind, path, body) of request number i: the four kinds in turn."""
    doc, question = DOCUMENTS[i % len(DOCUMENTS)], QUESTIONS[i % len(QUESTIONS)]
    kind = ("generate-document", "generate-stored", "ask", "compress")[i % 4]
    if kind == "generate-document":
        body = {"prompt": [{"text": "Document: "}, {"document": doc}, {"text": f"\nQuestion: {question}\nAnswer:"}]}
    elif kind == "generate-stored":
        body = {
            "prompt": [
                {"text": "Document: "},
                {"stored_id": f"doc-{i % len(DOCUMENTS)}"},
                {"text": f"\nQuestion: {question}\nAnswer:"},
            ]
        }
    elif kind == "ask":
        body = {"question": question, "k": 2}
    else:
        return kind, "/v1/compress", {"texts": [doc], "encoding": "base64"}
    body["max_new_tokens"] = max_new_tokens
    return kind, "/v1/ask" if kind == "ask" else "/v1/generate", body


async def run_clients(
    base_url: str, clients: int, requests: int, max_new_tokens: int, request_timeout: float, time_limit: float
) -> dict:
    records: list[dict] = []  # one per request sent
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client_loop(c: int, http: httpx.AsyncClient):
        for r in range(requests):
            kind, path, body = request_for(c * requests + r, max_new_tokens)
            record = {"kind": kind, "status": None, "latency": None, "error": None}
            records.append(record)
            start = time.perf_counter()
            try:
                response = await http.post(path, json=body, timeout=request_timeout)
                record["status"] = response.status_code
                if response.status_code != 200:
                    record["error"] = response.text[:200]
            except httpx.HTTPError as e:
                record["error"] = f"{type(e).__name__}: {e}"
            record["latency"] = time.perf_counter() - start

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=base_url, limits=limits) as http:
        tasks = [asyncio.create_task(client_loop(c, http)) for c in range(clients)]
        done, pending = await asyncio.wait(tasks, timeout=time_limit)
        for t in pending:
            t.cancel()  # the time limit: whatever is unanswered is lost
        await asyncio.gather(*pending, return_exceptions=True)
    wall = time.perf_counter() - started

    planned = clients * requests
    answered = [r for r in records if r["status"] is not None]
    ok = [r for r in answered if r["status"] == 200]
    failed = [r for r in records if r["error"] is not None]
    unanswered = [r for r in records if r["status"] is None and r["error"] is None]  # cut by the limit
    latencies = np.array([r["latency"] for r in ok]) * 1000
    pct = lambda q: float(np.percentile(latencies, q)) if len(latencies) else float("nan")  # noqa: E731
    by_kind = {}
    for kind in sorted({r["kind"] for r in ok}):
        values = np.array([r["latency"] for r in ok if r["kind"] == kind]) * 1000
        by_kind[kind] = {"n": len(values), "p50_ms": round(float(np.percentile(values, 50)), 1)}
    return {
        "clients": clients,
        "requests_per_client": requests,
        "planned": planned,
        "sent": len(records),
        "answered": len(answered),
        "ok": len(ok),
        "errors": len(failed),
        "lost": planned - len(answered),  # never answered: timed out, cut by the time limit, or never sent
        "cut_by_time_limit": len(unanswered) + planned - len(records),
        "latency_ms": {"p50": round(pct(50), 1), "p90": round(pct(90), 1), "p99": round(pct(99), 1)},
        "throughput_rps": round(len(ok) / wall, 2),
        "wall_s": round(wall, 2),
        "by_kind": by_kind,
        "first_errors": [r["error"] for r in failed[:3]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # the shipped model (arc_encoder.loading.DEFAULT_MODEL; this file runs without the package installed)
    parser.add_argument(
        "--model", default="smollm2-arc4", help="saved model or run folder, shipped model, or PRESET-untrained"
    )
    parser.add_argument("--tiny", action="store_true", help="use a tiny random model (serving overhead only)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument("--time-limit", type=float, default=180.0, help="seconds for the load phase")
    parser.add_argument("--startup-timeout", type=float, default=180.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="arc-load-") as tmp:
        tmp = Path(tmp)
        sys.path.insert(0, str(REPO_SRC))
        model = build_tiny_model(tmp) if args.tiny else args.model
        port, log_path = free_port(), tmp / "server.log"
        server = start_server(model, tmp / "store", port, args.max_batch, log_path)
        base_url = f"http://{HOST}:{port}"
        try:
            with httpx.Client(base_url=base_url) as http:
                t0 = time.monotonic()
                wait_healthy(http, server, log_path, t0 + args.startup_timeout)
                startup = time.monotonic() - t0
                docs = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(DOCUMENTS)]
                http.post("/v1/documents", json={"documents": docs}, timeout=args.request_timeout).raise_for_status()
            result = asyncio.run(
                run_clients(
                    base_url, args.clients, args.requests, args.max_new_tokens, args.request_timeout, args.time_limit
                )
            )
            with httpx.Client(base_url=base_url) as http:
                health = http.get("/health", timeout=10).json()
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    result.update(
        model="tiny" if args.tiny else args.model,
        server_startup_s=round(startup, 1),
        server_batches=health["batches"],
        server_batched_jobs=health["batched_jobs"],
        server_largest_batch=health["largest_batch"],
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
