"""VectorStore: compressed documents on disk, compress once and reuse.

Layout of a store folder:
  meta.sqlite              documents, chunks, shards and a one-row info table (model fingerprint,
                           vector dim, codec, content version)
  shard-00001.safetensors  write-once; one tensor [n_rows, ...] of stored vectors, chunks' rows in a row
  pq.safetensors           PQ codebook, for stores created with a PQ codec
  bm25/                    retrieval index (see retrieval.py), rebuilt when the version changes

Crash safety: every write is one SQLite transaction plus at most one new shard file, and the shard
is renamed into place before the transaction commits. A crash before the commit leaves a temp file
or a shard that no row references; both are removed at the start of the next write. Deleting or
replacing a document only drops its rows; compact() rewrites shards to reclaim the bytes.

One writer at a time (SQLite's write lock serialises writers across processes); readers take a
read transaction while they read shard files, so a concurrent compact() cannot remove a shard
from under them.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..atomic import write_folder
from .codecs import PQ_CODEBOOK_FILE, Codec, load_codec, make_codec
from .shards import CorruptStoreError, leftover_files, read_rows, shard_name, write_shard

DB_FILE = "meta.sqlite"
FORMAT_VERSION = 1

_SCHEMA = """
CREATE TABLE info (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    format INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    dim INTEGER NOT NULL,
    codec TEXT NOT NULL,
    version INTEGER NOT NULL,  -- bumped by every content change (add, replace, delete)
    created REAL NOT NULL
);
CREATE TABLE documents (
    id TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    n_chunks INTEGER NOT NULL,
    added REAL NOT NULL
);
CREATE TABLE shards (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    file TEXT NOT NULL UNIQUE,
    n_chunks INTEGER NOT NULL  -- chunks written; fewer live chunks means dead bytes for compact()
);
-- AUTOINCREMENT: a chunk id is never reused, so a stale retrieval index never names another chunk.
CREATE TABLE chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id TEXT NOT NULL REFERENCES documents(id),
    chunk_index INTEGER NOT NULL,
    shard INTEGER NOT NULL REFERENCES shards(id),
    first_row INTEGER NOT NULL,  -- the chunk is rows [first_row, first_row + n_vectors) of its shard
    n_vectors INTEGER NOT NULL,
    n_tokens INTEGER NOT NULL,  -- decoder tokens of the chunk text
    start_char INTEGER NOT NULL,
    end_char INTEGER NOT NULL,
    text TEXT NOT NULL,
    UNIQUE (doc_id, chunk_index)
);
CREATE INDEX chunks_by_shard ON chunks (shard);
"""


@dataclass
class ChunkRecord:
    """One chunk as the encoder produced it, before storage."""

    vectors: np.ndarray  # [m, dim] float32 bottleneck vectors (a torch tensor is accepted too)
    n_tokens: int  # decoder tokens of the document's tokenization that start in text[start:end]
    start: int  # char offsets into the document text
    end: int


@dataclass(frozen=True)
class ChunkInfo:
    """A stored chunk's metadata (its vectors come from chunk_vectors)."""

    id: int
    doc_id: str
    index: int  # position within the document
    n_vectors: int
    n_tokens: int
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class StoreStats:
    n_docs: int
    n_chunks: int
    n_vectors: int
    n_tokens: int
    vector_bytes: int  # shard files on disk, including dead chunks that compact() would drop
    payload_bytes: int  # n_vectors * codec bytes per vector (the paper's storage formula)
    codebook_bytes: int  # PQ codebook file, 0 for float codecs
    bytes_per_token: float  # vector_bytes / n_tokens
    text_bytes: int  # UTF-8 bytes of the chunk texts
    text_bytes_per_token: float  # text_bytes / n_tokens: what storing raw text would cost


def _per_token(n_bytes: int, n_tokens: int) -> float:
    return n_bytes / n_tokens if n_tokens else 0.0


class VectorStore:
    """A folder of compressed documents; see the module docstring for the layout."""

    def __init__(self, path: Path, con: sqlite3.Connection, fingerprint: str, dim: int, codec: Codec):
        # Use VectorStore.create / VectorStore.open.
        self.path = path
        self.fingerprint = fingerprint
        self.dim = dim
        self.codec = codec
        self._con = con

    # ----------------------------------------------------------------- create / open

    @classmethod
    def create(cls, path: str | os.PathLike, fingerprint: str, dim: int, codec: str | Codec = "float32") -> VectorStore:
        """New empty store at path (a missing or empty folder). A PQ codec must be trained first."""
        path = Path(path)
        _check_new_folder(path)
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ValueError("fingerprint must be a non-empty string identifying the encoder model")
        if isinstance(codec, str):
            codec = make_codec(codec, dim)
        if codec.dim != dim:
            raise ValueError(f"codec is for dim {codec.dim}, store dim is {dim}")
        if not codec.is_trained:
            raise ValueError(
                f"{codec.name} codec is untrained: train it on a sample (codec.train(sample)) before "
                f"creating the store, or build a float32 store and call quantize()"
            )

        def write(folder: Path) -> None:
            codec.save(folder)
            con = _connect(folder / DB_FILE)
            try:
                con.execute("BEGIN IMMEDIATE")
                for statement in _split_sql(_SCHEMA):
                    con.execute(statement)
                con.execute(
                    "INSERT INTO info (id, format, fingerprint, dim, codec, version, created)"
                    " VALUES (0, ?, ?, ?, ?, 0, ?)",
                    (FORMAT_VERSION, fingerprint, dim, codec.name, time.time()),
                )
                con.execute("COMMIT")
            finally:
                con.close()

        # The whole folder appears at once: a kill while creating leaves no half-made store behind.
        write_folder(path, write)
        return cls(path, _connect(path / DB_FILE), fingerprint, dim, codec)

    @classmethod
    def open(cls, path: str | os.PathLike, fingerprint: str | None = None) -> VectorStore:
        """Open an existing store; with fingerprint given, refuse a store built by another model."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no vector store at {path}: the folder does not exist")
        db = path / DB_FILE
        if not db.is_file():
            raise FileNotFoundError(f"{path} is not a vector store: {db} is missing")
        con = _connect(db)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            missing = {"info", "documents", "chunks", "shards"} - tables
            if missing:
                raise CorruptStoreError(f"{db} is not a vector store database: tables {sorted(missing)} are missing")
            row = con.execute("SELECT format, fingerprint, dim, codec FROM info WHERE id = 0").fetchone()
            shard_files = [r[0] for r in con.execute("SELECT file FROM shards")]
        except sqlite3.DatabaseError as e:
            con.close()
            raise CorruptStoreError(f"{db} is not a readable SQLite database: {e}") from e
        except CorruptStoreError:
            con.close()
            raise
        if row is None:
            con.close()
            raise CorruptStoreError(f"{db} has no info row (fingerprint, dim, codec)")
        fmt, stored_fp, dim, codec_name = row
        if fmt != FORMAT_VERSION:
            con.close()
            raise ValueError(f"{db} has store format {fmt}; this version of arc-encoder reads format {FORMAT_VERSION}")
        if fingerprint is not None and fingerprint != stored_fp:
            con.close()
            raise ValueError(
                f"store {path} was built with model fingerprint {stored_fp!r}, but the model in use has "
                f"fingerprint {fingerprint!r}: its vectors are meaningless to this model"
            )
        # Fail now rather than at the first read deep inside retrieval or generation.
        for f in shard_files:
            if not (path / f).is_file():
                con.close()
                raise CorruptStoreError(f"shard file {path / f} is missing (it is listed in {db})")
        try:
            codec = load_codec(codec_name, dim, path)
        except (FileNotFoundError, ValueError) as e:
            con.close()
            raise CorruptStoreError(f"store {path}: {e}") from e
        return cls(path, con, stored_fp, dim, codec)

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- transactions

    @contextmanager
    def _write(self) -> Iterator[list[Path]]:
        """One write transaction; yields a list where the caller records new shard files.

        BEGIN IMMEDIATE takes SQLite's write lock first, so files left in the folder that no row
        references belong to a writer that died, and can be removed.
        """
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        new_files: list[Path] = []
        try:
            live = {r[0] for r in con.execute("SELECT file FROM shards")}
            for f in leftover_files(self.path, live):
                f.unlink(missing_ok=True)
            yield new_files
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            for f in new_files:  # written but never committed: no row may point at them
                f.unlink(missing_ok=True)
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: holds SQLite's shared lock so no writer commits a compaction meanwhile."""
        con = self._con
        con.execute("BEGIN")
        try:
            yield con
        finally:
            con.execute("COMMIT")

    # ----------------------------------------------------------------- writing

    def add(self, doc_id: str, text: str, chunks: list[ChunkRecord], replace: bool = False) -> None:
        """Store one document (one shard file; prefer add_many for many documents)."""
        self.add_many([(doc_id, text, chunks)], replace=replace)

    def add_many(
        self, items: Iterable[tuple[str, str, list[ChunkRecord]]], replace: bool = False, batch_docs: int = 256
    ) -> int:
        """Store (doc_id, text, chunks) items; returns how many documents were stored.

        Every batch_docs documents are one transaction and one shard: if items raises midway (or the
        process dies), the batches already written stay, the current one leaves nothing, and a rerun
        can skip ids with has(doc_id).
        """
        if batch_docs < 1:
            raise ValueError("batch_docs must be >= 1")
        n = 0
        batch: list[tuple[str, str, list[ChunkRecord]]] = []
        for item in items:
            batch.append(item)
            if len(batch) == batch_docs:
                self._write_batch(batch, replace)
                n += len(batch)
                batch = []
        if batch:
            self._write_batch(batch, replace)
            n += len(batch)
        return n

    def _write_batch(self, batch: list[tuple[str, str, list[ChunkRecord]]], replace: bool) -> None:
        # Validate and encode before touching the database: a bad item costs nothing.
        encoded: list[tuple[str, str, list[tuple[ChunkRecord, np.ndarray]]]] = []
        seen: set[str] = set()
        for doc_id, text, chunks in batch:
            _check_document(doc_id, text, chunks)
            if doc_id in seen:
                raise ValueError(f"document id {doc_id!r} appears twice in one batch")
            seen.add(doc_id)
            # codec.encode: [m, dim] float32 -> stored [m, ...] (validates the shape)
            encoded.append((doc_id, text, [(c, self.codec.encode(c.vectors)) for c in chunks]))

        with self._write() as new_files:
            con = self._con
            for doc_id, _, _ in encoded:
                if con.execute("SELECT 1 FROM documents WHERE id = ?", (doc_id,)).fetchone():
                    if not replace:
                        raise ValueError(f"document {doc_id!r} is already stored (pass replace=True to overwrite)")
                    _delete_rows(con, doc_id)
            n_chunks = sum(len(chunks) for _, _, chunks in encoded)
            shard_id = con.execute("INSERT INTO shards (file, n_chunks) VALUES ('', ?)", (n_chunks,)).lastrowid
            name = shard_name(shard_id)
            con.execute("UPDATE shards SET file = ? WHERE id = ?", (name, shard_id))
            now = time.time()
            rows: list[np.ndarray] = []
            first_row = 0
            for doc_id, text, chunks in encoded:
                con.execute(
                    "INSERT INTO documents (id, text, n_chunks, added) VALUES (?, ?, ?, ?)",
                    (doc_id, text, len(chunks), now),
                )
                for index, (c, stored) in enumerate(chunks):
                    con.execute(
                        "INSERT INTO chunks (doc_id, chunk_index, shard, first_row, n_vectors, n_tokens, "
                        "start_char, end_char, text) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            doc_id,
                            index,
                            shard_id,
                            first_row,
                            stored.shape[0],
                            int(c.n_tokens),
                            int(c.start),
                            int(c.end),
                            text[c.start : c.end],
                        ),
                    )
                    rows.append(stored)
                    first_row += stored.shape[0]
            _bump_version(con)
            path = self.path / name
            new_files.append(path)  # before writing: a failed write must not leave the file
            write_shard(path, np.concatenate(rows), self._shard_metadata())  # [first_row, ...]

    def delete(self, doc_id: str) -> None:
        """Remove a document; its vectors stay in their shard until compact()."""
        with self._write():
            if not self._con.execute("SELECT 1 FROM documents WHERE id = ?", (doc_id,)).fetchone():
                raise KeyError(f"document {doc_id!r} is not in the store")
            _delete_rows(self._con, doc_id)
            _bump_version(self._con)

    def compact(self, shard_bytes: int = 256 << 20) -> int:
        """Rewrite shards holding dead chunks, merging small shards up to ~shard_bytes each.

        Chunk ids do not change, so a retrieval index stays valid. Returns the bytes freed.
        """
        before = self._shard_bytes()
        rows = self._con.execute(
            "SELECT s.id, s.file, s.n_chunks, COUNT(c.id) FROM shards s LEFT JOIN chunks c ON c.shard = s.id "
            "GROUP BY s.id ORDER BY s.id"
        ).fetchall()
        candidates = []
        for sid, file, n_written, n_live in rows:
            size = (self.path / file).stat().st_size if (self.path / file).is_file() else 0
            dead = n_live < n_written
            if dead or size < shard_bytes // 2:
                live_bytes = size * n_live // max(n_written, 1)  # estimate: chunks are similar in size
                candidates.append(_ShardPlan(sid, file, dead, live_bytes))
        # Consecutive candidates are packed greedily into groups of about shard_bytes live bytes.
        groups: list[list[_ShardPlan]] = []
        current: list[_ShardPlan] = []
        current_bytes = 0
        for c in candidates:
            if current and current_bytes + c.live_bytes > shard_bytes:
                groups.append(current)
                current, current_bytes = [], 0
            current.append(c)
            current_bytes += c.live_bytes
        if current:
            groups.append(current)
        for group in groups:
            if len(group) == 1 and not group[0].dead:
                continue  # a lone small shard without dead chunks gains nothing from a rewrite
            self._rewrite_shards(group)
        return before - self._shard_bytes()

    def _rewrite_shards(self, group: list[_ShardPlan]) -> None:
        """Move the live chunks of group's shards into one new shard, then delete the old files."""
        old_ids = [g.id for g in group]
        old_files = [self.path / g.file for g in group]
        with self._write() as new_files:
            con = self._con
            marks = ",".join("?" * len(old_ids))
            live = con.execute(
                f"SELECT c.id, s.file, c.first_row, c.n_vectors FROM chunks c JOIN shards s ON s.id = c.shard "
                f"WHERE c.shard IN ({marks}) ORDER BY c.id",
                old_ids,
            ).fetchall()
            if live:
                stored = _read_stored(self.path, [(file, first, n) for _, file, first, n in live])
                shard_id = con.execute("INSERT INTO shards (file, n_chunks) VALUES ('', ?)", (len(live),)).lastrowid
                name = shard_name(shard_id)
                con.execute("UPDATE shards SET file = ? WHERE id = ?", (name, shard_id))
                starts = np.cumsum([0] + [n for *_, n in live[:-1]]).tolist()  # new first rows
                con.executemany(
                    "UPDATE chunks SET shard = ?, first_row = ? WHERE id = ?",
                    [(shard_id, first, cid) for (cid, *_), first in zip(live, starts)],
                )
            con.execute(f"DELETE FROM shards WHERE id IN ({marks})", old_ids)
            if live:
                path = self.path / name
                new_files.append(path)
                write_shard(path, np.concatenate(stored), self._shard_metadata())
        # Committed: nothing references the old files any more (a crash here leaves orphans that
        # the next write removes).
        for f in old_files:
            f.unlink(missing_ok=True)

    def quantize(
        self,
        dst_path: str | os.PathLike,
        codec: str | Codec,
        sample_size: int = 65536,
        seed: int = 0,
        batch_docs: int = 256,
    ) -> VectorStore:
        """Write a copy of this store at dst_path with vectors in codec (e.g. 'pq1').

        An untrained PQ codec is first trained on sample_size vectors drawn at random from this store.
        """
        _check_new_folder(Path(dst_path))  # before spending time on training
        if isinstance(codec, str):
            codec = make_codec(codec, self.dim)
        if not codec.is_trained:
            codec.train(self.sample_vectors(sample_size, seed))
        dst = VectorStore.create(dst_path, self.fingerprint, self.dim, codec)
        dst.add_many(self._iter_documents(batch_docs), batch_docs=batch_docs)
        return dst

    # ----------------------------------------------------------------- reading

    def has(self, doc_id: str) -> bool:
        return self._con.execute("SELECT 1 FROM documents WHERE id = ?", (doc_id,)).fetchone() is not None

    def doc_ids(self) -> list[str]:
        """Document ids in the order they were added (a replaced document counts as newly added)."""
        return [r[0] for r in self._con.execute("SELECT id FROM documents ORDER BY rowid")]

    def __len__(self) -> int:
        return self._con.execute("SELECT COUNT(*) FROM documents").fetchone()[0]

    def __contains__(self, doc_id: str) -> bool:
        return self.has(doc_id)

    @property
    def version(self) -> int:
        """Content version: changes whenever a document is added, replaced or deleted."""
        return self._con.execute("SELECT version FROM info WHERE id = 0").fetchone()[0]

    def text(self, doc_id: str) -> str:
        row = self._con.execute("SELECT text FROM documents WHERE id = ?", (doc_id,)).fetchone()
        if row is None:
            raise KeyError(f"document {doc_id!r} is not in the store")
        return row[0]

    def chunks(self, doc_id: str) -> list[ChunkInfo]:
        """The document's chunks in order."""
        if not self.has(doc_id):
            raise KeyError(f"document {doc_id!r} is not in the store")
        rows = self._con.execute(f"SELECT {_INFO_COLUMNS} FROM chunks WHERE doc_id = ? ORDER BY chunk_index", (doc_id,))
        return [ChunkInfo(*r) for r in rows]

    def chunk_info(self, chunk_ids: Sequence[int]) -> list[ChunkInfo]:
        """Metadata for chunk_ids, in the order given."""
        by_id = {}
        for part in _batches(list(chunk_ids), 500):  # SQLite caps the number of bound parameters
            marks = ",".join("?" * len(part))
            for r in self._con.execute(f"SELECT {_INFO_COLUMNS} FROM chunks WHERE id IN ({marks})", part):
                by_id[r[0]] = ChunkInfo(*r)
        return [_lookup(by_id, i) for i in chunk_ids]

    def iter_chunks(self) -> Iterator[ChunkInfo]:
        """Every chunk, in id order."""
        for r in self._con.execute(f"SELECT {_INFO_COLUMNS} FROM chunks ORDER BY id").fetchall():
            yield ChunkInfo(*r)

    def get(self, doc_id: str) -> list[np.ndarray]:
        """The document's chunks' vectors, each [n_vectors, dim] float32, in chunk order."""
        return self.chunk_vectors([c.id for c in self.chunks(doc_id)])

    def chunk_vectors(self, chunk_ids: Sequence[int]) -> list[np.ndarray]:
        """Decoded vectors [n_vectors, dim] float32 of each chunk id, in the order given."""
        chunk_ids = list(chunk_ids)
        with self._read() as con:
            loc = {}
            for part in _batches(chunk_ids, 500):
                marks = ",".join("?" * len(part))
                for cid, file, first, n in con.execute(
                    f"SELECT c.id, s.file, c.first_row, c.n_vectors FROM chunks c JOIN shards s ON s.id = c.shard "
                    f"WHERE c.id IN ({marks})",
                    part,
                ):
                    loc[cid] = (file, first, n)
            stored = _read_stored(self.path, [_lookup(loc, i) for i in chunk_ids])
        return [self.codec.decode(x) for x in stored]

    def sample_vectors(self, n: int, seed: int = 0) -> np.ndarray:
        """Up to n vectors [n, dim] float32 drawn uniformly at random from the store (e.g. to train PQ)."""
        rng = np.random.default_rng(seed)
        ids = np.array([r[0] for r in self._con.execute("SELECT id FROM chunks")], dtype=np.int64)
        rng.shuffle(ids)
        # Whole random chunks until n vectors are in hand, then a uniform subset of their rows:
        # every vector is equally likely whatever the length of its chunk.
        parts, have = [], 0
        for part in _batches(ids.tolist(), 256):
            for v in self.chunk_vectors(part):
                parts.append(v)
                have += v.shape[0]
            if have >= n:
                break
        if not parts:
            return np.zeros((0, self.dim), np.float32)
        sample = np.concatenate(parts)  # [have, dim]
        if sample.shape[0] > n:
            sample = sample[np.sort(rng.choice(sample.shape[0], n, replace=False))]
        return sample

    def _iter_documents(self, batch_docs: int) -> Iterator[tuple[str, str, list[ChunkRecord]]]:
        """(doc_id, text, chunks with decoded vectors) for every document, read batch_docs at a time."""
        for ids in _batches(self.doc_ids(), batch_docs):
            infos = {d: self.chunks(d) for d in ids}
            vectors = self.chunk_vectors([c.id for d in ids for c in infos[d]])
            it = iter(vectors)
            for d in ids:
                records = [ChunkRecord(next(it), c.n_tokens, c.start, c.end) for c in infos[d]]
                yield d, self.text(d), records

    def _shard_metadata(self) -> dict[str, str]:
        # Lets a shard be identified without the database.
        return {"codec": self.codec.name, "dim": str(self.dim), "fingerprint": self.fingerprint}

    def _shard_bytes(self) -> int:
        files = [r[0] for r in self._con.execute("SELECT file FROM shards")]
        return sum((self.path / f).stat().st_size for f in files if (self.path / f).is_file())

    def stats(self) -> StoreStats:
        con = self._con
        n_docs = con.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
        n_chunks, n_vectors, n_tokens, text_bytes = con.execute(
            # CAST(text AS BLOB) gives the UTF-8 bytes, LENGTH of a blob counts them.
            "SELECT COUNT(*), COALESCE(SUM(n_vectors), 0), COALESCE(SUM(n_tokens), 0), "
            "COALESCE(SUM(LENGTH(CAST(text AS BLOB))), 0) FROM chunks"
        ).fetchone()
        vector_bytes = self._shard_bytes()
        codebook = self.path / PQ_CODEBOOK_FILE
        return StoreStats(
            n_docs=n_docs,
            n_chunks=n_chunks,
            n_vectors=n_vectors,
            n_tokens=n_tokens,
            vector_bytes=vector_bytes,
            payload_bytes=n_vectors * self.codec.bytes_per_vector,
            codebook_bytes=codebook.stat().st_size if codebook.is_file() else 0,
            bytes_per_token=_per_token(vector_bytes, n_tokens),
            text_bytes=text_bytes,
            text_bytes_per_token=_per_token(text_bytes, n_tokens),
        )


# --------------------------------------------------------------------- helpers


class _ShardPlan(NamedTuple):
    id: int
    file: str
    dead: bool  # holds chunks of deleted or replaced documents
    live_bytes: int


_INFO_COLUMNS = "id, doc_id, chunk_index, n_vectors, n_tokens, start_char, end_char, text"


def _connect(db: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly one batch.
    con = sqlite3.connect(str(db), isolation_level=None, timeout=60)
    try:
        con.execute("PRAGMA foreign_keys = ON")
    except sqlite3.DatabaseError as e:
        con.close()
        raise CorruptStoreError(f"{db} is not a readable SQLite database: {e}") from e
    return con


def _check_new_folder(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"cannot create a vector store at {path}: it exists and is not an empty folder")


def _split_sql(script: str) -> list[str]:
    # executescript() would COMMIT our open transaction; run the statements one by one instead.
    lines = [line.split("--")[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _check_document(doc_id, text, chunks) -> None:
    if not isinstance(doc_id, str) or not doc_id:
        raise ValueError(f"document id must be a non-empty string, got {doc_id!r}")
    if not isinstance(text, str):
        raise ValueError(f"document {doc_id!r}: text must be a string")
    if not chunks:
        raise ValueError(f"document {doc_id!r} has no chunks")
    for i, c in enumerate(chunks):
        if not isinstance(c, ChunkRecord):
            raise ValueError(f"document {doc_id!r} chunk {i}: expected a ChunkRecord, got {type(c).__name__}")
        if not 0 <= c.start <= c.end <= len(text):
            raise ValueError(
                f"document {doc_id!r} chunk {i}: offsets [{c.start}, {c.end}) outside the text (length {len(text)})"
            )
        if c.n_tokens < 0:
            raise ValueError(f"document {doc_id!r} chunk {i}: n_tokens must be >= 0")
        shape = getattr(c.vectors, "shape", None)
        if shape is None or len(shape) != 2 or shape[0] < 1:
            raise ValueError(f"document {doc_id!r} chunk {i}: vectors must be [m >= 1, dim], got {shape}")


def _delete_rows(con: sqlite3.Connection, doc_id: str) -> None:
    con.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))
    con.execute("DELETE FROM documents WHERE id = ?", (doc_id,))


def _bump_version(con: sqlite3.Connection) -> None:
    con.execute("UPDATE info SET version = version + 1 WHERE id = 0")


def _read_stored(folder: Path, located: list[tuple[str, int, int]]) -> list[np.ndarray]:
    """Stored arrays [n, ...] for each (shard file, first row, n rows), opening each shard once."""
    by_file: dict[str, list[int]] = {}
    for i, (file, _, _) in enumerate(located):
        by_file.setdefault(file, []).append(i)
    out: list[np.ndarray] = [None] * len(located)
    for file, positions in by_file.items():
        arrays = read_rows(folder / file, [located[i][1:] for i in positions])
        for i, arr in zip(positions, arrays):
            out[i] = arr
    return out


def _lookup(table: dict, chunk_id):
    try:
        return table[chunk_id]
    except KeyError:
        raise KeyError(f"chunk id {chunk_id} is not in the store") from None


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
