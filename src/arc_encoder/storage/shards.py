"""Shard files: safetensors files holding many chunks' stored vectors.

A shard holds one tensor, "vectors" [n_rows, ...] (the codec's stored form), with the chunks' rows
one after another; a chunk is located by (shard, first row, n rows). One tensor rather than one per
chunk because each safetensors tensor costs ~70 header bytes, which at PQ rates (e.g. 32 bytes per
vector) would be a large share of the store.

A shard is written once and never modified: it goes to a temp file that is fsynced and then renamed,
so a crash leaves either the whole shard or a temp file, never a half shard under a shard name.
Which shards are live is recorded in the store's SQLite database, not by the file system.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ..atomic import write_file

SHARD_RE = re.compile(r"^shard-(\d+)\.safetensors$")
# Temp files carry the writer's pid so two crashed writers never collide on a name.
TEMP_RE = re.compile(r"^shard-\d+\.safetensors\.tmp-\d+$")
TENSOR = "vectors"


class CorruptStoreError(ValueError):
    """A store file is missing or unreadable; the message names the file."""


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}.safetensors"


def write_shard(path: Path, rows: np.ndarray, metadata: dict[str, str]) -> int:
    """Write rows [n_rows, ...] to path atomically; returns the file's size in bytes."""
    write_file(path, lambda tmp: save_file({TENSOR: np.ascontiguousarray(rows)}, str(tmp), metadata=metadata))
    return path.stat().st_size


def read_rows(path: Path, ranges: list[tuple[int, int]]) -> list[np.ndarray]:
    """The rows [first, first + n) of one shard for each (first, n) in ranges; errors name the file."""
    if not path.is_file():
        raise CorruptStoreError(f"shard file {path} is missing (it is listed in the store's meta.sqlite)")
    try:
        with safe_open(str(path), framework="np") as f:
            if TENSOR not in f.keys():
                raise CorruptStoreError(f"shard file {path} has no {TENSOR!r} tensor")
            view = f.get_slice(TENSOR)  # reads only the requested rows from disk
            n_rows = view.get_shape()[0]
            out = []
            for first, n in ranges:
                if first < 0 or first + n > n_rows:
                    raise CorruptStoreError(
                        f"shard file {path} has {n_rows} rows, rows {first}..{first + n} were expected"
                    )
                out.append(view[first : first + n])
            return out
    except (SafetensorError, OSError) as e:
        raise CorruptStoreError(f"shard file {path} is unreadable: {e}") from e


def leftover_files(folder: Path, live: set[str]) -> list[Path]:
    """Temp shard files and shard files not in live: what an interrupted write leaves behind."""
    out = []
    for entry in folder.iterdir():
        if TEMP_RE.match(entry.name) or (SHARD_RE.match(entry.name) and entry.name not in live):
            out.append(entry)
    return out
