"""LoRA on the encoder, through peft: the encoder's blocks stay frozen and each targeted linear
layer of the adapted blocks learns a low-rank update, W + (alpha / rank) B A.

A checkpoint stays an ordinary saved model (every command, `init_from` and `convert delta` read
it): its weights file holds the merged W + (alpha / rank) B A under the plain names. Beside it,
lora.safetensors keeps what an exact resume needs: each adapted layer's frozen W and its A, B.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from ..model.weights import read_weights
from .config import LoraConfig

LORA_FILE = "lora.safetensors"
ADAPTER = "default"  # peft's adapter name


def add_encoder_lora(encoder: nn.Module, config: LoraConfig) -> None:
    """Freeze `encoder` and give the targeted linear layers of its last `config.blocks` blocks
    (all without it) trainable LoRA factors, in place."""
    try:
        import peft
    except ImportError:
        raise ImportError("encoder_lora needs peft: pip install 'arc-encoder[train]'") from None

    n = len(encoder.layers)
    blocks = config.blocks or n
    if blocks > n:
        raise ValueError(f"encoder_lora.blocks={blocks}, but the encoder has only {n} blocks")
    encoder.requires_grad_(False)
    peft_config = peft.LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.targets),
        layers_to_transform=list(range(n - blocks, n)),
        layers_pattern="layers",
    )
    try:
        peft.inject_adapter_in_model(peft_config, encoder, adapter_name=ADAPTER)
    except ValueError as e:  # no module matched the targets
        raise ValueError(f"encoder_lora.targets {config.targets}: {e}") from None


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The LoRA-wrapped linear layers of `model`, by name ({} when it has none)."""
    if "peft" not in sys.modules:  # nothing added LoRA (add_encoder_lora imports peft): skip its import
        return {}
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def has_lora(model: nn.Module) -> bool:
    return bool(lora_layers(model))


@torch.no_grad()
def merged_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` (model's state dict) with each LoRA layer's entries replaced by its merged
    weight (and bias) under the plain names: what a model without LoRA loads."""
    merged = dict(state)
    for name, layer in lora_layers(model).items():
        base = layer.get_base_layer()
        for key in [k for k in merged if k.startswith(f"{name}.")]:
            del merged[key]
        merged[f"{name}.weight"] = (base.weight + layer.get_delta_weight(ADAPTER)).detach().cpu().clone()
        if base.bias is not None:
            merged[f"{name}.bias"] = base.bias.detach().cpu().clone()
    return merged


def lora_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of `state` that belong to LoRA layers (frozen base weights and factors)."""
    prefixes = tuple(f"{name}." for name in lora_layers(model))
    return {k: v for k, v in state.items() if k.startswith(prefixes)}


def unmerged_state(model: nn.Module, merged: dict[str, torch.Tensor], lora_file: Path) -> dict[str, torch.Tensor]:
    """The state dict to load into `model` (with LoRA) from a checkpoint's merged weights and
    its lora.safetensors: LoRA layers from the latter, everything else from the former."""
    if not lora_file.is_file():
        raise FileNotFoundError(f"{lora_file} is missing: this run trains encoder LoRA, its checkpoints hold one")
    state = read_weights(lora_file)
    layers = tuple(f"{name}." for name in lora_layers(model))
    state.update({k: v for k, v in merged.items() if not k.startswith(layers)})
    return state
