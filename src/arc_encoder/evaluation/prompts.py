"""Few-shot evaluation prompts (method.md §8.2, §8.4, §12.4).

A prompt is a list of pieces: `str` is text the decoder reads as tokens, `Doc` is a document the
encoder compresses (its vectors, then `<Cont>`, go where the Doc stands). The prompt is assembled
from pieces and never re-split from a flat string, so a document that itself contains
"\\nQuestion:" cannot shift the template (the reference code's regex split could; method.md §11.1).

One template serves every system: `arc_prompt` builds it (through the one prompt builder,
prompt.qa_prompt, that fine-tuning and serving use too), and the open-book baseline is the same
prompt with each Doc written out as text (`doc_as_text`), so the two differ only in how the
documents reach the decoder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from arc_encoder.evaluation.tasks import Example
from arc_encoder.prompt import QA, Doc, as_text, qa_prompt

Piece = str | Doc
Prompt = list[Piece]


def _docs(example: Example, separate_passages: bool) -> list[Doc]:
    if not example.passages:
        raise ValueError(f"example {example.id!r} has no passages to put in the prompt")
    if separate_passages:
        # Each passage is compressed on its own; the Docs follow each other with no text between.
        return [Doc(p) for p in example.passages]
    return [Doc("\n".join(example.passages))]  # one document, as the open-book baseline joins them


def _first_answer(example: Example) -> str:
    if not example.answers:
        raise ValueError(f"shot {example.id!r} has no answer to show")
    return example.answers[0]  # shots show the first gold answer (method.md §8.2)


def _shot(example: Example, separate_passages: bool) -> QA:
    return QA(_docs(example, separate_passages), example.question, _first_answer(example))


def arc_prompt(shots: Sequence[Example], example: Example, separate_passages: bool = False) -> Prompt:
    """`"Document: " [d1] "\\nQuestion: q1\\nAnswer: a1\\n\\nDocument: " ... [d] "\\nQuestion: q\\nAnswer:"`.

    No space after the last "Answer:": the model generates it as part of its answer. Adjacent text
    is merged, so text pieces sit exactly between Docs (16.4: 7 texts, 6 Docs).
    """
    current = QA(_docs(example, separate_passages), example.question)
    return qa_prompt([_shot(s, separate_passages) for s in shots], current)


def doc_as_text(prompt: Prompt, replace: Callable[[str], str]) -> str:
    """Flatten a prompt to text, writing each Doc as `replace(doc.text)`.

    `replace` is the identity for open-book, a truncation or an LLMLingua call for text baselines.
    """
    return as_text(prompt, lambda doc: replace(doc.text))


def open_book_prompt(shots: Sequence[Example], example: Example) -> str:
    """The ARC template with every document as plain text (method.md §8.4, open-book baseline)."""
    return doc_as_text(arc_prompt(shots, example), lambda text: text)


def closed_book_prompt(shots: Sequence[Example], example: Example) -> str:
    """`"Question: {q}\\nAnswer: {a}\\n\\n"` per shot, then `"Question: {q}\\nAnswer:"`; no documents.

    The reference code put an extra "\\n" before the final question; we keep the one separator
    the shots use, so that closed-book differs from open-book only by the missing documents.
    """
    shots = [QA([], s.question, _first_answer(s)) for s in shots]
    return as_text(qa_prompt(shots, QA([], example.question)), str)


def postprocess_answer(text: str) -> str:
    """The generated answer: the text before the first blank line, stripped (method.md §8.4)."""
    return text.split("\n\n", 1)[0].strip()
