"""A file too large for one transfer, carried in parts over several calls and put back together.

    python benchmarks/staged_files.py split FILE DIR --part-mib 30    # DIR/manifest.json + DIR/NAME.partK

The manifest records the whole file's size and SHA-256 and each part's. On the receiving machine
`stage` moves each part that arrived into a stage folder outside the working tree (after checking
its SHA-256), so parts carried by earlier calls wait there; `assemble` refuses, naming every
missing part, until all are staged, then writes the file and checks it whole.
Standard library only: this runs before any wheel is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

MANIFEST = "manifest.json"


class MissingParts(RuntimeError):
    """Not every part of a staged file has arrived."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def part_name(name: str, index: int) -> str:
    return f"{name}.part{index + 1}"


def split(source: Path, out_dir: Path, part_bytes: int) -> dict:
    """Cut `source` into parts of at most `part_bytes` in `out_dir`, with the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    with open(source, "rb") as f:
        while block := f.read(part_bytes):
            path = out_dir / part_name(source.name, len(parts))
            path.write_bytes(block)
            parts.append({"file": path.name, "bytes": len(block), "sha256": hashlib.sha256(block).hexdigest()})
    manifest = {"name": source.name, "bytes": source.stat().st_size, "sha256": sha256_of(source), "parts": parts}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def read_manifest(carried: Path, stage: Path) -> dict:
    """The manifest carried now, else the one an earlier call staged."""
    for folder in (carried, stage):
        if (folder / MANIFEST).is_file():
            return json.loads((folder / MANIFEST).read_text())
    raise MissingParts(f"no {MANIFEST} in {carried} or {stage}: carry the parts folder made by `make gpu-parts`")


def stage(carried: Path, stage_dir: Path) -> list[str]:
    """Move every carried part into `stage_dir` after checking it; returns the parts staged now.
    A part whose checksum is wrong is refused by name (a broken transfer, or parts of another split)."""
    manifest = read_manifest(carried, stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    if (carried / MANIFEST).is_file():
        shutil.copyfile(carried / MANIFEST, stage_dir / MANIFEST)
    arrived = []
    for part in manifest["parts"]:
        path = carried / part["file"]
        if not path.is_file():
            continue
        if sha256_of(path) != part["sha256"]:
            raise ValueError(f"{path}: SHA-256 differs from the manifest; run `make gpu-parts` again and re-carry it")
        shutil.move(str(path), stage_dir / part["file"])
        arrived.append(part["file"])
    return arrived


def missing_parts(stage_dir: Path, manifest: dict) -> list[str]:
    return [p["file"] for p in manifest["parts"] if not (stage_dir / p["file"]).is_file()]


def assemble(stage_dir: Path, target: Path) -> Path:
    """Concatenate the staged parts into `target` (kept: a later call reuses it) and check the
    whole file's SHA-256; MissingParts names each part not staged yet."""
    manifest = read_manifest(stage_dir, stage_dir)
    if target.is_file() and target.stat().st_size == manifest["bytes"] and sha256_of(target) == manifest["sha256"]:
        return target
    missing = missing_parts(stage_dir, manifest)
    if missing:
        raise MissingParts(
            f"{manifest['name']} needs {len(manifest['parts'])} parts; missing here: {', '.join(missing)}. "
            "Carry each in a call while this machine is still warm (docs/scale.md, Prepared GPU run)"
        )
    partial = target.with_name(target.name + ".partial")
    with open(partial, "wb") as out:
        for part in manifest["parts"]:
            with open(stage_dir / part["file"], "rb") as f:
                shutil.copyfileobj(f, out, length=1 << 20)
    if sha256_of(partial) != manifest["sha256"]:
        partial.unlink()
        raise ValueError(f"the assembled {manifest['name']} has the wrong SHA-256 (parts of different splits?)")
    partial.replace(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description="split a file into parts with a SHA-256 manifest")
    parser.add_argument("command", choices=["split"])
    parser.add_argument("file", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--part-mib", type=float, default=30.0)
    args = parser.parse_args()
    manifest = split(args.file, args.out_dir, int(args.part_mib * 2**20))
    for part in manifest["parts"]:
        print(f"{args.out_dir / part['file']}  {part['bytes'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
