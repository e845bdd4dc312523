"""Prompt parts: a prompt is a list of plain text (str) and documents to compress (Doc)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Doc:
    """A document the encoder compresses; in a prompt it stands where its vectors go."""
    text: str
