"""ARC-Encoder: compress text into a few vectors that a frozen Hugging Face LLM reads."""

from .config import PRESETS, ARCConfig
from .model.arc import ARCModel
from .model.generate import Generation
from .model.prompting import Compressed
from .prompt import Doc

__version__ = "0.1.0"
__all__ = ["ARCConfig", "ARCModel", "Compressed", "Doc", "Generation", "PRESETS"]
