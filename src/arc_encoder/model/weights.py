"""Reading a weights file, checking it against what a model expects (errors naming both), and
copying whole tensors into parameters that may be sharded."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.distributed.tensor import DTensor, distribute_tensor


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing, truncated or garbage file is a ValueError
    (FileNotFoundError when absent) naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing weights file {path}")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for truncated or corrupt files
        raise ValueError(f"cannot read weights from {path}: {e}") from None


def check_tensors(found: dict[str, torch.Tensor], expected: dict[str, tuple], where: str, hint: str = "") -> None:
    """Every expected tensor present with its shape, nothing else; else one error listing all."""
    missing = sorted(set(expected) - set(found))
    unknown = sorted(set(found) - set(expected))
    shapes = [
        f"{k}: expected {tuple(expected[k])}, found {tuple(found[k].shape)}"
        for k in sorted(expected)
        if k in found and tuple(found[k].shape) != tuple(expected[k])
    ]
    if missing or unknown or shapes:
        raise ValueError(
            f"{where} does not match:"
            + (f"\n  missing key(s): {missing[:8]}{' ...' if len(missing) > 8 else ''}" if missing else "")
            + (f"\n  unknown key(s): {unknown[:8]}{' ...' if len(unknown) > 8 else ''}" if unknown else "")
            + (f"\n  shape mismatch: {'; '.join(shapes[:8])}" if shapes else "")
            + hint
        )


def shapes_of(state: dict[str, torch.Tensor]) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items()}


def laid_out_as(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` laid out as `like`: this rank's shard for a DTensor, else a copy on its device."""
    full = full.to(device=like.device, dtype=like.dtype)
    if isinstance(like, DTensor):
        # every rank read the same file, so each takes its own shard without communication
        return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)
    return full


def copy_into(target: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a whole tensor into `target`, a tensor of a state dict, sharded (DTensor) or not."""
    value = laid_out_as(full, target)
    if isinstance(target, DTensor):
        target.to_local().copy_(value.to_local())
    else:
        target.copy_(value)
