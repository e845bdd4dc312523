"""The teacher's top-k logits on disk: distillation without a teacher forward per step.

The teacher of distillation (distill.py) is the frozen decoder reading a sample's documents as
text. It never changes, so its logits for a sample are the same in every run that draws that
sample: they are computed once (`arc-encoder distill-cache`) and read back by key.

    CACHE/manifest.json                          what the cache was built for (below)
    CACHE/entries/<2 hex>/<32 hex>.safetensors   one sample of one decoder:
        tokens   [n]     int64    text tokens of the sample the teacher predicts (supervised ones)
        values   [n, k]  float32  the teacher's k largest logits for each, largest first
        indices  [n, k]  int64    their token ids

The key is a hash of the decoder index and the sample (text ids, encoder ids of each segment,
offsets, loss flags), so a run finds the logits of every sample it draws, in any order. The
manifest names each decoder (its config name and a hash of its weights), each data file (path,
size, SHA-256) and k; a cache is refused, by name, for another decoder or data file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..atomic import write_file, write_json
from .splice import Sample

FORMAT = 1
MANIFEST = "manifest.json"
ENTRIES = "entries"


class MissingTeacherLogits(ValueError):
    """A sample (or a token of one) the cache holds no teacher logits for."""


def sample_key(sample: Sample, decoder: int) -> str:
    content = [decoder, sample.text_ids, sample.segments, sample.offsets, sample.targets]
    return hashlib.blake2b(json.dumps(content, separators=(",", ":")).encode(), digest_size=16).hexdigest()


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A hash of every tensor of a module (names, dtypes, shapes and bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_fingerprint(path: str | Path) -> dict:
    """{"path", "size", "sha256"} of a data file."""
    path = Path(path)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "size": path.stat().st_size, "sha256": digest.hexdigest()}


def check_manifest(path: Path, saved: dict, decoders: list[dict], data: list[dict], k: int | None) -> None:
    """Refuse a cache built for other decoders, other data or fewer top-k logits, naming them.

    decoders: [{"name", "fingerprint"}] of this run; data: file_fingerprint() of its data files.
    Data files are compared by content (size and SHA-256): a copy elsewhere is the same data."""
    where = f"distillation cache {path}"
    if saved.get("format") != FORMAT:
        raise ValueError(f"{where} has format {saved.get('format')!r}; this version reads format {FORMAT}")
    built = saved["decoders"]
    if len(built) != len(decoders):
        raise ValueError(f"{where} was built for {len(built)} decoder(s), this run has {len(decoders)}")
    for i, (old, new) in enumerate(zip(built, decoders)):
        if old["name"] != new["name"] or old["fingerprint"] != new["fingerprint"]:
            raise ValueError(
                f"{where} was built for decoder {i} {old['name']!r} (weights {old['fingerprint']}), "
                f"not for this run's {new['name']!r} (weights {new['fingerprint']}): rebuild it "
                "with arc-encoder distill-cache"
            )
    same = [(f["size"], f["sha256"]) for f in saved["data"]] == [(f["size"], f["sha256"]) for f in data]
    if not same:
        old = ", ".join(f"{f['path']} ({f['size']} bytes, sha256 {f['sha256'][:12]})" for f in saved["data"])
        new = ", ".join(f"{f['path']} ({f['size']} bytes, sha256 {f['sha256'][:12]})" for f in data)
        raise ValueError(
            f"{where} was built from data file(s) {old}, not from this run's {new}: rebuild it "
            "with arc-encoder distill-cache"
        )
    if k is not None and k > saved["k"]:
        raise ValueError(f"{where} holds the teacher's top-{saved['k']} logits; distill.k asks for {k}")


class TeacherCache:
    """A folder of cached teacher top-k logits, checked against a run on opening."""

    def __init__(self, path: Path, manifest: dict):
        self.path, self.manifest = path, manifest
        self.k: int = manifest["k"]

    @classmethod
    def open(cls, path: str | Path, decoders: list[dict], data: list[dict], k: int | None = None) -> TeacherCache:
        """An existing cache, refused unless it was built for these decoders and data files."""
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise FileNotFoundError(
                f"distill.cache: {path} is not a distillation cache (no {MANIFEST}); build it with "
                "arc-encoder distill-cache CONFIG"
            )
        saved = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        check_manifest(path, saved, decoders, data, k)
        return cls(path, saved)

    @classmethod
    def create(cls, path: str | Path, decoders: list[dict], data: list[dict], k: int) -> TeacherCache:
        """A new cache, or an existing one built for the same decoders, data and k (to extend it)."""
        path = Path(path)
        if (path / MANIFEST).is_file():
            cache = cls.open(path, decoders, data)
            if cache.k != k:
                raise ValueError(f"distillation cache {path} holds top-{cache.k} logits, not {k}: use another folder")
            return cache
        if path.exists() and any(path.iterdir()):
            raise FileExistsError(f"{path} is not empty and holds no distillation cache: choose another folder")
        manifest = {"format": FORMAT, "k": k, "decoders": decoders, "data": data}
        (path / ENTRIES).mkdir(parents=True, exist_ok=True)
        write_json(path / MANIFEST, manifest)
        return cls(path, manifest)

    def _file(self, sample: Sample, decoder: int) -> Path:
        key = sample_key(sample, decoder)
        return self.path / ENTRIES / key[:2] / f"{key}.safetensors"

    def has(self, sample: Sample, decoder: int) -> bool:
        return self._file(sample, decoder).is_file()

    def put(self, sample: Sample, decoder: int, tokens: list[int], values: torch.Tensor, indices: torch.Tensor):
        if values.shape != (len(tokens), self.k) or indices.shape != values.shape:
            raise ValueError(f"expected [{len(tokens)}, {self.k}] values and indices, got {tuple(values.shape)}")
        file = self._file(sample, decoder)
        file.parent.mkdir(exist_ok=True)
        tensors = {
            "tokens": torch.tensor(tokens, dtype=torch.long),
            "values": values.float().contiguous(),
            "indices": indices.long().contiguous(),
        }
        write_file(file, lambda tmp: save_file(tensors, str(tmp)))

    def get(self, sample: Sample, decoder: int) -> dict[str, torch.Tensor]:
        file = self._file(sample, decoder)
        if not file.is_file():
            raise MissingTeacherLogits(
                f"distillation cache {self.path} has no teacher logits for this sample (decoder {decoder}, "
                f"{len(sample.text_ids)} text tokens): it was built for fewer steps, or for another data "
                "config; extend it with arc-encoder distill-cache"
            )
        return load_file(str(file))

    def rows(
        self, samples: list[Sample], tokens: list[tuple[int, int]], decoder: int, k: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's top-k (values [T, k], indices [T, k]) for the (sample i, text token)
        pairs `tokens`, in their order; the first k of the cached ones (default: all)."""
        k = self.k if k is None else k
        if k > self.k:
            raise ValueError(f"distillation cache {self.path} holds top-{self.k} logits, not {k}")
        entries = {i: self.get(samples[i], decoder) for i in sorted({i for i, _ in tokens})}
        where = {i: {t: r for r, t in enumerate(e["tokens"].tolist())} for i, e in entries.items()}
        values, indices = [], []
        for i, token in tokens:
            row = where[i].get(token)
            if row is None:
                raise MissingTeacherLogits(f"distillation cache {self.path}: no teacher logits for text token {token}")
            values.append(entries[i]["values"][row, :k])
            indices.append(entries[i]["indices"][row, :k])
        return torch.stack(values), torch.stack(indices)
