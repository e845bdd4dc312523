"""The model a training config builds, on the meta device: every parameter with its exact shape
and requires_grad, and no storage, no weights read, no network."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ..config import PRESETS, ARCConfig
from ..model.arc import ARCModel
from ..model.encoder import Encoder, truncated_config
from ..model.saved import ENCODER_DIR, locate
from ..training.config import TrainConfig
from ..training.trainer import choose_trained
from .architectures import architecture

# What a warm start (`model.init_from`) that is not on this machine is planned as, when the config
# names its decoders: the paper's encoder, from which every paper config starts (the decoders and
# the pooling come from the config).
DEFAULT_INIT_PRESET = "llama3-arc8"


@dataclass
class PlannedModel:
    arc: ARCModel  # on the meta device, trained parameters chosen as the trainer chooses them
    config: ARCConfig
    notes: list[str]  # what was assumed to build it


def arc_config_for(config: TrainConfig, init_preset: str | None = None) -> tuple[ARCConfig, Path | None, str]:
    """The run's ARCConfig; the folder its truncated encoder config is read from (a warm start
    that is on this machine), and a note when a warm start is not here and a preset stands in:
    `init_preset`, else the paper's encoder when the config names its decoders itself."""
    if config.model.init_from is None:
        return config.arc_config(), None, ""
    try:
        located = locate(config.model.init_from, role="model.init_from")
    except FileNotFoundError:
        if init_preset is None and "decoders" not in config.model.arc:
            raise LookupError(
                f"model.init_from {config.model.init_from} is not here and the config does not name its "
                f"decoders: say what it is with --init-preset (presets: {sorted(PRESETS)})"
            ) from None
        preset = init_preset or DEFAULT_INIT_PRESET
        if preset not in PRESETS:
            raise ValueError(f"--init-preset: unknown preset {preset!r}; presets: {sorted(PRESETS)}") from None
        note = f"model.init_from {config.model.init_from} is not here: its encoder is planned as preset {preset}"
        return config.arc_config(saved=PRESETS[preset].to_dict()), None, note
    source = located.folder
    encoder_folder = source / ENCODER_DIR if (source / ENCODER_DIR / "config.json").is_file() else None
    return config.arc_config(saved=located.config.to_dict()), encoder_folder, ""


def build_meta_model(config: TrainConfig, architectures: Path | None, init_preset: str | None = None) -> PlannedModel:
    arc_config, saved, note = arc_config_for(config, init_preset)
    if saved is not None:
        encoder_config = AutoConfig.from_pretrained(saved)  # a saved encoder's: already truncated
        encoder_config._attn_implementation = arc_config.attn_implementation
    else:
        backbone = architecture(arc_config.backbone, architectures)
        encoder_config = truncated_config(
            backbone, arc_config.drop_layers, arc_config.attn_implementation, arc_config.backbone
        )
    decoder_configs = [architecture(name, architectures) for name in arc_config.decoders]
    with torch.device("meta"):
        encoder = Encoder(encoder_config, arc_config)
        decoders = [AutoModelForCausalLM.from_config(c).requires_grad_(False) for c in decoder_configs]
        arc = ARCModel(arc_config, encoder, decoders, None, [None] * len(decoders))
        choose_trained(arc, config)
    return PlannedModel(arc, arc_config, [note] if note else [])
