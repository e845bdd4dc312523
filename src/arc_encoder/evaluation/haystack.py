"""Long documents from held-out QA data: each question's paragraph hidden in a haystack.

A haystack for one SQuAD-style question (id, title, context, question, answers) is its own
paragraph (the gold, exactly once) among distractor paragraphs of OTHER articles of the same file
(never a paragraph with the question's title), joined with "\\n" as one long document. It is sized
in decoder positions: the whole open-book sequence (shots, template, haystack, question and the
answer budget) takes `multiple` x `window` positions, less than one paragraph short. So at 1x the
open-book prompt just fits the window, at 2x it is twice as long.

Distractors are drawn in a random order and added while the next one fits; the gold goes to a
random place among them. Both draws come from a generator seeded by (seed, question id), so a seed
reproduces every haystack, whatever subset of questions is scored.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from arc_encoder.evaluation.prompts import open_book_prompt
from arc_encoder.evaluation.tasks import Example

SEPARATOR = "\n"  # between paragraphs: how the prompt template joins an example's passages


@dataclass(frozen=True)
class Paragraph:
    title: str  # the article it comes from
    text: str


@dataclass
class Haystack:
    example: Example  # the question with `passages` = the haystack's paragraphs, in order
    gold_index: int  # where its own paragraph is in example.passages
    target: int  # positions asked for: multiple x window
    positions: int  # positions the open-book sequence takes (prompt + answer budget)


def paragraph_pool(examples: Sequence[Example]) -> list[Paragraph]:
    """Every distinct (title, paragraph) of the examples, in file order. Each example needs a
    title (distractors must come from other articles) and exactly one passage (its paragraph)."""
    pool: dict[tuple[str, str], None] = {}
    for ex in examples:
        if not ex.title:
            raise ValueError(
                f"haystack: example {ex.id!r} has no title; distractors must come from other articles, "
                "which needs each record's 'title' (SQuAD files have it)"
            )
        if len(ex.passages) != 1:
            raise ValueError(f"haystack: example {ex.id!r} has {len(ex.passages)} passages; expected its one paragraph")
        pool[(ex.title, ex.passages[0])] = None
    return [Paragraph(title, text) for title, text in pool]


def build_haystack(
    example: Example,
    pool: Sequence[Paragraph],
    target: int,
    length: Callable[[list[str]], int],
    count_tokens: Callable[[str], int],
    seed: int = 0,
) -> Haystack:
    """Hide `example`'s paragraph among paragraphs of other articles from `pool`.

    `length(passages)`: positions of the whole sequence (prompt + answer budget) when the example
    reads these passages; `count_tokens(text)`: decoder tokens of one text. The haystack grows
    while the next distractor fits `target`, then is checked with `length` (re-tokenizing joined
    paragraphs can shift a token at each seam) and trimmed until it fits.
    """
    gold = example.passages[0]
    rng = random.Random(f"{seed}:{example.id}")  # str seeds hash the same in every process
    texts = {gold}  # distinct texts only: each paragraph appears at most once
    candidates = []
    for p in pool:
        if p.title != example.title and p.text not in texts:
            texts.add(p.text)
            candidates.append(p)
    rng.shuffle(candidates)
    total = length([gold])
    if total > target:
        raise ValueError(
            f"haystack: question {example.id!r} takes {total} positions with its own paragraph alone, "
            f"more than the {target} asked for; give a larger window or multiple, or fewer shots"
        )
    separator = count_tokens(SEPARATOR)
    chosen: list[str] = []
    for paragraph in candidates:
        n = count_tokens(paragraph.text) + separator
        if total + n > target:
            break
        chosen.append(paragraph.text)
        total += n
    else:
        raise ValueError(
            f"haystack: the {len(candidates)} paragraphs of articles other than {example.title!r} hold too few "
            f"tokens to fill {target} positions; give more data or a smaller window or multiple"
        )
    gold_index = rng.randint(0, len(chosen))
    passages = chosen[:gold_index] + [gold] + chosen[gold_index:]
    positions = length(passages)
    while positions > target:  # drop the last distractor added until the real sequence fits
        drop = passages.index(chosen.pop())
        del passages[drop]
        if drop < gold_index:
            gold_index -= 1
        positions = length(passages)
    return Haystack(replace(example, passages=passages), gold_index, target, positions)


def model_haystacks(
    tokenizer,
    shots: Sequence[Example],
    questions: Sequence[Example],
    pool: Sequence[Paragraph],
    window: int,
    multiple: int,
    max_new_tokens: int,
    seed: int = 0,
) -> list[Haystack]:
    """One haystack per question for a decoder (its `tokenizer`): the open-book sequence, these
    `shots` included, takes `multiple` x `window` positions (less than one paragraph short).
    The shots' own paragraphs are never distractors (their answers would be in the document)."""
    if window < 1 or multiple < 1:
        raise ValueError(f"haystack: window and multiple must be at least 1, got {window} and {multiple}")
    shot_texts = {p for s in shots for p in s.passages}
    pool = [p for p in pool if p.text not in shot_texts]

    @functools.cache  # a paragraph is counted once for all the questions
    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    out = []
    for question in questions:

        def length(passages: list[str], question=question) -> int:
            # the decoder reads a one-string prompt with its special tokens (model/prompting.py)
            prompt = open_book_prompt(shots, replace(question, passages=passages))
            return len(tokenizer(prompt)["input_ids"]) + max_new_tokens

        out.append(build_haystack(question, pool, multiple * window, length, count_tokens, seed))
    return out
