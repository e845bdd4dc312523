"""Store compressed documents on disk (float32 / float16 / product-quantized) and retrieve chunks.

faiss (PQ) and bm25s (retrieval) are optional: pip install 'arc-encoder[store]'.
"""

from ..model.chunking import chunk_text
from .codecs import Float16Codec, Float32Codec, PQCodec, load_codec, make_codec, possible_pq_bits
from .retrieval import BM25Index
from .shards import CorruptStoreError
from .store import ChunkInfo, ChunkRecord, StoreStats, VectorStore

__all__ = [
    "BM25Index",
    "ChunkInfo",
    "ChunkRecord",
    "CorruptStoreError",
    "Float16Codec",
    "Float32Codec",
    "PQCodec",
    "StoreStats",
    "VectorStore",
    "chunk_text",
    "load_codec",
    "make_codec",
    "possible_pq_bits",
]
