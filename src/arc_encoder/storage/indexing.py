"""Index a corpus into a VectorStore: chunk each document, compress the chunks, store the vectors.

The vectors a store keeps are bottleneck vectors made by one decoder's projector, from chunks of a
fixed number of encoder tokens. Both choices are recorded beside the store (arc_index.json) so that
every later writer (a resumed `index`, the HTTP service) chunks and compresses the same way, and a
reader knows which decoder the vectors feed.

Resuming: documents are written in transactions of `write_every` documents. An interruption loses
only the documents of the open transaction; a rerun skips the ids already stored (unless replacing).

PQ stores: product quantization needs a codebook trained on vectors, so a new PQ store is first
indexed into a float32 staging store beside it (`PATH.float32-staging`, resumable like any store),
which is then quantized into PATH and removed. Once PATH exists, new documents go straight into it,
encoded with its codebook.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ..atomic import write_json
from ..model.chunking import Chunk
from ..model.compression import compress_chunks, plan_chunks
from ..records import json_object
from .codecs import make_codec
from .retrieval import BM25Index
from .store import ChunkRecord, StoreStats, VectorStore

SETTINGS_FILE = "arc_index.json"
STAGING_SUFFIX = ".float32-staging"
QUANTIZING_SUFFIX = ".quantizing"


# --------------------------------------------------------------------- settings


@dataclass(frozen=True)
class IndexSettings:
    """How a store's vectors were made: which decoder's projector, chunks of how many tokens."""

    decoder: int
    decoder_name: str
    chunk_tokens: int  # encoder tokens per chunk (the last chunk of a document may be shorter)

    def save(self, folder: Path) -> None:
        write_json(Path(folder) / SETTINGS_FILE, asdict(self))

    @classmethod
    def load(cls, folder: Path) -> IndexSettings | None:
        path = Path(folder) / SETTINGS_FILE
        if not path.is_file():
            return None
        try:
            values = json.loads(path.read_text())
            return cls(int(values["decoder"]), str(values["decoder_name"]), int(values["chunk_tokens"]))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is unreadable: {e}") from e


def resolve_settings(model, decoder: int | str | None = None, chunk_tokens: int | None = None) -> IndexSettings:
    """Settings for a new store: decoder 0 and the model's chunk size (else 256) unless given;
    `decoder` an index or a name (ARCModel.decoder_index)."""
    decoder = model.decoder_index(0 if decoder is None else decoder)
    if chunk_tokens is None:
        chunk_tokens = model.config.chunk_tokens
    if not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be an integer >= 1, got {chunk_tokens!r}")
    limit = model.encoder.hf_config.max_position_embeddings
    if chunk_tokens > limit:
        raise ValueError(f"chunk_tokens={chunk_tokens} exceeds the encoder's {limit} positions")
    return IndexSettings(decoder, model.config.decoders[decoder], chunk_tokens)


def open_store(
    path: str | os.PathLike,
    model,
    decoder: int | str | None = None,
    chunk_tokens: int | None = None,
    codec: str = "float32",
    create: bool = True,
) -> tuple[VectorStore, IndexSettings]:
    """Open the store at path for this model (created if missing and create=True).

    An existing store must come from the same model (fingerprint), and `decoder` (an index or a
    name) / `chunk_tokens`, when given, must match what it was built with.
    """
    path = Path(path)
    if decoder is not None:
        decoder = model.decoder_index(decoder)
    fingerprint = model.fingerprint()
    if not (path / "meta.sqlite").is_file():
        if not create:
            raise FileNotFoundError(f"no vector store at {path}")
        settings = resolve_settings(model, decoder, chunk_tokens)
        store = VectorStore.create(path, fingerprint, model.vector_dim, codec)
        settings.save(path)
        return store, settings
    store = VectorStore.open(path, fingerprint=fingerprint)
    try:
        settings = IndexSettings.load(path)
        if settings is None:
            if len(store):
                raise ValueError(
                    f"store {path} has no {SETTINGS_FILE}: it was not built by arc-encoder "
                    "index, so the decoder and chunk size of its vectors are unknown"
                )
            settings = resolve_settings(model, decoder, chunk_tokens)  # created, then interrupted
            settings.save(path)
        _check_matches(path, settings, model, decoder, chunk_tokens)
    except BaseException:
        store.close()
        raise
    return store, settings


def _check_matches(path, settings: IndexSettings, model, decoder, chunk_tokens) -> None:
    if decoder is not None and decoder != settings.decoder:
        raise ValueError(
            f"store {path} holds vectors for decoder {settings.decoder} "
            f"({settings.decoder_name}), not decoder {decoder} ({model.config.decoders[decoder]})"
        )
    if chunk_tokens is not None and chunk_tokens != settings.chunk_tokens:
        raise ValueError(f"store {path} was chunked at {settings.chunk_tokens} tokens, not {chunk_tokens}")
    model.decoder_index(settings.decoder)


# --------------------------------------------------------------------- corpus


def scan_corpus(path: str | os.PathLike) -> int:
    """Validate a JSONL corpus (one {"id": ..., "text": ...} per line) and count its documents."""
    return sum(1 for _ in read_corpus(path))


def read_corpus(path: str | os.PathLike) -> Iterator[tuple[str, str]]:
    """(id, text) per non-blank line; errors name the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} does not exist")
    seen: set[str] = set()
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}, line {line_no}"
            row = json_object(line, where)
            for field in ("id", "text"):
                if field not in row:
                    raise ValueError(f"{where}: missing field {field!r}")
            doc_id, text = row["id"], row["text"]
            if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
                raise ValueError(f"{where}: field 'id' must be a string or an integer, got {type(doc_id).__name__}")
            doc_id = str(doc_id)
            if not doc_id:
                raise ValueError(f"{where}: field 'id' is empty")
            if not isinstance(text, str):
                raise ValueError(f"{where}: field 'text' must be a string, got {type(text).__name__}")
            if not text.strip():
                raise ValueError(f"{where}: field 'text' is empty (document {doc_id!r})")
            if doc_id in seen:
                raise ValueError(f"{where}: document id {doc_id!r} appears twice in the corpus")
            seen.add(doc_id)
            yield doc_id, text


# --------------------------------------------------------------------- indexing


@dataclass
class IndexReport:
    store: str
    codec: str
    documents_in_corpus: int
    documents_added: int
    documents_skipped: int  # already stored (resume)
    chunks_added: int
    vectors_added: int
    seconds: float
    stats: StoreStats

    def lines(self) -> list[str]:
        s = self.stats
        return [
            f"store {self.store} ({self.codec})",
            f"corpus: {self.documents_in_corpus} documents; added {self.documents_added} "
            f"({self.chunks_added} chunks, {self.vectors_added} vectors), skipped {self.documents_skipped} "
            f"already stored, in {self.seconds:.1f}s",
            f"store: {s.n_docs} documents, {s.n_chunks} chunks, {s.n_vectors} vectors, {s.n_tokens} decoder tokens",
            f"bytes per token: vectors {s.bytes_per_token:.2f} (shard files {s.vector_bytes} B"
            + (f" + codebook {s.codebook_bytes} B" if s.codebook_bytes else "")
            + f"), raw UTF-8 text {s.text_bytes_per_token:.2f}",
        ]


def index_corpus(
    model,
    corpus: str | os.PathLike,
    store_path: str | os.PathLike,
    codec: str = "float32",
    batch_size: int = 16,
    decoder: int | str | None = None,
    chunk_tokens: int | None = None,
    replace: bool = False,
    write_every: int = 256,
    progress: bool = True,
    documents: Iterable[tuple[str, str]] | None = None,
) -> IndexReport:
    """Compress every document of a JSONL corpus into the store at store_path (see module doc).

    `documents` overrides reading the corpus file (already-validated (id, text) pairs).
    """
    started = time.perf_counter()
    store_path = Path(store_path)
    make_codec(codec, model.vector_dim)  # an unknown codec or a PQ rate the dim forbids fails here
    if write_every < 1:
        raise ValueError("write_every must be >= 1")
    if documents is None:
        n_corpus = scan_corpus(corpus)  # every line checked before any compute is spent
        documents = read_corpus(corpus)
    else:
        documents = list(documents)
        n_corpus = len(documents)

    is_pq = codec.startswith("pq")
    staging = store_path.with_name(store_path.name + STAGING_SUFFIX)
    target_exists = (store_path / "meta.sqlite").is_file()
    if target_exists and staging.exists():
        shutil.rmtree(staging)  # left by a run that died right after its quantized store was in place
    if is_pq and not target_exists:
        store, settings = open_store(staging, model, decoder, chunk_tokens, "float32")
    else:
        store, settings = open_store(store_path, model, decoder, chunk_tokens, codec)
        if store.codec.name != codec:
            store.close()
            raise ValueError(f"store {store_path} uses codec {store.codec.name}, not {codec}")

    counts = {"added": 0, "skipped": 0, "chunks": 0, "vectors": 0}
    try:
        store.add_many(
            _compressed_items(model, store, settings, documents, n_corpus, batch_size, replace, counts, progress),
            replace=replace,
            batch_docs=write_every,
        )
        if is_pq and not target_exists:
            store = _quantize_staging(store, staging, store_path, codec, settings)
        _build_retrieval_index(store)
        stats = store.stats()
    finally:
        store.close()
    return IndexReport(
        str(store_path),
        codec,
        n_corpus,
        counts["added"],
        counts["skipped"],
        counts["chunks"],
        counts["vectors"],
        time.perf_counter() - started,
        stats,
    )


def _compressed_items(model, store, settings, documents, n_corpus, batch_size, replace, counts, progress):
    """(id, text, chunks) for each document still to store, compressed batch_size chunks at a time."""
    from tqdm.auto import tqdm

    bar = tqdm(total=n_corpus, unit="doc", desc="indexing", disable=not progress)
    pending: list[tuple[str, str, list[Chunk]]] = []
    n_pending_chunks = 0

    def flush():
        flat = [p for _, _, plans in pending for p in plans]
        vectors = iter(compress_chunks(model, flat, settings.decoder, batch_size))
        for doc_id, text, plans in pending:
            chunks = [ChunkRecord(next(vectors).float().cpu(), p.n_tokens, p.start, p.end) for p in plans]
            counts["added"] += 1
            counts["chunks"] += len(chunks)
            counts["vectors"] += sum(c.vectors.shape[0] for c in chunks)
            yield doc_id, text, chunks
            bar.update(1)

    try:
        for doc_id, text in documents:
            if not replace and store.has(doc_id):
                counts["skipped"] += 1
                bar.update(1)
                continue
            plans = plan_chunks(model, text, settings.decoder, settings.chunk_tokens)
            pending.append((doc_id, text, plans))
            n_pending_chunks += len(plans)
            if n_pending_chunks >= batch_size:
                yield from flush()
                pending, n_pending_chunks = [], 0
        yield from flush()
    finally:
        bar.close()


def _quantize_staging(
    staging_store: VectorStore, staging: Path, store_path: Path, codec: str, settings: IndexSettings
) -> VectorStore:
    """Quantize the finished float32 staging store into store_path (atomically), drop the staging."""
    n = staging_store.stats().n_vectors
    tmp = store_path.with_name(store_path.name + QUANTIZING_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True)  # a quantization that was interrupted
    try:
        quantized = staging_store.quantize(tmp, codec)
    except ValueError as e:
        raise ValueError(
            f"cannot build a {codec} store from {n} vectors ({e}); the float32 vectors "
            f"are kept in {staging}: index more documents or use float32/float16"
        ) from e
    quantized.close()
    settings.save(tmp)
    os.replace(tmp, store_path)  # the PQ store appears whole or not at all
    staging_store.close()
    shutil.rmtree(staging)
    return VectorStore.open(store_path)


def quantize_store(
    src_path: str | os.PathLike, dst_path: str | os.PathLike, codec: str, sample_size: int = 65536, seed: int = 0
) -> VectorStore:
    """A copy of the indexed store at src_path with its vectors in `codec`, its index settings
    (decoder, chunk size) carried over; a PQ codebook is trained on up to sample_size of its
    vectors. Returns the new store, open."""
    src_path, dst_path = Path(src_path), Path(dst_path)
    settings = IndexSettings.load(src_path)
    if settings is None:
        raise ValueError(f"store {src_path} has no {SETTINGS_FILE}: it was not built by index_corpus")
    with VectorStore.open(src_path) as source:
        quantized = source.quantize(dst_path, codec, sample_size=sample_size, seed=seed)
    settings.save(dst_path)
    return quantized


def _build_retrieval_index(store: VectorStore) -> None:
    try:
        BM25Index.build(store)  # now, so that the first `ask` does not pay for it
    except ImportError:
        pass  # bm25s is optional; `ask` says how to install it


def store_report(path: str | os.PathLike) -> list[str]:
    """Human-readable description of a store (no model needed)."""
    path = Path(path)
    with VectorStore.open(path) as store:
        s = store.stats()
        settings = IndexSettings.load(path)
        lines = [
            f"store {path}",
            f"model fingerprint {store.fingerprint}, codec {store.codec.name}, dim {store.dim}, "
            f"content version {store.version}",
        ]
        if settings is not None:
            lines.append(
                f"vectors for decoder {settings.decoder} ({settings.decoder_name}), "
                f"chunks of {settings.chunk_tokens} encoder tokens"
            )
        lines += [
            f"{s.n_docs} documents, {s.n_chunks} chunks, {s.n_vectors} vectors, {s.n_tokens} decoder tokens "
            f"({s.n_tokens / s.n_vectors if s.n_vectors else 0:.2f} tokens per vector)",
            f"bytes: shard files {s.vector_bytes}, payload {s.payload_bytes}, codebook {s.codebook_bytes}, "
            f"raw text {s.text_bytes}",
            f"bytes per token: vectors {s.bytes_per_token:.2f}, raw UTF-8 text {s.text_bytes_per_token:.2f}",
        ]
    return lines
