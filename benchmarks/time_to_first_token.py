"""Encoder throughput and time to first token: ARC4 / ARC8 vs the open-book prompt.

Speed only (an untrained projector is as fast as a trained one). For each document length the
same text is given raw (open-book) or compressed (ARC: compression time included), and one token
is generated.

    python benchmarks/time_to_first_token.py --lengths 512 2048 8192 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from arc_encoder import ARCModel, Doc
from arc_encoder.loading import quiet_transformers

PROSE = Path(__file__).resolve().parents[2] / "shared" / "data" / "prose" / "wiki.txt"


def document_of(tokenizer, n_tokens: int) -> str:
    """A prose text of exactly n decoder tokens."""
    text = PROSE.read_text(encoding="utf-8") if PROSE.exists() else "The river flows to the sea. " * 5000
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n_tokens]
    return tokenizer.decode(ids)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--chunk-tokens", type=int, default=None, help="compress long documents in parallel chunks of this many tokens"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    quiet_transformers()
    torch.manual_seed(0)
    models = {f: ARCModel.from_config(f"smollm2-arc{f}").eval() for f in (4, 8)}
    for m in models.values():  # default: one segment per document (the quadratic case)
        m.config.chunk_tokens = args.chunk_tokens or m.encoder.hf_config.max_position_embeddings
    tokenizer = models[4].decoder_tokenizers[0]
    question = "\nQuestion: What is this text about?\nAnswer:"
    rows = []
    for n in args.lengths:
        doc = document_of(tokenizer, n)
        enc_tokens = len(models[4].encoder_tokenizer(doc, add_special_tokens=False)["input_ids"])
        row = {"doc_tokens": n}
        with torch.no_grad():
            row["encoder_tok_per_s"] = enc_tokens / timed(lambda: models[4].compress([doc]), args.repeats)
            row["open_ttft_s"] = timed(
                lambda: models[4].generate([f"Document: {doc}{question}"], max_new_tokens=1), args.repeats
            )
            for f, m in models.items():
                row[f"arc{f}_ttft_s"] = timed(
                    lambda: m.generate(["Document: ", Doc(doc), question], max_new_tokens=1), args.repeats
                )
                row[f"arc{f}_speedup"] = row["open_ttft_s"] / row[f"arc{f}_ttft_s"]
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    print(
        "\n| document tokens | encoder tok/s | open-book TTFT | ARC4 TTFT | ARC8 TTFT | ARC4 speed-up | ARC8 speed-up |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['doc_tokens']:,} | {r['encoder_tok_per_s']:,.0f} | {r['open_ttft_s']:.2f} s | "
            f"{r['arc4_ttft_s']:.2f} s | {r['arc8_ttft_s']:.2f} s | {r['arc4_speedup']:.2f}x | "
            f"{r['arc8_speedup']:.2f}x |"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
