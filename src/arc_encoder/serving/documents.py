"""The documents of requests, compressed the way the store's are: planned first, then compressed.

Planning chunks a document with the store's settings and counts its tokens (the encoder does not
run): a document over the model's max_chunks, or a prompt that would not fit the decoder's
positions (ARCModel.check_prompt), is refused then, naming the request field that holds it, before
any compression. Compression first looks each document up in the cache of compressed documents
(cache.py), then runs the planned chunks of the documents it lacks, all the documents of a batch
of requests in shared encoder batches; a text that appears twice is compressed once. Between two
encoder batches, the chunks of documents whose requests have all gone (their clients left) are
dropped: the worker is free for the next request within one batch (`--compress-batch` chunks).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ..model.arc import Compressed
from ..model.chunking import Chunk
from ..model.compression import compress_chunks, plan_chunks
from ..prompt import Doc
from ..storage.indexing import IndexSettings
from ..storage.store import ChunkRecord
from .cache import DEFAULT_CACHE_MB, DocumentCache, cache_key, vectors_identity
from .refusals import ClientError


@dataclass(frozen=True)
class RequestDoc(Doc):
    """A document of a request (a prompt part), with the request field that holds it, for errors."""

    param: str | None = field(default=None, compare=False)


@dataclass
class Planned:
    """A document chunked as the store's are, before compression."""

    text: str
    param: str | None  # the request field holding the text (`documents[2]`), for errors
    chunks: list[Chunk]
    key: str  # its key in the cache of compressed documents
    abandoned: threading.Event | None = None  # set when the request that sent it has gone
    cached: bool | None = None  # after compression: whether it came from the cache (or a batch-mate)

    def chunk_lengths(self) -> list[int]:
        """Encoder tokens per chunk (what prompt_positions counts vectors from)."""
        return [len(c.encoder_ids) for c in self.chunks]


def as_compressed(records: list[ChunkRecord], decoder: int) -> Compressed:
    """A compressed document's chunks as a prompt part."""
    return Compressed([r.vectors for r in records], decoder, sum(r.n_tokens for r in records))


def cache_counts(docs: list[Planned]) -> dict:
    """The `cache` report of a request: how many of its documents the cache had, how many were compressed."""
    hits = sum(1 for d in docs if d.cached)
    return {"hits": hits, "misses": len(docs) - hits}


class DocumentCompressor:
    """Plans and compresses request documents for one model and one store's settings, through a
    cache (a new one of DEFAULT_CACHE_MB unless given: it may be shared)."""

    def __init__(
        self,
        model,
        settings: IndexSettings,
        batch_size: int = 16,
        cache: DocumentCache | None = None,
        fingerprint: str | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"the compression batch size must be >= 1, got {batch_size}")
        self.model = model
        self.settings = settings
        self.batch_size = batch_size
        self.cache = cache if cache is not None else DocumentCache.of_megabytes(DEFAULT_CACHE_MB)
        self.identity = vectors_identity(
            fingerprint or model.fingerprint(),
            model.config.to_dict(),
            settings.decoder,
            settings.decoder_name,
            settings.chunk_tokens,
        )

    def plan(self, text: str, param: str | None = None, abandoned: threading.Event | None = None) -> Planned:
        """The document's chunks; a ClientError (400) naming `param` for one the model cannot take
        (empty, or more chunks than max_chunks). `abandoned`: set when the request that sent the
        document has gone (its compression then stops)."""
        try:
            chunks = plan_chunks(self.model, text, self.settings.decoder, self.settings.chunk_tokens)
        except (ValueError, TypeError) as e:
            raise ClientError(400, f"{param}: {e}" if param else str(e), param) from None
        return Planned(text, param, chunks, cache_key(self.identity, text), abandoned)

    def compress(self, docs: list[Planned]) -> list[list[ChunkRecord] | None]:
        """Each planned document's chunk records (vectors float32 on the CPU), in the order given:
        from the cache, else compressed (and cached). A text given twice is compressed once; each
        document's `cached` says which it was. A document whose requests have all been abandoned
        stops being compressed at the next encoder batch, and is None here."""
        found: dict[str, list[ChunkRecord]] = {}
        missing: dict[str, list[Planned]] = {}  # key -> the documents of the call with that text
        for d in docs:
            if d.key in missing:
                missing[d.key].append(d)
                continue
            if d.key in found:  # a repeat of a document found: counted as the hit it is
                self.cache.get(d.key)
                d.cached = True
                continue
            records = self.cache.get(d.key)
            d.cached = records is not None
            if records is None:
                missing[d.key] = [d]
            else:
                found[d.key] = records
        encoded = self._encode(missing)
        for key, records in encoded.items():
            self.cache.put(key, records)
            found[key] = records
            for d in missing[key][1:]:  # compressed once, for the first of them
                d.cached = True
                self.cache.get(key)
        return [found.get(d.key) for d in docs]

    def _encode(self, missing: dict[str, list[Planned]]) -> dict[str, list[ChunkRecord]]:
        """Run the encoder on the documents' chunks, in shared batches, until nobody wants them:
        key -> chunk records, for the documents compressed whole."""
        flat = [(key, c) for key, group in missing.items() for c in group[0].chunks]
        if not flat:
            return {}

        def wanted(i: int) -> bool:
            return any(d.abandoned is None or not d.abandoned.is_set() for d in missing[flat[i][0]])

        vectors = compress_chunks(self.model, [c for _, c in flat], self.settings.decoder, self.batch_size, wanted)
        out: dict[str, list[ChunkRecord]] = {}
        for (key, c), v in zip(flat, vectors):
            out.setdefault(key, []).append(
                None if v is None else ChunkRecord(v.float().cpu(), c.n_tokens, c.start, c.end)
            )
        return {key: records for key, records in out.items() if all(r is not None for r in records)}
