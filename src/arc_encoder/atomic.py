"""Writing files and folders so that a kill at any moment leaves the old version or the new one,
never half of either: write under a temporary name beside the target, flush to disk, rename.

Temporary names are `<name>.tmp-<pid>` (files) and `.tmp-<name>-<random>` (folders), so whoever
cleans up after a kill can recognise them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def fsync(path: Path) -> None:
    """Flush a file, or a folder's entries (which makes a rename in it durable), to disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # folders cannot be opened this way on some systems
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) for a temporary sibling of `path`, flush it, and rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync(path.parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, value: Any, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(value, indent=indent))


def remove_debris(final: str | Path) -> None:
    """Remove the temporary folders and files a kill left beside `final` while writing it."""
    final = Path(final)
    if not final.parent.is_dir():
        return
    for path in final.parent.glob(f".tmp-{final.name}-*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in final.parent.glob(f"{final.name}.tmp-*"):
        path.unlink(missing_ok=True)


def write_folder(final: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp_folder), flush every file, then rename the folder to `final` (an existing
    `final` is replaced: it is moved aside first and removed once the new one is in place)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        write(tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                fsync(file)
        for folder in [*sorted((p for p in tmp.rglob("*") if p.is_dir()), reverse=True), tmp]:
            fsync(folder)
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-old-", dir=final.parent))
            os.rename(final, old / final.name)
        os.rename(tmp, final)
        fsync(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
