"""Streaming through the `openai` client against the native /v1/generate: time to first chunk and
tokens per second, same prompt and document, loopback, embedded SmolLM2 pair (untrained encoder:
speed does not depend on training).

    python benchmarks/openai_stream.py [--new-tokens 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import httpx
import torch
from openai import OpenAI

from arc_encoder import ARCModel
from arc_encoder.loading import quiet_transformers
from arc_encoder.serving.app import create_app
from arc_encoder.serving.background import BackgroundServer
from arc_encoder.serving.schemas import ServeLimits

DOCUMENT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
    "after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889. "
    "Locally nicknamed La dame de fer, it was constructed as the centrepiece of the 1889 World's Fair, "
    "and to crown the centennial anniversary of the French Revolution. "
) * 2
PROMPT = "Question: Who designed the tower, and when was it built?\nAnswer:"


def native(base: str, n: int) -> dict:
    body = {
        "prompt": [{"text": "Document: "}, {"document": DOCUMENT}, {"text": "\n" + PROMPT}],
        "max_new_tokens": n,
        "temperature": 0,
    }
    t = time.perf_counter()
    r = httpx.post(f"{base}/v1/generate", json=body, timeout=300).json()
    total = time.perf_counter() - t
    return {"first": total, "total": total, "tokens": len(r["token_ids"])}


def openai_stream(client: OpenAI, n: int) -> dict:
    t = time.perf_counter()
    first, tokens = None, 0
    stream = client.completions.create(
        model="bench",
        prompt=PROMPT,
        max_tokens=n,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"documents": [DOCUMENT]},
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].text:
            first = time.perf_counter() - t
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return {"first": first, "total": time.perf_counter() - t, "tokens": tokens}


def openai_plain(client: OpenAI, n: int) -> dict:
    t = time.perf_counter()
    r = client.completions.create(
        model="bench", prompt=PROMPT, max_tokens=n, temperature=0, extra_body={"documents": [DOCUMENT]}
    )
    total = time.perf_counter() - t
    return {"first": total, "total": total, "tokens": r.usage.completion_tokens}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    quiet_transformers()
    torch.manual_seed(0)
    model = ARCModel.from_config("smollm2-arc4").eval()
    # no EOS: every request generates exactly --new-tokens
    model.decoders[0].generation_config.eos_token_id = None
    model.decoder_tokenizers[0].eos_token_id = None
    limits = ServeLimits(max_new_tokens=args.new_tokens)
    with (
        tempfile.TemporaryDirectory() as store,
        BackgroundServer(create_app(model, store, limits=limits, model_name="bench")) as server,
    ):
        client = OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=300)
        runs = {
            "native /v1/generate": lambda: native(server.url, args.new_tokens),
            "openai client, completions": lambda: openai_plain(client, args.new_tokens),
            "openai client, completions stream": lambda: openai_stream(client, args.new_tokens),
        }
        print(
            f"{args.new_tokens} new tokens, median of {args.repeats} after a warm-up, {torch.get_num_threads()} threads"
        )
        print("| route | time to first text (s) | total (s) | tokens/s after the first |")
        print("|---|---|---|---|")
        for name, run in runs.items():
            run()
            results = [run() for _ in range(args.repeats)]
            first = statistics.median(r["first"] for r in results)
            total = statistics.median(r["total"] for r in results)
            tokens = results[0]["tokens"]
            rate = (tokens - 1) / (total - first) if total > first else float("nan")
            print(
                f"| {name} | {first:.2f} | {total:.2f} | {rate:.1f} |"
                if total > first
                else f"| {name} | {first:.2f} (whole answer) | {total:.2f} | {tokens / total:.1f} overall |"
            )


if __name__ == "__main__":
    main()
