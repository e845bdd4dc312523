"""Shared by the indexing and serving tests: a small JSONL corpus (the saved model is in conftest)."""

import contextlib
import json

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Paris is the capital of France and its largest city.",
    "Compressed vectors replace token embeddings in a frozen language model.",
    "Numbers like 1887 and 1889 appear in history texts about towers and bridges.",
    "The author of the story wrote the book in a small house by the sea.",
]
UNIQUE = [
    "zebra",
    "volcano",
    "saxophone",
    "glacier",
    "lighthouse",
    "cactus",
    "harpsichord",
    "tornado",
    "penguin",
    "meteor",
    "quartz",
    "walrus",
]


def corpus_docs(n: int = 12) -> list[tuple[str, str]]:
    """n documents of 1-3 sentences (so 1 to several chunks of 16 tokens), each with a word of its own."""
    docs = []
    for i in range(n):
        body = " ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(1 + i % 3))
        docs.append((f"doc-{i}", f"{body} The {UNIQUE[i % len(UNIQUE)]} is mentioned here."))
    return docs


def write_corpus(path, docs) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for doc_id, text in docs:
            f.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    return str(path)


@contextlib.contextmanager
def live_server(app):
    """Run an app on a free port of 127.0.0.1 in a thread; yields (host, port)."""
    from arc_encoder.serving.background import BackgroundServer

    with BackgroundServer(app) as server:
        yield server.address
