"""Loading a model by name, as every command does: a saved model folder, or a preset."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import PRESETS
from .devices import resolve_device, resolve_dtype
from .model.arc import ARCModel
from .model.delta import SHIPPED


def quiet_transformers() -> None:
    """transformers' load reports (unused backbone blocks, progress bars) are noise here."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_model(model: str, decoder_dtype=None):
    """A saved model folder or a training run folder (its latest checkpoint), a shipped model
    ("smollm2-arc4": trained, in the package), or "PRESET-untrained" / a preset without shipped
    weights for a fresh, untrained model. `decoder_dtype` (default float32): what the frozen
    decoders are read into."""
    quiet_transformers()
    dtype = decoder_dtype or torch.float32
    if model in SHIPPED or Path(model).is_dir():  # a shipped model, a saved folder or a run folder
        return ARCModel.from_pretrained(model, decoder_dtype=dtype)
    preset = model.removesuffix(UNTRAINED)
    if preset in PRESETS:
        return ARCModel.from_config(preset, decoder_dtype=dtype)
    names = sorted(SHIPPED) + sorted(p + UNTRAINED if p in SHIPPED else p for p in PRESETS)
    raise ValueError(f"{model!r} is neither a saved model folder nor a model name ({', '.join(names)})")


UNTRAINED = "-untrained"  # "smollm2-arc4-untrained": the preset's architecture, fresh weights
DEFAULT_MODEL = "smollm2-arc4"  # shipped in the package: SmolLM2-135M's encoder for itself, x4
MODEL_HELP = "saved model or run folder, shipped model (smollm2-arc4) or PRESET-untrained"
DECODER_HELP = "the decoder: its name as the model's config lists it (smollm2-135m, gemma3-270m) or its index"


def placement(device: str = "auto", dtype: str = "auto"):
    """`--device` and `--dtype` names -> (torch device, torch dtype); a bad name, or a GPU asked
    for where torch sees none, is a ValueError naming it (checked before any model loads)."""
    where = resolve_device(device)
    return where, resolve_dtype(dtype, where)


def load_model_on(model: str, device: str = "auto", dtype: str = "auto"):
    """`load_model` on a device in a dtype, in eval mode: the decoders are read straight into the
    dtype; the encoder and adapters are cast (`ARCModel.to_dtype`: the fingerprint is unchanged)."""
    where, dtype = placement(device, dtype)
    arc = load_model(model, decoder_dtype=dtype)
    return arc.to_dtype(dtype).to(where).eval()


DEVICE_HELP = "auto (a GPU if torch sees one), cpu, cuda or cuda:N"
DTYPE_HELP = "auto (bfloat16 on a GPU, float32 on a CPU), float32, bfloat16 or float16"
