"""Prompt building blocks shared by training, evaluation and serving.

A prompt is a list of pieces: plain `str` text for the decoder, and `Doc` for a document that the
encoder compresses and whose vectors are spliced in at that place.

The few-shot QA template (method.md §6.3, §8.2), the one every part of the library writes:

    "Document: " [d1] "\nQuestion: q1\nAnswer: a1\n\nDocument: " ... [d] "\nQuestion: q\nAnswer:"

and without documents (closed-book) `"Question: q1\nAnswer: a1\n\n" ... "Question: q\nAnswer:"`.
No space after the last "Answer:": the model generates it as part of its answer.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Doc:
    """A document the encoder compresses; in a prompt it stands where its vectors go."""

    text: str


DOCUMENT = "Document: "  # what comes before a document's vectors (or text)
SHOT_END = "\n\n"  # between an answered example and the next one


def after_document(question: str | None) -> str:
    """The text between a document and its answer: `"\nQuestion: q\nAnswer:"` (just
    `"\nAnswer:"` for records without a question, e.g. summaries with an instruction)."""
    return f"\nQuestion: {question}\nAnswer:" if question else "\nAnswer:"


def closed_question(question: str) -> str:
    """A question with no document: `"Question: q\nAnswer:"`."""
    return f"Question: {question}\nAnswer:"
