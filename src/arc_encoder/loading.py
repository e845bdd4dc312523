"""Loading a model by name, as every command does: a saved model folder, or a preset."""

from __future__ import annotations

from pathlib import Path


def quiet_transformers() -> None:
    """transformers' load reports (unused backbone blocks, progress bars) are noise here."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_model(model: str):
    """A saved model folder or a training run folder (its latest checkpoint), a shipped model
    ("smollm2-arc4": trained, in the package), or "PRESET-untrained" / a preset without shipped
    weights for a fresh, untrained model."""
    from .config import PRESETS
    from .model.arc import ARCModel
    from .model.delta import SHIPPED
    from .training.model_init import saved_model_dir

    quiet_transformers()
    if model in SHIPPED:
        return ARCModel.from_pretrained(model)  # verifies the pinned checksum
    if Path(model).is_dir():  # a saved model, or a training run folder: its latest checkpoint
        return ARCModel.from_pretrained(saved_model_dir(model, role="model"))
    preset = model.removesuffix(UNTRAINED)
    if preset in PRESETS:
        return ARCModel.from_config(preset)
    names = sorted(SHIPPED) + sorted(p + UNTRAINED if p in SHIPPED else p for p in PRESETS)
    raise ValueError(f"{model!r} is neither a saved model folder nor a model name ({', '.join(names)})")


UNTRAINED = "-untrained"  # "smollm2-arc4-untrained": the preset's architecture, fresh weights
DEFAULT_MODEL = "smollm2-arc4"  # shipped in the package: SmolLM2-135M's encoder for itself, x4
MODEL_HELP = "saved model or run folder, shipped model (smollm2-arc4) or PRESET-untrained"
