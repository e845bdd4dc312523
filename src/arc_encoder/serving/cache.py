"""A cache of compressed documents: documents compress once, and questions about them are cheap.

RAG traffic asks many questions of the same documents; compressing a document costs several times
what answering a question about it does (the decoder reads a quarter of the positions). The cache
keeps each compressed document's chunk records under a SHA-256 of its text and of everything that
shapes its vectors: the model's weights (its fingerprint: another version is another key), its
config (pooling, pooling factor, memory tokens, special tokens, ...), the decoder whose projector
made the vectors, and the chunk size. A key can only ever name one set of vectors, so one cache
may serve several models or stores.

It is bounded in bytes (the vectors it holds, float32) and drops the least recently used document
when full; a document larger than the whole cache is not kept. Counters (hits, misses, evictions,
bytes) are for /metrics. Thread-safe: the worker thread reads and writes, /metrics reads.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass

from ..storage.store import ChunkRecord

# A laptop's share of memory: about 65 documents of 7.6k tokens for smollm2-arc4 (3.9 MB each, measured).
DEFAULT_CACHE_MB = 256
CHUNK_OVERHEAD_BYTES = 128  # a record's Python objects beside its vectors, roughly


def vectors_identity(fingerprint: str, config: dict, decoder: int, decoder_name: str, chunk_tokens: int) -> str:
    """What, beside the text, decides a document's vectors, as one string (a part of every key)."""
    shaping = {
        "fingerprint": fingerprint,
        "config": config,
        "decoder": decoder,
        "decoder_name": decoder_name,
        "chunk_tokens": chunk_tokens,
    }
    return json.dumps(shaping, sort_keys=True, default=str)


def cache_key(identity: str, text: str) -> str:
    digest = hashlib.sha256(identity.encode())
    digest.update(b"\0")
    digest.update(text.encode("utf-8"))
    return digest.hexdigest()


def records_bytes(records: list[ChunkRecord]) -> int:
    return sum(r.vectors.numel() * r.vectors.element_size() + CHUNK_OVERHEAD_BYTES for r in records)


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    capacity_bytes: int


class DocumentCache:
    """LRU of compressed documents (their chunk records), at most `max_bytes` of vectors."""

    def __init__(self, max_bytes: int):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"the cache size must be an integer number of bytes >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[list[ChunkRecord], int]] = OrderedDict()  # key -> (records, bytes)
        self._lock = threading.Lock()
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @classmethod
    def of_megabytes(cls, megabytes: float) -> DocumentCache:
        if not megabytes >= 0:  # NaN too
            raise ValueError(f"the cache size must be >= 0 MB, got {megabytes!r}")
        return cls(int(megabytes * 2**20))

    def get(self, key: str) -> list[ChunkRecord] | None:
        """The records under `key` (now the most recently used), or None; counted as a hit or miss."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: str, records: list[ChunkRecord]) -> None:
        """Keep the records, dropping the least recently used documents to stay within the bound."""
        size = records_bytes(records)
        with self._lock:
            if key in self._entries:
                self._bytes -= self._entries.pop(key)[1]
            if size > self.max_bytes:
                return
            while self._bytes + size > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped
                self.evictions += 1
            self._entries[key] = (records, size)
            self._bytes += size

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self.hits, self.misses, self.evictions, len(self._entries), self._bytes, self.max_bytes)
