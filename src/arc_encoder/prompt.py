"""Prompt building blocks shared by training, evaluation and serving.

A prompt is a list of pieces: plain `str` text for the decoder, and `Doc` for a document that the
encoder compresses and whose vectors are spliced in at that place.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Doc:
    """A document the encoder compresses; in a prompt it stands where its vectors go."""

    text: str
