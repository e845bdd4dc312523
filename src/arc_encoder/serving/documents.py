"""The documents of requests, compressed the way the store's are: planned first, then compressed.

Planning chunks a document with the store's settings and counts its tokens (the encoder does not
run): a document over the model's max_chunks, or a prompt that would not fit the decoder's
positions (ARCModel.check_prompt), is refused then, naming the request field that holds it, before
any compression. Compression runs the planned chunks of all the documents of a batch of requests
in shared encoder batches; a text that appears twice is compressed once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model.arc import Compressed
from ..prompt import Doc
from ..storage.indexing import ChunkPlan, IndexSettings, compress_chunks, plan_chunks
from ..storage.store import ChunkRecord
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
    chunks: list[ChunkPlan]

    def chunk_lengths(self) -> list[int]:
        """Encoder tokens per chunk (what prompt_positions counts vectors from)."""
        return [len(c.encoder_ids) for c in self.chunks]


def as_compressed(records: list[ChunkRecord], decoder: int) -> Compressed:
    """A compressed document's chunks as a prompt part."""
    return Compressed([r.vectors for r in records], decoder, sum(r.n_tokens for r in records))


class DocumentCompressor:
    """Plans and compresses request documents for one model and one store's settings."""

    def __init__(self, model, settings: IndexSettings, batch_size: int = 16):
        if batch_size < 1:
            raise ValueError(f"the compression batch size must be >= 1, got {batch_size}")
        self.model = model
        self.settings = settings
        self.batch_size = batch_size

    def plan(self, text: str, param: str | None = None) -> Planned:
        """The document's chunks; a ClientError (400) naming `param` for one the model cannot take
        (empty, or more chunks than max_chunks)."""
        try:
            return Planned(text, param, plan_chunks(self.model, text, self.settings))
        except (ValueError, TypeError) as e:
            raise ClientError(400, f"{param}: {e}" if param else str(e), param) from None

    def compress(self, docs: list[Planned]) -> list[list[ChunkRecord]]:
        """Each planned document's chunk records (vectors float32 on the CPU), in the order given;
        a text given twice is compressed once."""
        unique: dict[str, Planned] = {}
        for d in docs:
            unique.setdefault(d.text, d)
        flat = [c for d in unique.values() for c in d.chunks]
        vectors = iter(compress_chunks(self.model, flat, self.settings.decoder, self.batch_size) if flat else [])
        records = {
            text: [ChunkRecord(next(vectors), c.n_tokens, c.start, c.end) for c in d.chunks]
            for text, d in unique.items()
        }
        return [records[d.text] for d in docs]
