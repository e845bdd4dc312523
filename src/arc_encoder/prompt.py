"""The one prompt builder: the few-shot QA layout and the chat layout, written here and nowhere else.

A prompt is a list of pieces: plain `str` text for the decoder, and documents, which stand where
their vectors go: a `Doc` the encoder compresses, vectors made earlier (model/prompting.Compressed),
or whatever stands for a document in the caller's hands (fine-tuning places encoder ids there).

The QA layout (method.md §6.3, §8.2), read by fine-tuning, evaluation, the `ask` command and route:

    "Document: " [d1] "\nQuestion: q1\nAnswer: a1\n\nDocument: " ... [d] "\nQuestion: q\nAnswer:"

and without documents (closed-book) `"Question: q1\nAnswer: a1\n\n" ... "Question: q\nAnswer:"`.
No space after the last "Answer:": the model generates it as part of its answer.

The chat layout (instruct decoders, method.md §5.4), read by chat fine-tuning and the chat route:
one user message holding the shots in the QA layout, then each document as `"Document: " [d] "\n"`,
then the question (the user's own text), rendered by the decoder's chat template; the reply is the
assistant's turn. A completion prompt with documents has them the same way ahead of its text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Doc:
    """A document the encoder compresses; in a prompt it stands where its vectors go."""

    text: str


class ChatText(str):
    """Text a chat template wrote: it holds the template's own special tokens (its BOS, if any), so
    the tokenizer must add none (transformers tokenizes a rendered chat the same way)."""


@dataclass(frozen=True)
class QA:
    """An example as a prompt shows it: what stands for its documents (none: closed-book), its
    question, and for a shot its answer."""

    documents: Sequence[Any]
    question: str | None
    answer: str | None = None


DOCUMENT = "Document: "  # what comes before a document's vectors (or text)
SHOT_END = "\n\n"  # between an answered example and the next one
QUESTION = "\nQuestion: "  # what comes between a document and its question


def after_document(question: str | None) -> str:
    """The text between a document and its answer: `"\nQuestion: q\nAnswer:"` (just
    `"\nAnswer:"` for records without a question, e.g. summaries with an instruction)."""
    return f"{QUESTION}{question}\nAnswer:" if question else "\nAnswer:"


def closed_question(question: str) -> str:
    """A question with no document: `"Question: q\nAnswer:"`."""
    return f"Question: {question}\nAnswer:"


# ----------------------------------------------------------------------------- QA layout


def _append(prompt: list, piece) -> None:
    """Text joins the text before it, so that text pieces sit exactly between documents."""
    if isinstance(piece, str) and prompt and isinstance(prompt[-1], str):
        prompt[-1] += piece
    elif not isinstance(piece, str) or piece:
        prompt.append(piece)


def _example(prompt: list, example: QA) -> None:
    if example.documents:
        _append(prompt, DOCUMENT)
        for document in example.documents:  # several: back to back, nothing between
            prompt.append(document)
        _append(prompt, after_document(example.question))
    else:
        _append(prompt, closed_question(example.question))


def qa_shots(shots: Sequence[QA]) -> list:
    """Answered examples in the QA layout, each ending with SHOT_END."""
    prompt: list = []
    for shot in shots:
        _example(prompt, shot)
        _append(prompt, f" {shot.answer}{SHOT_END}")
    return prompt


def qa_prompt(shots: Sequence[QA], current: QA) -> list:
    """The QA layout (module doc): the shots, then the current example up to its "Answer:"."""
    prompt = qa_shots(shots)
    _example(prompt, current)
    return prompt


def texts_around(prompt: list) -> list[str]:
    """The text before, between and after the documents of a prompt: one more than documents,
    "" where two documents touch."""
    texts = [""]
    for piece in prompt:
        if isinstance(piece, str):
            texts[-1] += piece
        else:
            texts.append("")
    return texts


def as_text(prompt: list, replace: Callable[[Any], str]) -> str:
    """A prompt flattened to text, each document written as `replace(document)`."""
    return "".join(p if isinstance(p, str) else replace(p) for p in prompt)


# ----------------------------------------------------------------------------- chat layout


def documents_before(documents: Sequence[Any], text: str) -> list:
    """A request's own text with documents ahead of it: `"Document: " [d] "\n"` each, then the text."""
    prompt: list = []
    for document in documents:
        _append(prompt, DOCUMENT)
        prompt.append(document)
        _append(prompt, "\n")
    _append(prompt, text)
    return prompt


def chat_message(shots: Sequence[QA], documents: Sequence[Any], question: str) -> list:
    """The user message of the chat layout (module doc), as prompt pieces."""
    message = qa_shots(shots)
    for piece in documents_before(documents, question):
        _append(message, piece)
    return message


def render_chat(tokenizer, messages: list[dict]) -> str:
    """Messages as the decoder's chat template writes them, ending where the assistant answers.
    A tokenizer without a template gets a plain `role: content` transcript."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def chat_prompt(tokenizer, messages: list[dict], lead: str = "") -> list:
    """A conversation as prompt pieces, ending where the assistant answers (then `lead`, the start
    of the reply). One message's content may be prompt pieces (documents among text, e.g.
    chat_message); the others are text. The first piece is ChatText when the tokenizer has a template.

    The documents' places come from the structure of the rendering, not from a marker a message
    could contain: the conversation is rendered with the message's text and with the message
    empty; the two differ by one block, the text as the template writes it (verbatim, or trimmed of
    surrounding whitespace), and each document goes at its offset in that block. A ValueError if the
    template writes the text any other way."""
    held = [i for i, m in enumerate(messages) if not isinstance(m["content"], str)]
    if len(held) > 1:
        raise ValueError("documents may go in one message of a conversation only")
    text_type = ChatText if getattr(tokenizer, "chat_template", None) else str
    if not held:
        return [text_type(render_chat(tokenizer, messages) + lead)]
    k = held[0]
    pieces = messages[k]["content"]
    texts = texts_around(pieces)
    text = "".join(texts)
    if not text.strip():
        raise ValueError("a message with documents needs text to find their place")

    def rendered(content: str) -> str:
        return render_chat(tokenizer, [*messages[:k], {**messages[k], "content": content}, *messages[k + 1 :]])

    full, empty = rendered(text), rendered("")
    found = _written_at(empty, full, text)
    if found is None:
        raise ValueError("the decoder's chat template changes the user message's text")
    start, shift = found
    size = len(full) - len(empty)
    cuts, offset = [], 0
    for piece in texts[:-1]:  # after each text: a document
        offset += len(piece)
        cuts.append(start + min(max(offset + shift, 0), size))
    documents = [p for p in pieces if not isinstance(p, str)]
    out: list = [text_type(full[: cuts[0]])]
    for j, document in enumerate(documents):
        out.append(document)
        out.append(full[cuts[j] : cuts[j + 1]] if j + 1 < len(cuts) else full[cuts[j] :] + lead)
    return out


def _written_at(short: str, long: str, text: str) -> tuple[int, int] | None:
    """Where `long` is `short` with `text` inserted (verbatim, or trimmed): (start, shift), shift
    being what trimming took from the text's front (negated); None if it is not.

    With a common prefix of length p and a common suffix of length q (at most len(short)), the
    block may start anywhere in [len(short) - q, p]; the first place holding the text is taken."""
    size = len(long) - len(short)
    if size < 0:
        return None
    p = 0
    while p < len(short) and short[p] == long[p]:
        p += 1
    q = 0
    while q < len(short) and short[len(short) - 1 - q] == long[len(long) - 1 - q]:
        q += 1
    for start in range(len(short) - q, p + 1):
        block = long[start : start + size]
        if block == text:
            return start, 0
        if block == text.strip():
            return start, len(text.lstrip()) - len(text)
    return None
