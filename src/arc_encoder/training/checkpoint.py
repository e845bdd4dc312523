"""Checkpoints that survive a kill at any moment, and the state they hold.

    out_dir/checkpoints/step_00000100/
        arc_config.json, model.safetensors, encoder/   ARCModel.save_pretrained: loadable for inference
        trainer_state.pt      optimizer, scheduler, step, per-rank RNG and data positions
        train_config.yaml     the run's configuration

The folder layout is model/saved.py's, which reads a run folder as its latest checkpoint.
A checkpoint is written into a temporary folder beside its final place, flushed to disk, then
renamed: a folder named `step_*` is always complete. Parameters may be FSDP2-sharded DTensors;
model and optimizer state are gathered into full tensors, keyed by parameter name, so a checkpoint
does not depend on how the run was parallelised. Every rank reads the checkpoint when resuming,
so out_dir must be on a file system all ranks share (as for any multi-node run).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributed.tensor import DTensor

from ..model.saved import CHECKPOINTS, STATE_FILE, list_checkpoints, load_state
from ..model.weights import laid_out_as, read_weights
from .lora import LORA_FILE, has_lora, unmerged_state

CONFIG_FILE = "train_config.yaml"


class CorruptCheckpoint(ValueError):
    """A checkpoint file that cannot be read; the message names it."""


# ------------------------------------------------------------------------- folders
def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS / f"step_{step:08d}"


def prune(out_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints, and temporary folders a kill left behind."""
    for _, path in list_checkpoints(out_dir)[:-keep]:
        # renamed first (one atomic step), so a kill while deleting never leaves a half step_*
        doomed = path.with_name(f".tmp-{path.name}-deleting")
        os.rename(path, doomed)
        shutil.rmtree(doomed)
    root = Path(out_dir) / CHECKPOINTS
    if root.is_dir():
        for path in root.glob(".tmp-*"):
            shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------- model and optimizer
def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A whole CPU copy of a tensor that may be a sharded DTensor (a collective for those)."""
    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().cpu().clone()


def _step_like(step: torch.Tensor, param: torch.Tensor, group: dict) -> torch.Tensor:
    """AdamW's `step` where this optimizer keeps it: a CPU scalar, or (fused or capturable, as on
    a GPU) a float32 scalar on the parameter's device, which the fused kernel requires."""
    if group.get("fused") or group.get("capturable"):
        return step.to(device=param.device, dtype=torch.float32)
    return step.clone()


def model_state(model) -> dict[str, torch.Tensor]:
    """Full tensors of everything ARCModel.save_pretrained writes (the decoders are not saved)."""
    return {k: _full(v) for k, v in model.trained_state().items()}


def load_model_state(model, file: str | Path) -> None:
    """Load a model.safetensors into a model whose parameters may be sharded."""
    try:
        state = read_weights(file)
        if has_lora(model):  # the file holds merged weights; LoRA layers come from beside it
            state = unmerged_state(model, state, Path(file).with_name(LORA_FILE))
    except (ValueError, FileNotFoundError) as e:
        raise CorruptCheckpoint(str(e)) from None
    load_state(model, state, f"{file} (against the model)")


def optimizer_state(optimizer: torch.optim.Optimizer, names: dict[torch.Tensor, str]) -> dict[str, Any]:
    """AdamW state keyed by parameter name, with full (gathered) tensors, plus the group settings."""
    state = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p in optimizer.state:  # parameters that never had a gradient have no state
                state[names[p]] = {k: _full(v) if torch.is_tensor(v) else v for k, v in optimizer.state[p].items()}
    groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [names[p] for p in g["params"]]}
        for g in optimizer.param_groups
    ]
    return {"state": state, "param_groups": groups}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, saved: dict[str, Any], names: dict[torch.Tensor, str]
) -> None:
    """Restore `optimizer_state` output; the groups must hold the same parameters."""
    groups = optimizer.param_groups
    saved_groups = saved["param_groups"]
    layout = [[names[p] for p in g["params"]] for g in groups]
    if layout != [g["params"] for g in saved_groups]:
        raise ValueError("the checkpoint's optimizer groups hold other parameters than this run's")
    by_name = {names[p]: p for g in groups for p in g["params"]}
    group_of = {names[p]: g for g in groups for p in g["params"]}
    optimizer.state.clear()
    for name, values in saved["state"].items():
        p = by_name[name]
        optimizer.state[p] = {
            k: (_step_like(v, p, group_of[name]) if k == "step" else laid_out_as(v, p)) if torch.is_tensor(v) else v
            for k, v in values.items()
        }
    for group, saved_group in zip(groups, saved_groups):
        group.update({k: v for k, v in saved_group.items() if k != "params"})


# ------------------------------------------------------------------------- random state
def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_trainer_state(folder: Path, state: dict[str, Any]) -> None:
    torch.save(state, folder / STATE_FILE)


def load_trainer_state(folder: Path) -> dict[str, Any]:
    # Pickled python and numpy RNG states and the data pipelines' own state live here, so this
    # is a full unpickle: resume only from run folders you trust, as you would run their code.
    try:
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, garbage bytes, a missing file
        raise CorruptCheckpoint(f"cannot read {folder / STATE_FILE} ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not {"step", "optimizer", "scheduler", "ranks"} <= set(state):
        raise CorruptCheckpoint(f"{folder / STATE_FILE} does not hold a trainer state")
    return state
