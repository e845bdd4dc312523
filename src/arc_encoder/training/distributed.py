"""Running the training step on one or many processes: process group, DDP / FSDP2, collectives.

Launched by `torchrun --nproc-per-node N`, every process runs the same recipe; WORLD_SIZE > 1 turns
this on. Data parallelism wraps the ARCModel itself (its forward is the training loss):

- DDP: told to ignore the frozen decoders, which stay replicated: DDP neither broadcasts nor
  reduces them. Every trainable tensor, the special tokens included, is a parameter of the
  encoder or an adapter, so all their gradients are all-reduced (the official code left the
  special tokens out and let each rank drift).
- FSDP2: one root shards everything: each encoder block and each frozen decoder block is its own
  `fully_shard` group, and the root takes what is left (embeddings, adapters and special tokens,
  decoder heads). With `fsdp_decoders: replicate` the decoders' parameters are ignored by FSDP2
  and stay whole on every rank, as under DDP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import wraps

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..devices import resolve_device


@dataclass
class Runtime:
    rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(preference: str) -> torch.device:
    """The config's `device` (auto, cpu, cuda) -> this process's device: under torchrun the GPU
    of its LOCAL_RANK."""
    device = resolve_device(preference)
    if device.type == "cpu":
        return device
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(preference: str = "auto") -> Runtime:
    """Join the process group torchrun describes (gloo on CPU, nccl on GPU), if there is one."""
    device = pick_device(preference)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return Runtime(dist.get_rank(), dist.get_world_size(), device)
    return Runtime(0, 1, device)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order (on every rank)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's `obj` (picklable), on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def decoder_states(arc: nn.Module) -> list[str]:
    """Names of every parameter and buffer of the frozen decoders, as `arc` names them."""
    named = [
        *arc.decoders.named_parameters(remove_duplicate=False),
        *arc.decoders.named_buffers(remove_duplicate=False),
    ]
    return [f"decoders.{name}" for name, _ in named]


def wrap(arc: nn.Module, parallel: str, runtime: Runtime, bf16: bool = False, shard_decoders: bool = True) -> nn.Module:
    """The training module for this runtime: `arc` itself, DDP around it, or `arc` FSDP2-sharded
    (the frozen decoders too, unless `shard_decoders` is False: then each rank keeps them whole,
    as under DDP). Called, it returns `arc`'s forward: (loss sum, supervised tokens).

    `bf16` (the step runs under bf16 autocast): FSDP2 gathers the parameters in bf16 (half the
    all-gather traffic and unsharded memory) and reduce-scatters gradients in fp32 onto the fp32
    shards AdamW updates. DDP keeps fp32 parameters and reduces fp32 gradients either way."""
    if not runtime.distributed:
        return arc
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(arc, decoder_states(arc))
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        # Every step leaves parameters without a gradient: one of <Rec>/<Cont>, and the adapters
        # of the decoders it does not train. Buffers are RoPE tables, equal on every rank.
        return DistributedDataParallel(arc, device_ids=ids, find_unused_parameters=True, broadcast_buffers=False)
    if parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(runtime.device.type, (runtime.world_size,))
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
        shard = {"mesh": mesh, **({"mp_policy": policy} if policy else {})}
        for layer in _blocks(arc) if shard_decoders else arc.encoder.layers:
            fully_shard(layer, **shard)
        fully_shard(arc, **shard, ignored_params=None if shard_decoders else set(arc.decoders.parameters()))
        return arc
    raise ValueError(f"parallel must be 'ddp' or 'fsdp', got {parallel!r}")


def enable_activation_checkpointing(arc: nn.Module) -> None:
    """Recompute each encoder and decoder block in the backward pass instead of storing its
    activations. The frozen decoders stay in eval mode, where transformers' own switch does
    nothing, yet their activations are what dominates memory; so we wrap each block's forward.
    Module hooks (FSDP2's) stay outside the recomputed part."""
    for layer in _blocks(arc):
        if getattr(layer, "_arc_checkpointed", False):
            continue
        layer.forward = _recomputed(layer.forward)
        layer._arc_checkpointed = True


def _blocks(arc: nn.Module) -> list[nn.Module]:
    """Every encoder block, then every block of every frozen decoder."""
    layers = list(arc.encoder.layers)
    for decoder in arc.decoders:
        layers += list(decoder.base_model.layers)
    return layers


# The names transformers 5.x gives a block's KV-cache argument (renamed within 5.x).
CACHE_ARGUMENTS = ("cache", "past_key_values", "past_key_value")


def _recomputed(forward):
    @wraps(forward)
    def run(*args, **kwargs):
        if torch.is_grad_enabled():
            # A block that appends to a cache would append twice (forward, then recomputation),
            # and its recomputed attention would read twice the keys the mask covers.
            cached = [k for k in CACHE_ARGUMENTS if kwargs.get(k) is not None]
            if cached:
                raise RuntimeError(
                    f"an activation-checkpointed block was called with a KV cache ({cached[0]}=): "
                    "a training forward must pass use_cache=False"
                )
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


# What `compile: true` compiles the blocks with (tests swap in "eager": tracing without code generation).
COMPILE_BACKEND = "inductor"


def compile_blocks(arc: nn.Module, backend: str | None = None) -> None:
    """torch.compile the forward of each encoder and decoder block, after activation checkpointing
    wrapped it (the recomputation is compiled with it) and outside module hooks (FSDP2's gathers
    run eagerly around it). Shapes vary from batch to batch: after the first recompilation
    dynamo treats the lengths as dynamic instead of compiling every length."""
    backend = backend or COMPILE_BACKEND
    for layer in _blocks(arc):
        if getattr(layer, "_arc_compiled", False):
            continue
        layer.forward = torch.compile(layer.forward, backend=backend)
        layer._arc_compiled = True


def optimizer_options(device: torch.device) -> dict:
    """AdamW options for this device: the fused kernel on a GPU (one launch for all tensors
    instead of several per tensor); the default implementation on a CPU."""
    return {"fused": True} if device.type == "cuda" else {}


def set_matmul_precision(device: torch.device, tf32: bool) -> None:
    """TF32 tensor cores for float32 matmuls on a GPU (PyTorch's "high" precision), or exact
    float32 ("highest"). A process-wide setting; nothing changes on a CPU."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
