"""The model a run starts from: a fresh ARCModel, or one warm-started from a saved model.

Warm starts cover the paper's three uses (method.md §7.2):
- fine-tuning after pretraining, possibly at another pooling factor (pooling has no weights);
- training on more or other decoders: adapters of decoders the saved model knows (matched by the
  decoder name in its config) are loaded, the others start fresh;
- new-decoder adaptation: fresh projector, <Rec>/<Cont> copied from one of the saved decoders
  (`new_special_from`), encoder frozen by the run's `freeze_encoder`.
`init_from` is a saved model folder (full or delta), a shipped model name, or a training run folder
(its latest checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ..devices import DTYPES, resolve_device
from ..model.arc import CONFIG_FILE, WEIGHTS_FILE, ARCModel, read_saved_config
from ..model.delta import BACKBONE_PREFIXES, SHIPPED, check_checksum, shipped_folder
from .config import TrainConfig

# What a warm start may not change: the encoder's weights would not fit.
_ENCODER_SHAPE = ("backbone", "drop_layers", "pooling", "memory_tokens", "bottleneck")


def build_model(config: TrainConfig, log=print) -> ARCModel:
    """The run's model, its frozen decoders read in the dtype `decoder_dtype` resolves to on the
    run's device (the trainer would cast them otherwise, after holding them in float32)."""
    spec = config.model
    dtype = DTYPES[config.frozen_decoder_dtype(resolve_device(config.device).type)]
    if spec.init_from is None:
        return ARCModel.from_config(config.arc_config(), pretrained=spec.pretrained, decoder_dtype=dtype)
    source = saved_model_dir(spec.init_from)
    meta, saved = read_saved_config(source)
    saved = saved.to_dict()
    arc_config = config.arc_config(saved=saved)
    changed = [k for k in _ENCODER_SHAPE if getattr(arc_config, k) != saved.get(k)]
    if changed:
        raise ValueError(
            f"model.init_from: {changed} differ from the saved model in {source}; "
            "a warm start keeps the encoder's shape (the pooling factor may change)"
        )
    delta = meta.get("weights") == "delta"
    if delta:  # the backbone's blocks, overwritten where the delta has them
        check_checksum(source / WEIGHTS_FILE, meta.get("sha256"), SHIPPED.get(str(spec.init_from)))
        arc = ARCModel.from_config(arc_config, pretrained=spec.pretrained, decoder_dtype=dtype)
    else:  # the saved encoder config already has the truncated depth: no backbone weights are read
        arc = ARCModel.from_saved_architecture(source, arc_config, pretrained=spec.pretrained, decoder_dtype=dtype)
    load_warm_start(arc, source, saved["decoders"], spec.new_special_from, log, delta)
    return arc


def saved_model_dir(path: str | Path, role: str = "model.init_from") -> Path:
    """A saved model folder, or a training run folder (its latest complete checkpoint).
    `role` names the setting the path came from in the error."""
    from .checkpoint import latest_checkpoint

    if shipped := shipped_folder(str(path)):
        return shipped
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is not None:
        return latest
    raise FileNotFoundError(
        f"{role}: {path} is neither a saved ARC model (no {CONFIG_FILE}) "
        "nor a training run folder with a complete checkpoint"
    )


@torch.no_grad()
def load_warm_start(
    arc: ARCModel, source: Path, saved_decoders: list[str], special_from: int | None, log=print, delta: bool = False
) -> None:
    state = load_file(str(source / WEIGHTS_FILE))
    if special_from is not None and not 0 <= special_from < len(saved_decoders):
        raise ValueError(f"model.new_special_from={special_from}, but {source} has {len(saved_decoders)} decoder(s)")
    wanted: dict[str, str] = {}  # our key -> key in the saved file
    for key in arc.encoder.state_dict():
        name = f"encoder.{key}"
        if not delta or name in state or not name.startswith(BACKBONE_PREFIXES):  # a delta leaves them out
            wanted[name] = name
    for i, name in enumerate(arc.config.decoders):
        adapter_keys = arc.adapters[i].state_dict()
        if name in saved_decoders:
            j = saved_decoders.index(name)
            wanted.update({f"adapters.{i}.{k}": f"adapters.{j}.{k}" for k in adapter_keys})
            log(f"decoder {i} ({name}): projector and special tokens from {source} (decoder {j})")
        elif special_from is not None:
            for kind in ("rec", "cont"):
                wanted[f"adapters.{i}.{kind}"] = f"adapters.{special_from}.{kind}"
            log(f"decoder {i} ({name}): new projector; special tokens from saved decoder {special_from}")
        else:
            log(f"decoder {i} ({name}): new projector and special tokens")
    own = arc.state_dict()
    problems = [f"{src} (for {dst}) missing" for dst, src in wanted.items() if src not in state]
    problems += [
        f"{dst}: saved {tuple(state[src].shape)} vs model {tuple(own[dst].shape)}"
        for dst, src in wanted.items()
        if src in state and state[src].shape != own[dst].shape
    ]
    if problems:
        raise ValueError(f"model.init_from: {source / WEIGHTS_FILE} does not fit this model: {problems[:5]}")
    for dst, src in wanted.items():
        own[dst].copy_(state[src])
