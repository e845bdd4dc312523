"""Request and response bodies of the HTTP service (pydantic), and vector (de)serialization.

Vectors travel as one object per chunk: {"shape": [m, d], "data": [[...], ...]} (nested floats) or
{"shape": [m, d], "base64": "..."} (little-endian float32, row-major, standard base64).
Size limits that an operator may change (ServeLimits) are checked by the app, not here.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


@dataclass(frozen=True)
class ServeLimits:
    max_texts: int = 32  # texts per /v1/compress request, documents per /v1/documents request
    max_chars: int = 100_000  # characters per text, document, text part or question
    max_new_tokens: int = 512  # largest max_new_tokens a request may ask for
    max_parts: int = 64  # prompt parts per /v1/generate request
    max_vectors: int = 8192  # vectors sent in one request's "vectors" parts
    max_k: int = 20  # chunks retrieved per /v1/ask
    max_request_bytes: int = 32 << 20  # request body size (bytes received, whatever Content-Length says)
    max_pending: int = 64  # requests waiting for the model; more get 503 with Retry-After


class Strict(BaseModel):
    """A request body: unknown fields refused, and JSON types taken as they are (OpenAI's schema):
    no "yes" for a boolean, no true or 1.0 for an integer, no "0.5" for a number."""

    model_config = ConfigDict(extra="forbid", strict=True)


def unicode_text(text: str) -> str:
    """A JSON string may escape half of a surrogate pair alone ("\\ud800"): not a character, and
    no tokenizer reads it. Refused here, so the error names the field."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"the text holds a lone surrogate U+{ord(text[e.start]):04X} at character {e.start}") from None
    return text


Text = Annotated[str, AfterValidator(unicode_text)]  # every string field of a request


# ----------------------------------------------------------------------------- vectors


class VectorChunk(Strict):
    shape: list[int] | None = Field(None, min_length=2, max_length=2, description="[m, d]; required with base64")
    data: list[list[float]] | None = Field(None, description="nested float rows [m][d]")
    base64: str | None = Field(None, description="little-endian float32, row-major")

    @model_validator(mode="after")
    def _one_encoding(self):
        if (self.data is None) == (self.base64 is None):
            raise ValueError("a vector chunk needs exactly one of 'data' (nested floats) or 'base64'")
        if self.base64 is not None and self.shape is None:
            raise ValueError("a base64 vector chunk needs its 'shape' [m, d]")
        return self

    def rows(self) -> int:
        return self.shape[0] if self.shape is not None else len(self.data)


def vectors_to_json(v: torch.Tensor, encoding: str) -> dict:
    """[m, d] tensor -> VectorChunk-shaped dict."""
    v = v.detach().float().cpu().contiguous()
    out = {"shape": list(v.shape)}
    if encoding == "base64":
        out["base64"] = base64.b64encode(v.numpy().astype("<f4").tobytes()).decode("ascii")
    else:
        out["data"] = v.tolist()
    return out


def vectors_from_json(chunk: VectorChunk, dim: int) -> torch.Tensor:
    """VectorChunk -> [m, dim] float32 tensor; ValueError naming what is wrong."""
    if chunk.base64 is not None:
        m, d = chunk.shape
        try:
            raw = base64.b64decode(chunk.base64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"vector chunk: invalid base64 ({e})") from None
        if len(raw) != 4 * m * d:
            raise ValueError(f"vector chunk: base64 holds {len(raw)} bytes, shape {[m, d]} needs {4 * m * d}")
        array = np.frombuffer(raw, dtype="<f4").reshape(m, d).astype(np.float32)
    else:
        rows = chunk.data
        if not rows or any(len(r) != len(rows[0]) for r in rows):
            raise ValueError("vector chunk: 'data' must be a non-empty list of rows of equal length")
        array = np.asarray(rows, dtype=np.float32)
        if chunk.shape is not None and tuple(array.shape) != tuple(chunk.shape):
            raise ValueError(f"vector chunk: 'data' has shape {list(array.shape)}, 'shape' says {list(chunk.shape)}")
    if array.shape[0] < 1 or array.shape[1] != dim:
        raise ValueError(
            f"vector chunk: expected shape [m >= 1, {dim}] (this model's bottleneck), got {list(array.shape)}"
        )
    if not np.isfinite(array).all():
        raise ValueError("vector chunk: values must be finite (no NaN or infinity)")
    return torch.from_numpy(array.copy())


# ----------------------------------------------------------------------------- requests


class DecodeOptions(Strict):
    max_new_tokens: int | None = Field(None, ge=1, description="default 64 (or the server's cap if lower)")
    temperature: float = Field(0.0, ge=0.0, le=10.0, allow_inf_nan=False, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    stop: list[Text] = Field(default_factory=list, max_length=8, description="stop strings (cut from the text)")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="makes sampling reproducible")

    @model_validator(mode="after")
    def _stop_strings(self):
        if any(not s or len(s) > 64 for s in self.stop):
            raise ValueError("stop strings must be 1 to 64 characters long")
        return self


class CompressRequest(Strict):
    texts: list[Text] = Field(..., min_length=1)
    encoding: Literal["float", "base64"] = "float"


class VectorsIn(Strict):
    chunks: list[VectorChunk] = Field(..., min_length=1)
    document_tokens: int = Field(0, ge=0, description="tokens of the original text (only for the ratio)")


class PromptPart(Strict):
    """Exactly one of: text (read as tokens), document (compressed now), stored_id (a stored
    document's vectors), vectors (vectors from /v1/compress)."""

    text: Text | None = None
    document: Text | None = None
    stored_id: Text | None = None
    vectors: VectorsIn | None = None

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in ("text", "document", "stored_id", "vectors") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "each prompt part needs exactly one of 'text', 'document', 'stored_id', "
                f"'vectors'; got {given or 'none'}"
            )
        return self


class GenerateRequest(DecodeOptions):
    prompt: list[PromptPart] = Field(..., min_length=1)


class DocumentIn(Strict):
    id: Text = Field(..., min_length=1, max_length=512)
    text: Text


class AddDocumentsRequest(Strict):
    documents: list[DocumentIn] = Field(..., min_length=1)
    replace: bool = False


class SearchRequest(Strict):
    query: Text = Field(..., min_length=1)
    k: int = Field(3, ge=1)


class AskRequest(DecodeOptions):
    question: Text = Field(..., min_length=1)
    k: int = Field(3, ge=1)
    stop: list[Text] = Field(default_factory=lambda: ["\n"], max_length=8)


# ----------------------------------------------------------------------------- responses


class CacheReport(BaseModel):
    """How many of the request's documents the cache of compressed documents had (hits) and how
    many were compressed for it (misses)."""

    hits: int
    misses: int


class CompressedOut(BaseModel):
    chunks: list[dict]
    n_vectors: int
    document_tokens: int
    compression_ratio: float


class CompressResponse(BaseModel):
    decoder: int  # the served decoder's index, and its name as the model's config lists it
    decoder_name: str
    dim: int
    cache: CacheReport
    results: list[CompressedOut]


class GenerateResponse(BaseModel):
    text: str
    token_ids: list[int]
    prompt_length: int
    document_tokens: int
    compressed_vectors: int
    compression_ratio: float | None
    cache: CacheReport


class AddedDocument(BaseModel):
    id: str
    chunks: int
    vectors: int
    tokens: int


class AddDocumentsResponse(BaseModel):
    added: list[AddedDocument]
    cache: CacheReport


class ChunkOut(BaseModel):
    index: int
    start: int
    end: int
    n_vectors: int
    n_tokens: int
    vectors: dict | None = None


class DocumentOut(BaseModel):
    id: str
    text: str
    chunks: list[ChunkOut]


class SourceOut(BaseModel):
    doc_id: str
    chunk_index: int
    chunk_id: int
    score: float
    text: str


class SearchResponse(BaseModel):
    sources: list[SourceOut]


class AskResponse(BaseModel):
    answer: str
    sources: list[SourceOut]
    prompt_length: int
    compressed_vectors: int
