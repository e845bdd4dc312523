"""Loading a model by name, as every command does: a saved model folder, or a preset."""

from __future__ import annotations

from pathlib import Path


def quiet_transformers() -> None:
    """transformers' load reports (unused backbone blocks, progress bars) are noise here."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_model(model: str):
    """A saved model folder, or a preset name for a fresh (untrained) model."""
    from .config import PRESETS
    from .model.arc import ARCModel

    quiet_transformers()
    if Path(model).is_dir():
        return ARCModel.from_pretrained(model)
    if model in PRESETS:
        return ARCModel.from_config(model)
    raise ValueError(f"{model!r} is neither a saved model folder nor a preset ({', '.join(sorted(PRESETS))})")
