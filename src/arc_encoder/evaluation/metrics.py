"""Scores used by the evaluation protocol (method.md §8.3).

EM and F1 follow the official SQuAD script so that our numbers can be compared with the paper's;
BLEU and ROUGE-L call the reference packages (sacrebleu, rouge-score) rather than re-implementing
them, because small tokenisation differences move those scores by whole points.

Scale: `exact_match`, `f1` and `rouge_l` score one prediction in [0, 1]; `bleu` is a corpus score
in [0, 100] as sacrebleu reports it. Multiply the per-example means by 100 to get paper-style tables.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCTUATION = frozenset(string.punctuation)  # ASCII only, as in the SQuAD script
# A regex with word boundaries (not a whitespace split) because that is what the SQuAD script
# does; the two differ on words glued to non-ASCII punctuation, e.g. "the—end".
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_YES_NO = ("yes", "no", "noanswer")

_EVAL_EXTRA = "pip install arc-encoder[eval]"


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower-case, drop ASCII punctuation, drop a/an/the, collapse spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _as_list(golds: str | Sequence[str]) -> list[str]:
    # A bare string is one gold answer, not a sequence of one-character answers.
    golds = [golds] if isinstance(golds, str) else list(golds)
    if not golds:
        raise ValueError("need at least one gold answer")
    return golds


def exact_match(pred: str, golds: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(g) for g in _as_list(golds)))


def _f1_one(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred), normalize_answer(gold)
    if p == g:
        return 1.0  # also covers two empty strings, which have no tokens to overlap
    # Yes/no questions: "yes" against "yes it is" would otherwise earn partial credit.
    if p in _YES_NO or g in _YES_NO:
        return 0.0
    p_tokens, g_tokens = p.split(), g.split()
    common = sum((Counter(p_tokens) & Counter(g_tokens)).values())  # multiset overlap
    if common == 0:
        return 0.0
    precision, recall = common / len(p_tokens), common / len(g_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(pred: str, golds: str | Sequence[str]) -> float:
    """Token-multiset F1 of the normalised strings, max over gold answers."""
    return max(_f1_one(pred, g) for g in _as_list(golds))


def bleu(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU (0-100) with one reference per prediction: 13a tokens, lower-cased."""
    try:
        import sacrebleu
    except ImportError as err:
        raise ImportError(f"bleu() needs sacrebleu: {_EVAL_EXTRA}") from err
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    # sacrebleu takes a list of reference *streams*; we have exactly one stream.
    result = sacrebleu.corpus_bleu(list(preds), [list(refs)], tokenize="13a", lowercase=True)
    return result.score


_rouge_scorer = None


def rouge_l(pred: str, refs: str | Sequence[str]) -> float:
    """ROUGE-L F-measure (plain rougeL, Porter stemming), max over references."""
    global _rouge_scorer
    if _rouge_scorer is None:  # building the scorer loads the stemmer; do it once
        try:
            from rouge_score import rouge_scorer
        except ImportError as err:
            raise ImportError(f"rouge_l() needs rouge-score: {_EVAL_EXTRA}") from err
        _rouge_scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    # score(target, prediction): the reference comes first.
    return max(_rouge_scorer.score(r, pred)["rougeL"].fmeasure for r in _as_list(refs))


def mean_with_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n)).

    With a single value the spread is unknown, so the error is NaN rather than a misleading 0.
    """
    n = len(values)
    if n == 0:
        raise ValueError("mean of no values")
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def paired_difference(a: dict[str, float], b: dict[str, float]) -> tuple[float, float]:
    """Mean and standard error of a[k] - b[k] over the keys both hold (the same examples scored
    two ways). Pairing removes the spread between examples, so the error is much smaller than
    that of the difference of two unpaired means."""
    common = [k for k in a if k in b]
    if not common:
        raise ValueError("paired difference of two score sets with no example in common")
    return mean_with_stderr([a[k] - b[k] for k in common])


def gain_kept(arc: float, closed: float, open_: float) -> float | None:
    """Share of the open-book gain over closed-book that the compressed context keeps.

    1.0 means compression lost nothing; 0.0 means it did no better than no context at all.
    None when open- and closed-book score the same, since there is then no gain to keep.
    """
    if open_ == closed:
        return None
    return (arc - closed) / (open_ - closed)
