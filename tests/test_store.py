"""VectorStore: round trips, fingerprints, replace/delete/compact, crash safety, stats, corruption."""

import os
import sqlite3
import sys

import numpy as np
import pytest

from _store_helpers import make_doc
from arc_encoder.storage import BM25Index, ChunkRecord, CorruptStoreError, PQCodec, VectorStore
from arc_encoder.storage import store as store_module

DIM = 16


def shard_files(path):
    return sorted(f for f in os.listdir(path) if f.startswith("shard-"))


def fill(store, rng, n_docs, prefix="doc", batch_docs=256):
    """Add n_docs random documents; returns {doc_id: (text, chunks)}."""
    docs = {f"{prefix}{i}": make_doc(rng, store.dim) for i in range(n_docs)}
    store.add_many(((d, t, c) for d, (t, c) in docs.items()), batch_docs=batch_docs)
    return docs


def assert_doc_equal(store, doc_id, text, chunks):
    got = store.get(doc_id)
    assert len(got) == len(chunks)
    for g, c in zip(got, chunks):
        assert g.dtype == np.float32
        assert g.tobytes() == c.vectors.tobytes()  # bit-exact, including -0.0 and subnormals
    assert store.text(doc_id) == text
    infos = store.chunks(doc_id)
    assert [i.index for i in infos] == list(range(len(chunks)))
    assert [(i.start, i.end, i.n_tokens, i.text) for i in infos] == [
        (c.start, c.end, c.n_tokens, text[c.start : c.end]) for c in chunks
    ]


def test_float32_round_trip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    store = VectorStore.create(tmp_path / "s", "model-a", DIM)
    text, chunks = make_doc(rng, DIM)
    # Values where a lossy path would show: subnormal, huge, negative zero, many mantissa bits.
    chunks[0].vectors[0, :4] = [1e-42, 3.4e38, -0.0, np.float32(1 / 3)]
    store.add("d", text, chunks)
    assert_doc_equal(store, "d", text, chunks)
    store.close()
    reopened = VectorStore.open(tmp_path / "s")
    assert_doc_equal(reopened, "d", text, chunks)
    ids = [c.id for c in reopened.chunks("d")]
    got = reopened.chunk_vectors(ids[::-1])  # order given is order returned
    assert [g.tobytes() for g in got] == [c.vectors.tobytes() for c in chunks[::-1]]


def test_torch_tensor_input_is_stored_exactly(tmp_path):
    torch = pytest.importorskip("torch")
    store = VectorStore.create(tmp_path / "s", "m", DIM)
    vectors = torch.randn(3, DIM, generator=torch.Generator().manual_seed(0))
    store.add("d", "some text", [ChunkRecord(vectors, 12, 0, 9)])
    assert np.array_equal(store.get("d")[0], vectors.numpy())


def test_float16_within_half_precision_error(tmp_path):
    rng = np.random.default_rng(1)
    store = VectorStore.create(tmp_path / "s", "m", DIM, codec="float16")
    text, chunks = make_doc(rng, DIM)
    store.add("d", text, chunks)
    for got, c in zip(VectorStore.open(tmp_path / "s").get("d"), chunks):
        x = c.vectors
        assert got.dtype == np.float32 and got.shape == x.shape
        # Round-to-nearest fp16: relative error <= 2**-11 for normal values (|x| >= 2**-14),
        # absolute error <= 2**-25 below that.
        err = np.abs(got - x)
        bound = np.maximum(np.abs(x) * 2.0**-11, 2.0**-25)
        assert np.all(err <= bound)
        assert not np.array_equal(got, x)  # really stored in half precision
    assert store.stats().payload_bytes == sum(len(c.vectors) for c in chunks) * DIM * 2


def test_fingerprint_mismatch_is_refused(tmp_path):
    VectorStore.create(tmp_path / "s", "smollm2-135m@abc123", DIM).close()
    with pytest.raises(ValueError) as e:
        VectorStore.open(tmp_path / "s", fingerprint="smollm2-135m@def456")
    assert "smollm2-135m@abc123" in str(e.value) and "smollm2-135m@def456" in str(e.value)
    assert VectorStore.open(tmp_path / "s", fingerprint="smollm2-135m@abc123").fingerprint == "smollm2-135m@abc123"
    assert VectorStore.open(tmp_path / "s").fingerprint == "smollm2-135m@abc123"


def test_create_refuses_non_empty_folder(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "x.txt").write_text("x")
    with pytest.raises(FileExistsError):
        VectorStore.create(tmp_path / "s", "m", DIM)


def test_add_checks_ids_shapes_and_offsets(tmp_path):
    rng = np.random.default_rng(2)
    store = VectorStore.create(tmp_path / "s", "m", DIM)
    text, chunks = make_doc(rng, DIM)
    store.add("d", text, chunks)
    with pytest.raises(ValueError, match="already stored"):
        store.add("d", text, chunks)
    with pytest.raises(ValueError, match=r"\[m, 16\]"):
        store.add("e", "abc", [ChunkRecord(np.zeros((2, DIM + 1), np.float32), 3, 0, 3)])
    with pytest.raises(ValueError, match="outside the text"):
        store.add("e", "abc", [ChunkRecord(np.zeros((2, DIM), np.float32), 3, 0, 4)])
    with pytest.raises(ValueError, match="twice"):
        store.add_many([("e", text, chunks), ("e", text, chunks)])
    assert store.doc_ids() == ["d"] and shard_files(store.path) == ["shard-00001.safetensors"]


def test_replace_delete_compact_keep_the_others(tmp_path):
    rng = np.random.default_rng(3)
    store = VectorStore.create(tmp_path / "s", "m", DIM)
    docs = fill(store, rng, 20, batch_docs=5)  # 4 shards
    assert len(shard_files(store.path)) == 4
    ids_before = {d: [c.id for c in store.chunks(d)] for d in docs}

    new_text, new_chunks = make_doc(rng, DIM, n_chunks=2)
    store.add("doc3", new_text, new_chunks, replace=True)
    docs["doc3"] = (new_text, new_chunks)
    for d in ["doc0", "doc1", "doc2", "doc4", "doc11"]:  # all of shard 1, one from shard 3
        store.delete(d)
        del docs[d]
    with pytest.raises(KeyError):
        store.delete("doc0")
    for d, (t, c) in docs.items():
        assert_doc_equal(store, d, t, c)

    before = store.stats().vector_bytes
    freed = store.compact()
    assert freed > 0 and store.stats().vector_bytes == before - freed
    store.close()
    store = VectorStore.open(tmp_path / "s")
    assert sorted(store.doc_ids()) == sorted(docs)
    for d, (t, c) in docs.items():
        assert_doc_equal(store, d, t, c)
        if d != "doc3":
            assert [c.id for c in store.chunks(d)] == ids_before[d]  # compaction keeps chunk ids
    # Every shard on disk is referenced and holds no dead chunks.
    con = sqlite3.connect(store.path / "meta.sqlite")
    rows = con.execute(
        "SELECT s.file, s.n_chunks, COUNT(c.id) FROM shards s LEFT JOIN chunks c ON c.shard = s.id GROUP BY s.id"
    ).fetchall()
    assert sorted(r[0] for r in rows) == shard_files(store.path)
    assert all(n_written == n_live for _, n_written, n_live in rows)
    assert store.stats().n_chunks == sum(len(c) for _, c in docs.values())


def test_interrupted_indexing_then_resume(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    store = VectorStore.create(tmp_path / "s", "m", DIM)
    docs = {f"doc{i}": make_doc(rng, DIM) for i in range(12)}
    items = [(d, t, c) for d, (t, c) in docs.items()]

    # 1. The producer (e.g. the encoder) dies after 7 documents; batches of 3 -> 2 batches committed.
    def producer():
        for i, item in enumerate(items):
            if i == 7:
                raise KeyboardInterrupt
            yield item

    with pytest.raises(KeyboardInterrupt):
        store.add_many(producer(), batch_docs=3)
    assert store.doc_ids() == [f"doc{i}" for i in range(6)]

    # 2. The shard write dies halfway: a partial temp file is on disk when the exception hits.
    def broken_write(path, rows, metadata):
        (path.parent / f"{path.name}.tmp-{os.getpid()}").write_bytes(b"partial shard bytes")
        raise OSError("disk full")

    monkeypatch.setattr(store_module, "write_shard", broken_write)
    with pytest.raises(OSError, match="disk full"):
        store.add_many(items[6:9], batch_docs=3)
    monkeypatch.undo()
    assert len(store) == 6  # the failed batch left no rows
    assert not any(
        f.endswith(".safetensors") and f not in {"shard-00001.safetensors", "shard-00002.safetensors"}
        for f in os.listdir(store.path)
    )
    # A crashed process can also leave a temp file and a renamed but uncommitted shard.
    (store.path / "shard-00007.safetensors.tmp-99999").write_bytes(b"junk")
    (store.path / "shard-00008.safetensors").write_bytes(b"never committed")
    store.close()

    # 3. Resume in a new process: skip what is there, add the rest.
    store = VectorStore.open(tmp_path / "s")
    n = store.add_many(((d, t, c) for d, t, c in items if not store.has(d)), batch_docs=4)
    assert n == 6
    assert sorted(store.doc_ids()) == sorted(docs)
    assert len(store) == 12
    for d, (t, c) in docs.items():
        assert_doc_equal(store, d, t, c)
    con = sqlite3.connect(store.path / "meta.sqlite")
    assert con.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == sum(len(c) for _, c in docs.values())
    referenced = sorted(r[0] for r in con.execute("SELECT file FROM shards"))
    assert shard_files(store.path) == referenced  # leftovers cleaned, nothing unreferenced
    assert not any(".tmp" in f for f in os.listdir(store.path))


def test_stats_match_hand_computation(tmp_path):
    store = VectorStore.create(tmp_path / "s", "m", 8)
    text = "Café au lait — déjà vu"  # multi-byte UTF-8 characters
    chunks = [
        ChunkRecord(np.ones((2, 8), np.float32), n_tokens=5, start=0, end=12),
        ChunkRecord(np.ones((1, 8), np.float32), n_tokens=4, start=12, end=len(text)),
    ]
    store.add("a", text, chunks)
    store.add("b", "plain", [ChunkRecord(np.ones((3, 8), np.float32), n_tokens=3, start=0, end=5)])
    s = store.stats()
    disk = sum(os.path.getsize(store.path / f) for f in shard_files(store.path))
    text_bytes = len(text.encode("utf-8")) + len(b"plain")
    assert (s.n_docs, s.n_chunks, s.n_vectors, s.n_tokens) == (2, 3, 6, 12)
    assert s.vector_bytes == disk
    assert s.payload_bytes == 6 * 8 * 4
    # One tensor per shard: the safetensors header is paid per shard (2 here), not per chunk.
    assert 0 < s.vector_bytes - s.payload_bytes < 2 * 200
    assert s.bytes_per_token == pytest.approx(disk / 12)
    assert s.text_bytes == text_bytes == 32
    assert s.text_bytes_per_token == pytest.approx(32 / 12)
    assert s.codebook_bytes == 0


def test_quantize_writes_a_pq_store(tmp_path):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(5)
    src = VectorStore.create(tmp_path / "f32", "m", 32)
    docs = fill(src, rng, 150, batch_docs=50)
    dst = src.quantize(tmp_path / "pq", "pq1", sample_size=400)
    assert dst.codec.name == "pq1" and (tmp_path / "pq" / "pq.safetensors").is_file()
    s = dst.stats()
    assert s.n_vectors == src.stats().n_vectors
    assert s.payload_bytes == s.n_vectors * 32 // 8  # 1 bit per dimension
    assert s.vector_bytes < src.stats().vector_bytes / 8
    decoded = dst.get("doc7")
    dst.close()
    again = VectorStore.open(tmp_path / "pq", fingerprint="m")  # codebook read back from disk
    assert dst.codec.name == again.codec.name
    for a, b, c in zip(decoded, again.get("doc7"), docs["doc7"][1]):
        assert np.array_equal(a, b)
        assert a.shape == c.vectors.shape
        assert not np.array_equal(a, c.vectors)
    assert [i.text for i in again.chunks("doc7")] == [i.text for i in src.chunks("doc7")]


def test_missing_store_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VectorStore.open(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="meta.sqlite"):
        VectorStore.open(tmp_path / "empty")


def test_corrupt_sqlite_is_named(tmp_path):
    VectorStore.create(tmp_path / "s", "m", DIM).close()
    db = tmp_path / "s" / "meta.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CorruptStoreError) as e:
        VectorStore.open(tmp_path / "s")
    assert str(db) in str(e.value)


def test_missing_or_damaged_shard_is_named(tmp_path):
    rng = np.random.default_rng(6)
    store = VectorStore.create(tmp_path / "s", "m", DIM)
    fill(store, rng, 4, batch_docs=2)
    shard = store.path / "shard-00002.safetensors"
    shard.rename(tmp_path / "moved")
    with pytest.raises(CorruptStoreError) as e:  # noticed while reading
        store.get("doc3")
    assert str(shard) in str(e.value)
    store.get("doc0")  # the other shard is still readable
    store.close()
    with pytest.raises(CorruptStoreError) as e:  # and at open
        VectorStore.open(tmp_path / "s")
    assert str(shard) in str(e.value)
    (tmp_path / "moved").rename(shard)
    shard.write_bytes(shard.read_bytes()[:40])  # truncated
    store = VectorStore.open(tmp_path / "s")
    with pytest.raises(CorruptStoreError) as e:
        store.get("doc2")
    assert str(shard) in str(e.value)


def test_missing_optional_packages_name_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail
    monkeypatch.setitem(sys.modules, "bm25s", None)
    with pytest.raises(ImportError, match=r"pip install 'arc-encoder\[store\]'"):
        PQCodec(16, 1).train(np.zeros((300, 16), np.float32))
    store = VectorStore.create(tmp_path / "s", "m", DIM)  # float stores need neither
    store.add("d", "text", [ChunkRecord(np.ones((1, DIM), np.float32), 1, 0, 4)])
    with pytest.raises(ImportError, match=r"pip install 'arc-encoder\[store\]'"):
        BM25Index.build(store)
