"""Compact saved models: only the tensors that differ from the backbone the encoder was cut from.

An encoder starts as the first blocks of a public backbone, and a run with
`train_encoder_blocks: k` changes only the last k of them. A full save repeats hundreds of MB the
user already has (the embedded GGUF); a delta keeps the changed blocks, the projectors and the
special tokens, and `ARCModel.from_pretrained` rebuilds the rest from the backbone. The weights
file's SHA-256 is recorded beside it and checked before anything is read, so a truncated or edited
file is refused by name instead of silently giving another model.

Models this project trains and ships live in the package's `pretrained/` folder, each under its
own name with its checksum pinned here as well (SHIPPED): `ARCModel.from_pretrained("smollm2-arc4")`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .registry import sha256_of

# State-dict names of tensors copied from the backbone; everything else (projectors, special
# tokens, memory tokens) exists only in a trained model and is always part of a delta.
BACKBONE_PREFIXES = ("encoder.embed_tokens.", "encoder.layers.")
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "pretrained"
# Shipped model name -> SHA-256 of its weights file (the model card in its folder says how it was trained).
SHIPPED: dict[str, str] = {"smollm2-arc4": "9ad88c20497de6303774d27576de415f87b2b5d9a02c1d9fcaaf0fd2e895ff16"}


def shipped_folder(name: str) -> Path | None:
    """The package folder of a shipped model name, or None for any other name."""
    return SHIPPED_DIR / name if name in SHIPPED else None


def delta_of(state: dict[str, torch.Tensor], backbone: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of `state` a load from `backbone` would not reproduce bit for bit."""
    return {
        k: v
        for k, v in state.items()
        if not k.startswith(BACKBONE_PREFIXES) or k not in backbone or not torch.equal(v, backbone[k])
    }


def check_checksum(file: Path, recorded, pinned: str | None) -> None:
    """Refuse a weights file whose SHA-256 is not the one recorded beside it (and, for a shipped
    model, the one pinned in this package)."""
    if not file.is_file():
        raise FileNotFoundError(f"missing weights file {file}")
    if not isinstance(recorded, str):
        raise ValueError(f"{file.parent}/arc_config.json records no sha256 for its delta weights")
    found = sha256_of(file)
    for what, want in (("recorded in its arc_config.json", recorded), ("pinned for this shipped model", pinned)):
        if want is not None and found != want:
            raise ValueError(
                f"{file} is corrupt or was changed: its SHA-256 is {found[:16]}..., {what} is {want[:16]}... "
                "Reinstall the package (shipped models) or save the model again."
            )
