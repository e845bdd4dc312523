"""ARC-Encoder: compress text into a few vectors that a frozen Hugging Face LLM reads."""

__version__ = "0.1.0"
