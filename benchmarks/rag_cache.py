"""The cache of compressed documents, measured as RAG traffic meets it: a first question about a
document (compressed now), then a second question about the same document (read from the cache),
through the OpenAI chat route on loopback, embedded SmolLM2 pair (untrained encoder: speed does not
depend on training). Also the time to refuse a request too long for the decoder (six documents of
~7.3k tokens), which is answered from token counts before any compression.

    OMP_NUM_THREADS=1 python benchmarks/rag_cache.py [--tokens 2048 7600] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import httpx
import torch

from arc_encoder import ARCModel
from arc_encoder.loading import quiet_transformers
from arc_encoder.serving.app import create_app
from arc_encoder.serving.background import BackgroundServer
from arc_encoder.serving.schemas import ServeLimits

NAME = "bench"
PARAGRAPH = (
    "In {year} the harbour of the town of {town} was rebuilt after a storm destroyed {n} boats. The engineer "
    "in charge, a woman called {name}, designed a breakwater of granite blocks that still stands today, and "
    "the fishing fleet grew to {m} vessels within a decade. "
)
TOWNS = ["Aberly", "Brisk", "Corrin", "Dunmore", "Elsby", "Farrow", "Gwent", "Hollin"]
NAMES = ["Ada Morn", "Bea Lott", "Cleo Rand", "Dora Fisk", "Eva Hale", "Fay Wynn", "Gia Holt", "Ivy Penn"]


def document(tokenizer, n_tokens: int, seed: int) -> str:
    """A text of about n_tokens decoder tokens, different for every seed (so never cached before)."""
    parts, i = [f"Record {seed}. "], 0
    while len(tokenizer("".join(parts))["input_ids"]) < n_tokens:
        k = seed * 1000 + i
        parts.append(
            PARAGRAPH.format(year=1700 + k % 300, town=TOWNS[k % 8], n=k % 97, name=NAMES[(k // 8) % 8], m=20 + k % 180)
        )
        i += 1
    return "".join(parts)


def ask(base: str, doc: str, question: str, new_tokens: int) -> tuple[float, dict]:
    body = {
        "model": NAME,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": new_tokens,
        "temperature": 0,
        "documents": [doc],
    }
    started = time.perf_counter()
    r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=600)
    elapsed = time.perf_counter() - started
    r.raise_for_status()
    return elapsed, r.json()["arc"]


def refusal(base: str, tokenizer) -> tuple[float, int, str]:
    docs = [document(tokenizer, 7300, 900 + i) for i in range(6)]
    body = {"model": NAME, "messages": [{"role": "user", "content": "q?"}], "max_tokens": 8, "documents": docs}
    started = time.perf_counter()
    r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=600)
    return time.perf_counter() - started, r.status_code, r.json()["error"]["message"]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--tokens", type=int, nargs="+", default=[2048, 7600], help="document lengths (decoder tokens; <= 32 chunks)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="documents per length (medians)")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    quiet_transformers()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ARCModel.from_config("smollm2-arc4").eval()
    # no EOS: every answer has exactly --new-tokens tokens, so the two questions cost the same to decode
    model.decoders[0].generation_config.eos_token_id = None
    model.decoder_tokenizers[0].eos_token_id = None
    tokenizer = model.decoder_tokenizers[0]
    limits = ServeLimits(max_chars=400_000, max_new_tokens=args.new_tokens)
    with (
        tempfile.TemporaryDirectory() as store,
        BackgroundServer(create_app(model, store, limits=limits, model_name=NAME)) as server,
    ):
        ask(server.url, "A warm-up document.", "Why?", args.new_tokens)
        print(f"{args.new_tokens} new tokens, {args.threads} torch thread(s), median of {args.repeats} documents")
        print("| document tokens | first question (compressed now) | second question (cached) | second / first |")
        print("|---|---|---|---|")
        for n in args.tokens:
            firsts, seconds = [], []
            for seed in range(args.repeats):
                doc = document(tokenizer, n, seed * 10 + n)
                first, arc1 = ask(server.url, doc, "Who designed the breakwater?", args.new_tokens)
                second, arc2 = ask(server.url, doc, "How many vessels did the fleet grow to?", args.new_tokens)
                assert arc1["cache"] == {"hits": 0, "misses": 1} and arc2["cache"] == {"hits": 1, "misses": 0}
                firsts.append(first)
                seconds.append(second)
            f, s = statistics.median(firsts), statistics.median(seconds)
            print(f"| {n:,} | {f:.2f} s | {s:.2f} s | {s / f:.0%} |")
        elapsed, status, message = refusal(server.url, tokenizer)
        print(f"six ~7.3k-token documents (too long for the decoder): HTTP {status} in {elapsed:.2f} s: {message}")
        print(httpx.get(f"{server.url}/metrics").text.split("# HELP arc_pending_jobs")[0])


if __name__ == "__main__":
    main()
