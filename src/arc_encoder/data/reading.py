"""Reading objectives: questions about a compressed span whose answers only the span holds.

Reconstruction asks the decoder to recite a span left to right; answering a question needs
something else: finding a passage by its content and copying what is there. Both objectives
compress a span T[a:b] of a document and put a short text after its block (pretrain.py builds
the samples; here is what each objective asks of one span):

    lookup   a verbatim cue of `cue` tokens copied from the middle of the span, then the
             `target` tokens that follow the cue there (loss only on those):
                 [C(T[a:b])][<Cont>] T[s:s+cue] T[s+cue:s+cue+target]
             The cue occurs once in the span, so the target is determined by the span. With
             `questions` > 1, several such cue + target windows (disjoint, in random order, a
             separator between them) follow the same block: more answers per compressed span.
    cloze    one whole sentence of the span with `words` consecutive words replaced by a visible
             placeholder, a separator, then the blanked words (loss only on those):
                 [C(T[a:b])][<Cont>] "The quick ____ jumps over the dog.\nMissing: brown fox"

Each function returns (decoder token ids of the text after the block, per-token loss flags), or
None when the span has no usable question; `rng` is the pipeline's, saved with its state.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .tokens import DecoderText

# A word ending a sentence: .!? possibly followed by closing quotes or brackets.
SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")
# Cue positions tried per span before giving up on one that occurs only once there.
CUE_TRIES = 8


@dataclass(frozen=True)
class Word:
    start: int  # character positions in the span's text
    end: int


def lookup_query(
    doc: DecoderText,
    a: int,
    b: int,
    cue: int,
    target: int,
    rng: random.Random,
    questions: int = 1,
    separator: list[int] | None = None,
) -> tuple[list[int], list[bool]] | None:
    """Up to `questions` cues T[s:s+cue] from inside T[a:b], each occurring nowhere else in it,
    each followed by its continuation T[s+cue:s+cue+target] inside the span, as (ids, loss flags):
    cue + target ids per question, `separator` ids between questions, loss on the targets only.
    The questions' windows T[s:s+cue+target] do not overlap: no answer shows in another's cue."""
    ids, width = doc.ids, cue + target
    first = max(a, doc.n_bos)  # a BOS is no text to look up
    last = b - width  # the last cue start whose target still lies in the span
    if last < first:
        return None
    windows: dict[tuple[int, ...], int] = {}
    for s in range(a, b - cue + 1):
        key = tuple(ids[s : s + cue])
        windows[key] = windows.get(key, 0) + 1
    starts = range(first, last + 1)
    chosen: list[int] = []
    for s in rng.sample(starts, min(CUE_TRIES * questions, len(starts))):
        if windows[tuple(ids[s : s + cue])] == 1 and all(abs(s - t) >= width for t in chosen):
            chosen.append(s)
            if len(chosen) == questions:
                break
    if not chosen:
        return None  # a span of repeats: no cue tells where to look
    text, flags = [], []
    for n, s in enumerate(chosen):
        if n:
            text += list(separator or [])
            flags += [False] * len(separator or [])
        text += ids[s : s + width]
        flags += [False] * cue + [True] * target
    return text, flags


def sentences(text: str, starts_text: bool) -> list[list[Word]]:
    """Whole sentences of a span's text, as lists of words (runs of non-space characters).

    A sentence ends at a word ending in .!? or at a line break. The span's first sentence counts
    only if the span starts the document (`starts_text`), and its last only if it ends one: the
    span's cut may fall inside a sentence, or inside a word.
    """
    groups: list[list[Word]] = [[]]
    for match in re.finditer(r"\S+", text):
        word = Word(match.start(), match.end())
        if groups[-1] and "\n" in text[groups[-1][-1].end : word.start]:
            groups.append([])
        groups[-1].append(word)
        if SENTENCE_END.search(match.group()):
            groups.append([])
    whole = [g for g in groups if g]
    if whole and not starts_text:
        whole = whole[1:]
    if whole and not SENTENCE_END.search(text[whole[-1][-1].start : whole[-1][-1].end]):
        whole = whole[:-1]
    return whole


def cloze_query(
    doc: DecoderText,
    a: int,
    b: int,
    tokenizer,
    words: int,
    placeholder: str,
    separator: str,
    rng: random.Random,
) -> tuple[list[int], list[bool]] | None:
    """A sentence of T[a:b] with `words` words blanked by `placeholder`, then `separator`, then the
    blanked words (loss only on them), in `tokenizer`'s (the decoder's) token ids."""
    text = doc.chars(a, b)
    # at least two visible words around the blank, or the sentence gives no context to find it by
    candidates = [s for s in sentences(text, doc.bounds[a] == 0) if len(s) >= words + 2]
    if not candidates:
        return None
    sentence = rng.choice(candidates)
    j = rng.randrange(len(sentence) - words + 1)
    blank_start, blank_end = sentence[j].start, sentence[j + words - 1].end
    prompt = text[sentence[0].start : blank_start] + placeholder + text[blank_end : sentence[-1].end] + separator
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    # a leading space: the answer reads as words after the separator, as the decoder would write it
    answer_ids = tokenizer(" " + text[blank_start:blank_end], add_special_tokens=False)["input_ids"]
    return list(prompt_ids) + list(answer_ids), [False] * len(prompt_ids) + [True] * len(answer_ids)
