"""Which teacher cache a run reads: the fingerprints of its decoders and data files, which a cache
(model/teacher_cache.py) is checked against before the trainer uses it, or the builder extends it."""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from ..data.sources import HUB_PREFIX, parse_sources
from ..model.arc import ARCModel
from ..model.teacher_cache import TeacherCache, file_fingerprint, weights_fingerprint
from .config import TrainConfig
from .distributed import broadcast_object


def data_fingerprints(config: TrainConfig) -> list[dict]:
    """file_fingerprint() of every file the run's data sections read (a folder: all its files);
    a hub data set, which has no local file, by its name and split."""
    out = []
    sections = [values for _, values in config.data_sections()]
    for spec in (spec for values in sections for spec in parse_sources(values.get("sources", []))):
        path = Path(spec.path)
        if spec.path.startswith(HUB_PREFIX):
            out.append({"path": spec.path, "size": 0, "sha256": f"{spec.path}:{spec.name}:{spec.split}"})
        elif path.is_dir():
            out += [file_fingerprint(f) for f in sorted(path.rglob("*")) if f.is_file()]
        else:
            out.append(file_fingerprint(path))
    return out


def decoder_fingerprints(arc: ARCModel) -> list[dict]:
    return [
        {"name": name, "fingerprint": weights_fingerprint(dec)} for name, dec in zip(arc.config.decoders, arc.decoders)
    ]


def open_cache(config: TrainConfig, arc: ARCModel, from_rank0: bool = False) -> TeacherCache | None:
    """The run's teacher cache (None without distill.cache), checked against its decoders and data.
    `from_rank0`: only rank 0 holds the decoders' weights (the others may hold them on the meta
    device): it fingerprints them for every rank."""
    d = config.distill
    if not d.cache or d.weight <= 0:
        return None
    if from_rank0:
        fingerprints = broadcast_object(decoder_fingerprints(arc) if dist.get_rank() == 0 else None)
    else:
        fingerprints = decoder_fingerprints(arc)
    return TeacherCache.open(d.cache, fingerprints, data_fingerprints(config), d.k)
