"""FSDP2 runs without a whole model on every rank: rank 0 reads the weights into host memory,
every other rank builds the same model on the meta device (names, shapes, dtypes; no storage, no
weights read). After `fully_shard` each rank gives storage to its own shards only (and to the
frozen decoders when they are replicated) and receives their values from rank 0, one tensor at a
time. DDP and single-process runs keep building the whole model everywhere.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..devices import DTYPES, resolve_device
from ..model.arc import ARCModel
from ..model.saved import ENCODER_DIR, locate
from .config import TrainConfig
from .distributed import Runtime, broadcast_object
from .model_init import build_model


def weights_from_rank0(config: TrainConfig, runtime: Runtime) -> bool:
    """Whether this run builds the model on rank 0 only: a multi-rank FSDP2 run."""
    return runtime.distributed and config.parallel == "fsdp"


def model_structure(config: TrainConfig) -> ARCModel:
    """The model `build_model` returns, on the meta device: the same tensors by name, shape, dtype
    and tying (the encoder of a warm start is built from its saved architecture), no weights read."""
    spec = config.model
    dtype = DTYPES[config.frozen_decoder_dtype(resolve_device(config.device).type)]
    arc_config, encoder_dir = config.arc_config(), None
    if spec.init_from is not None:
        source = locate(spec.init_from, role="model.init_from")
        arc_config = config.arc_config(saved=source.config.to_dict())
        encoder_dir = None if source.delta else source.folder / ENCODER_DIR
    with torch.device("meta"):
        return ARCModel.from_config(arc_config, pretrained=False, decoder_dtype=dtype, encoder_dir=encoder_dir)


def build_for_rank(config: TrainConfig, runtime: Runtime, log=print) -> ARCModel:
    """The run's model as this rank should hold it before sharding: whole on rank 0 (or on every
    rank when the run does not shard from rank 0), its structure on the meta device elsewhere."""
    if runtime.is_main or not weights_from_rank0(config, runtime):
        return build_model(config, log=log)
    return model_structure(config)


def on_meta(module: nn.Module) -> bool:
    return any(t.is_meta for t in (*module.parameters(), *module.buffers()))


def share_rng_state() -> None:
    """Give every rank rank 0's torch (CPU) generator state: building random weights and LoRA
    factors advanced it on rank 0 only, where before each rank built the same and stayed equal."""
    torch.set_rng_state(broadcast_object(torch.get_rng_state()))


def load_shards_from_rank0(arc: nn.Module, weights: dict[str, torch.Tensor] | None, device: torch.device) -> None:
    """After `fully_shard`: storage for what this rank holds (on a meta rank), then rank 0's
    `weights` (its full state dict; None on other ranks) broadcast into it, each rank keeping its
    shard. Buffers that no state dict holds (RoPE tables) are broadcast as they are."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if on_meta(arc):
        arc.to_empty(device=device)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(arc, weights if weights is not None else {}, options=options)
    for buffer in arc.buffers():
        dist.broadcast(buffer, src=0)
