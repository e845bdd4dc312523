"""Prompt templates reproduced exactly (method.md §8.2, §8.4, §12.4)."""

import pytest

from arc_encoder.evaluation.prompts import (
    arc_prompt,
    closed_book_prompt,
    doc_as_text,
    open_book_prompt,
    postprocess_answer,
)
from arc_encoder.evaluation.tasks import Example
from arc_encoder.prompt import Doc


def ex(i, passages=None, answers=None):
    return Example(
        question=f"q{i}",
        answers=answers or [f"a{i}", f"alt{i}"],
        passages=passages or [f"d{i}"],
        id=str(i),
    )


SHOTS = [ex(i) for i in range(1, 6)]
TARGET = ex(6)


def test_arc_prompt_five_shots_exact():
    expected = [
        "Document: ",
        Doc("d1"),
        "\nQuestion: q1\nAnswer: a1\n\nDocument: ",
        Doc("d2"),
        "\nQuestion: q2\nAnswer: a2\n\nDocument: ",
        Doc("d3"),
        "\nQuestion: q3\nAnswer: a3\n\nDocument: ",
        Doc("d4"),
        "\nQuestion: q4\nAnswer: a4\n\nDocument: ",
        Doc("d5"),
        "\nQuestion: q5\nAnswer: a5\n\nDocument: ",
        Doc("d6"),
        "\nQuestion: q6\nAnswer:",
    ]
    prompt = arc_prompt(SHOTS, TARGET)
    assert prompt == expected
    assert sum(isinstance(p, str) for p in prompt) == 7
    assert sum(isinstance(p, Doc) for p in prompt) == 6


def test_arc_prompt_zero_shots():
    assert arc_prompt([], TARGET) == ["Document: ", Doc("d6"), "\nQuestion: q6\nAnswer:"]


def test_document_with_template_text_keeps_structure():
    tricky = ex(1, passages=["before\nQuestion: fake?\nAnswer: no\n\nDocument: after"])
    prompt = arc_prompt([tricky], TARGET)
    assert prompt == [
        "Document: ",
        Doc("before\nQuestion: fake?\nAnswer: no\n\nDocument: after"),
        "\nQuestion: q1\nAnswer: a1\n\nDocument: ",
        Doc("d6"),
        "\nQuestion: q6\nAnswer:",
    ]


def test_multi_passage_joined_or_separate():
    multi = ex(6, passages=["p1", "p2", "p3"])
    assert arc_prompt([], multi) == ["Document: ", Doc("p1\np2\np3"), "\nQuestion: q6\nAnswer:"]
    assert arc_prompt([ex(1, passages=["s1", "s2"])], multi, separate_passages=True) == [
        "Document: ",
        Doc("s1"),
        Doc("s2"),
        "\nQuestion: q1\nAnswer: a1\n\nDocument: ",
        Doc("p1"),
        Doc("p2"),
        Doc("p3"),
        "\nQuestion: q6\nAnswer:",
    ]


def test_arc_prompt_needs_passages_and_shot_answers():
    with pytest.raises(ValueError, match="no passages"):
        arc_prompt([], Example("q", ["a"], [], "x"))
    with pytest.raises(ValueError, match="no answer"):
        arc_prompt([Example("q", [], ["d"], "s")], TARGET)


def test_open_book_prompt_exact():
    shots = SHOTS[:2]
    assert open_book_prompt(shots, TARGET) == (
        "Document: d1\nQuestion: q1\nAnswer: a1\n\n"
        "Document: d2\nQuestion: q2\nAnswer: a2\n\n"
        "Document: d6\nQuestion: q6\nAnswer:"
    )
    multi = ex(7, passages=["p1", "p2"])
    assert open_book_prompt([], multi) == "Document: p1\np2\nQuestion: q7\nAnswer:"


def test_closed_book_prompt_exact():
    assert closed_book_prompt(SHOTS[:2], TARGET) == (
        "Question: q1\nAnswer: a1\n\nQuestion: q2\nAnswer: a2\n\nQuestion: q6\nAnswer:"
    )
    assert closed_book_prompt([], TARGET) == "Question: q6\nAnswer:"


def test_doc_as_text_replaces_each_doc():
    prompt = arc_prompt(SHOTS[:1], TARGET)
    assert doc_as_text(prompt, lambda t: f"<{t.upper()}>") == (
        "Document: <D1>\nQuestion: q1\nAnswer: a1\n\nDocument: <D6>\nQuestion: q6\nAnswer:"
    )


def test_translation_prompt_uses_same_template():
    shot = Example("Translate the previous document into French.", ["Bonjour."], ["Hello."], "1")
    target = Example("Translate the previous document into French.", ["Merci."], ["Thanks."], "2")
    assert arc_prompt([shot], target) == [
        "Document: ",
        Doc("Hello."),
        "\nQuestion: Translate the previous document into French.\nAnswer: Bonjour.\n\nDocument: ",
        Doc("Thanks."),
        "\nQuestion: Translate the previous document into French.\nAnswer:",
    ]


@pytest.mark.parametrize(
    "generated, answer",
    [
        (" Denver Broncos\n\nDocument: next", "Denver Broncos"),
        (" Paris", "Paris"),
        ("line one\nline two\n\nmore", "line one\nline two"),  # a single newline is kept
        ("\n\nanswer after blank", ""),
        ("", ""),
    ],
)
def test_postprocess_answer(generated, answer):
    assert postprocess_answer(generated) == answer


def test_doc_is_frozen_value():
    assert Doc("x") == Doc("x")
    with pytest.raises(AttributeError):
        Doc("x").text = "y"
