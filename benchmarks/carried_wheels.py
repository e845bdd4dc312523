"""Wheels for a machine that has PyTorch and transformers and no network (benchmarks/gpu_run.py).

    python benchmarks/carried_wheels.py list        # name==version, one a line (what `make gpu-wheels` downloads)
    python benchmarks/carried_wheels.py install DIR TARGET

`list` is read off this environment: the distributions the package and the GPU tests need (their
requirements, followed through every level), less those that torch and transformers already
pull in. `install` puts each wheel of DIR whose distribution the running Python lacks into
TARGET (pip --no-index --no-deps --target): a wheel never shadows what the machine already has,
so an image with newer versions keeps its own.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import subprocess
import sys
from pathlib import Path

# What the prepared run imports, beyond torch and transformers (pyproject's dependencies, less
# matplotlib: it only draws curves, and the run turns plotting off).
RUN_NEEDS = ("safetensors", "gguf", "accelerate", "sentencepiece", "pyyaml", "tqdm", "typer", "numpy", "pytest")
PREINSTALLED = ("torch", "transformers")


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(name: str) -> list[str] | None:
    """Names a distribution requires unconditionally (extras left out); None if not installed."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None
    names = []
    for requirement in dist.requires or []:
        spec, _, marker = requirement.partition(";")
        if "extra" in marker:
            continue
        names.append(re.split(r"[\s<>=!~\[(]", spec.strip(), maxsplit=1)[0])
    return names


def closure(roots: tuple[str, ...]) -> set[str]:
    """The roots and everything they require, at every depth (canonical names)."""
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        if canonical(name) in seen:
            continue
        seen.add(canonical(name))
        stack += _requirements(name) or []
    return seen


def carried() -> list[str]:
    """`name==version` of each distribution to carry, as installed here."""
    missing = sorted(closure(RUN_NEEDS) - closure(PREINSTALLED))
    return [f"{name}=={metadata.version(name)}" for name in missing]


def wheel_distribution(wheel: Path) -> str:
    """The distribution a wheel file holds (its name's first field, PEP 427)."""
    return canonical(wheel.name.split("-", 1)[0])


def install(wheel_dir: Path, target: Path) -> list[str]:
    """Install the wheels of `wheel_dir` whose distributions are absent here into `target`;
    returns the file names installed."""
    wanted = []
    for wheel in sorted(wheel_dir.glob("*.whl")):
        try:
            metadata.version(wheel_distribution(wheel))
        except metadata.PackageNotFoundError:
            wanted.append(wheel)
    if wanted:
        target.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        command += ["--disable-pip-version-check", "--target", str(target), *map(str, wanted)]
        subprocess.run(command, check=True)
    return [w.name for w in wanted]


def main() -> None:
    if sys.argv[1:2] == ["list"]:
        print("\n".join(carried()))
    elif sys.argv[1:2] == ["install"] and len(sys.argv) == 4:
        print("\n".join(install(Path(sys.argv[2]), Path(sys.argv[3]))))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
