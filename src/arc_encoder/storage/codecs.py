"""Codecs for stored bottleneck vectors: float32, float16 and product quantization (PQ).

A codec turns a float32 matrix [m, dim] into the array that is written to a shard and back.
The stored array keeps one row per vector, so a chunk's vectors stay one tensor in a shard:
  float32: [m, dim] float32 (bit-exact)
  float16: [m, dim] float16
  pqB:     [m, dim / dsub] uint8, one 8-bit code per sub-vector of dsub = 8 / B dims

PQ follows method.md §10.1: bits per dimension B in {2, 1, 0.5} are reached by widening the
sub-vector (4, 8, 16 dims) while keeping 256 centroids per sub-quantizer, i.e. 8-bit codes. We add
B = 0.25 (32-dim sub-vectors): at pooling factor 4 and a 512-wide bottleneck it is the first
setting that stores fewer bytes per token than the raw UTF-8 text (16 bytes per vector).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..atomic import write_file

# Bits per dimension that method.md §10.1 names; with 8-bit codes each needs dim % (8 / B) == 0.
PQ_BITS_PER_DIM = (2.0, 1.0, 0.5, 0.25)
PQ_CODE_BITS = 8  # 256 centroids per sub-quantizer
PQ_CODEBOOK_FILE = "pq.safetensors"


def _import_faiss():
    # faiss is an optional dependency: only PQ stores need it, float stores must work without it.
    try:
        import faiss
    except ImportError as e:
        raise ImportError("product quantization needs faiss: pip install 'arc-encoder[store]'") from e
    return faiss


def _as_matrix(x, dim: int) -> np.ndarray:
    """Any float array-like [m, dim] -> C-contiguous float32 numpy [m, dim]."""
    if hasattr(x, "detach"):  # a torch tensor (possibly bf16 / on GPU) without importing torch
        x = x.detach().float().cpu().numpy()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected vectors of shape [m, {dim}], got {list(x.shape)}")
    return x


def _format_bits(bits: float) -> str:
    return f"{bits:g}"


def possible_pq_bits(dim: int) -> list[float]:
    """Bits per dimension from PQ_BITS_PER_DIM whose sub-vector size divides dim."""
    return [b for b in PQ_BITS_PER_DIM if dim % round(PQ_CODE_BITS / b) == 0]


class Float32Codec:
    """Stores the vectors as they are: decode(encode(x)) == x bit for bit."""

    needs_training = False
    is_trained = True

    def __init__(self, dim: int):
        self.dim = dim
        self.name = "float32"
        self.bytes_per_vector = 4 * dim

    def encode(self, x) -> np.ndarray:
        return _as_matrix(x, self.dim)  # [m, dim] float32

    def decode(self, stored: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(stored, dtype=np.float32)

    def save(self, folder: str | os.PathLike) -> None:
        pass  # stateless

    def train(self, sample) -> None:
        pass


class Float16Codec:
    """Half precision: halves the bytes, relative error per element <= 2**-11 (in fp16's range)."""

    needs_training = False
    is_trained = True

    def __init__(self, dim: int):
        self.dim = dim
        self.name = "float16"
        self.bytes_per_vector = 2 * dim

    def encode(self, x) -> np.ndarray:
        x = _as_matrix(x, self.dim)
        # Values beyond fp16's range would silently become inf; refuse instead.
        if x.size and np.abs(x).max() > np.finfo(np.float16).max:
            raise ValueError("vector values exceed the float16 range (65504); use float32")
        return x.astype(np.float16)  # [m, dim] float16

    def decode(self, stored: np.ndarray) -> np.ndarray:
        return np.asarray(stored, dtype=np.float32)

    def save(self, folder: str | os.PathLike) -> None:
        pass

    def train(self, sample) -> None:
        pass


class PQCodec:
    """Product quantizer (faiss.ProductQuantizer) at bits_per_dim in {2, 1, 0.5, 0.25}, 8-bit codes.

    The vector [dim] is cut into n_sub = dim / dsub sub-vectors of dsub = 8 / bits_per_dim dims;
    each is replaced by the index of its nearest of 256 centroids (k-means on a training sample).
    """

    needs_training = True

    def __init__(self, dim: int, bits_per_dim: float):
        bits_per_dim = float(bits_per_dim)
        if bits_per_dim not in PQ_BITS_PER_DIM:
            raise ValueError(
                f"PQ bits per dimension must be one of "
                f"{', '.join(_format_bits(b) for b in PQ_BITS_PER_DIM)}, got {_format_bits(bits_per_dim)}"
            )
        dsub = round(PQ_CODE_BITS / bits_per_dim)
        if dim % dsub != 0:
            ok = possible_pq_bits(dim)
            ok_text = ", ".join(_format_bits(b) for b in ok) if ok else "none"
            raise ValueError(
                f"PQ at {_format_bits(bits_per_dim)} bits/dim needs a dim divisible by {dsub}; "
                f"dim {dim} allows bits/dim: {ok_text}"
            )
        self.dim = dim
        self.bits_per_dim = bits_per_dim
        self.dsub = dsub
        self.n_sub = dim // dsub
        self.ksub = 1 << PQ_CODE_BITS
        self.name = f"pq{_format_bits(bits_per_dim)}"
        self.bytes_per_vector = self.n_sub  # one uint8 code per sub-vector
        self._pq = None  # faiss.ProductQuantizer once trained or loaded

    @property
    def is_trained(self) -> bool:
        return self._pq is not None

    def _new_pq(self):
        faiss = _import_faiss()
        pq = faiss.ProductQuantizer(self.dim, self.n_sub, PQ_CODE_BITS)
        pq.cp.verbose = False
        return pq

    def train(self, sample) -> None:
        """k-means per sub-space on sample [n, dim]; n must be >= 256 (one point per centroid)."""
        sample = _as_matrix(sample, self.dim)
        if sample.shape[0] < self.ksub:
            raise ValueError(f"PQ training needs at least {self.ksub} sample vectors, got {sample.shape[0]}")
        pq = self._new_pq()
        pq.train(sample)
        self._pq = pq

    @property
    def centroids(self) -> np.ndarray:
        """[n_sub, 256, dsub] float32 codebook."""
        faiss = _import_faiss()
        self._require_trained()
        return faiss.vector_to_array(self._pq.centroids).reshape(self.n_sub, self.ksub, self.dsub)

    def set_centroids(self, centroids: np.ndarray) -> None:
        """Use a given codebook [n_sub, 256, dsub] (loading a saved one, or a baseline in tests)."""
        faiss = _import_faiss()
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        expected = (self.n_sub, self.ksub, self.dsub)
        if centroids.shape != expected:
            raise ValueError(f"PQ codebook must have shape {list(expected)}, got {list(centroids.shape)}")
        pq = self._new_pq()
        faiss.copy_array_to_vector(centroids.ravel(), pq.centroids)
        self._pq = pq

    def _require_trained(self) -> None:
        if self._pq is None:
            raise RuntimeError(f"{self.name} codec is not trained: call train(sample) first")

    def encode(self, x) -> np.ndarray:
        self._require_trained()
        x = _as_matrix(x, self.dim)
        return self._pq.compute_codes(x)  # [m, n_sub] uint8

    def decode(self, stored: np.ndarray) -> np.ndarray:
        self._require_trained()
        codes = np.ascontiguousarray(stored, dtype=np.uint8)
        if codes.ndim != 2 or codes.shape[1] != self.n_sub:
            raise ValueError(f"expected PQ codes of shape [m, {self.n_sub}], got {list(codes.shape)}")
        return self._pq.decode(codes)  # [m, dim] float32

    def save(self, folder: str | os.PathLike) -> None:
        """Write the codebook to folder/pq.safetensors (temp file + rename: never half written)."""
        from safetensors.numpy import save_file

        metadata = {"bits_per_dim": _format_bits(self.bits_per_dim)}
        write_file(
            Path(folder) / PQ_CODEBOOK_FILE,
            lambda tmp: save_file({"centroids": self.centroids}, str(tmp), metadata=metadata),
        )

    def load(self, folder: str | os.PathLike) -> None:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        path = Path(folder) / PQ_CODEBOOK_FILE
        if not path.exists():
            raise FileNotFoundError(f"PQ codebook missing: {path}")
        try:
            centroids = load_file(str(path))["centroids"]
        except (SafetensorError, KeyError, OSError) as e:
            raise ValueError(f"PQ codebook {path} is unreadable: {e}") from e
        self.set_centroids(centroids)


Codec = Float32Codec | Float16Codec | PQCodec


def make_codec(name: str, dim: int) -> Codec:
    """'float32', 'float16' or 'pq2' / 'pq1' / 'pq0.5' / 'pq0.25' (PQ bits per dimension) -> an (untrained) codec."""
    if name == "float32":
        return Float32Codec(dim)
    if name == "float16":
        return Float16Codec(dim)
    if name.startswith("pq"):
        try:
            bits = float(name[2:])
        except ValueError:
            bits = None
        if bits is not None:
            return PQCodec(dim, bits)
    raise ValueError(
        f"unknown codec {name!r}: use float32, float16, or pq2 / pq1 / pq0.5 / pq0.25 (PQ bits per dimension)"
    )


def load_codec(name: str, dim: int, folder: str | os.PathLike) -> Codec:
    """The codec a store was created with, with its trained state (PQ codebook) read from folder."""
    codec = make_codec(name, dim)
    if codec.needs_training:
        codec.load(folder)
    return codec
