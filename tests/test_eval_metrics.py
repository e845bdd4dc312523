"""Metrics against hand-computed values (method.md §8.3)."""

import math
import sys

import pytest

from arc_encoder.evaluation import metrics
from arc_encoder.evaluation.metrics import (
    bleu,
    exact_match,
    f1,
    gain_kept,
    mean_with_stderr,
    normalize_answer,
    paired_difference,
    rouge_l,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Cat", "cat"),  # lower-case, article dropped
        ("an apple a day", "apple day"),  # all three articles
        ("theatre and anthem", "theatre and anthem"),  # articles only as whole words
        ("A-ha!", "aha"),  # punctuation deleted, not replaced: "aha" is no article
        ("Denver, (Colorado).", "denver colorado"),
        ("  many \t spaces\n here ", "many spaces here"),
        ("the, the. THE", ""),  # nothing but articles
        ("café—déjà vu", "café—déjà vu"),  # non-ASCII punctuation and letters are kept
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_any_gold():
    assert exact_match("the Denver Broncos.", ["Carolina Panthers", "Denver Broncos"]) == 1.0
    assert exact_match("Denver", ["Carolina Panthers", "Denver Broncos"]) == 0.0
    assert exact_match("Denver Broncos", "denver broncos") == 1.0  # a bare string is one gold


def test_exact_match_needs_a_gold():
    with pytest.raises(ValueError):
        exact_match("x", [])


def test_f1_max_over_golds():
    # gold 1 "broncos": overlap 1, P = 1/3, R = 1 -> 0.5
    # gold 2 "denver broncos team": overlap 2, P = 2/3, R = 2/3 -> 2/3
    assert f1("Denver Broncos won", ["Broncos", "the Denver Broncos team"]) == pytest.approx(2 / 3)
    assert f1("Denver Broncos won", ["Broncos"]) == pytest.approx(0.5)


def test_f1_counts_token_multisets():
    # "red red blue" vs "red red green": shared red x2 = 2 -> P = R = 2/3.
    # Counting distinct tokens ({red}) would give 1/3.
    assert f1("red red blue", ["red red green"]) == pytest.approx(2 / 3)
    # A repeated token is matched at most as often as it occurs in the gold: 1 of 3 -> P = 1/3, R = 1.
    assert f1("red red red", ["red"]) == pytest.approx(0.5)


def test_f1_no_overlap_and_exact():
    assert f1("Paris", ["London"]) == 0.0
    assert f1("The Eiffel Tower!", ["eiffel tower"]) == 1.0


def test_f1_yes_no_rule():
    assert f1("yes", ["yes it is"]) == 0.0  # would be 0.5 without the rule
    assert f1("yes sir", ["yes"]) == 0.0  # gold "yes", prediction differs
    assert f1("noanswer", ["noanswer given"]) == 0.0
    assert f1("No.", ["no"]) == 1.0
    assert f1("yes", ["no", "yes"]) == 1.0  # still a max over golds


def test_bleu_identical_is_100():
    assert bleu(["The cat sat on the mat."], ["The cat sat on the mat."]) == pytest.approx(100.0)


def test_bleu_partial_by_hand():
    # 13a tokens (lower-cased): hyp "the cat sat on the mat ." vs ref "the cat sat on a mat .",
    # 7 tokens each, so no brevity penalty. Clipped n-gram precisions:
    #   1-grams 6/7 ("the" is used once only), 2-grams 4/6, 3-grams 2/5, 4-grams 1/4.
    # BLEU = 100 * (6/7 * 4/6 * 2/5 * 1/4) ** (1/4) = 100 * (2/35) ** 0.25 = 48.89...
    score = bleu(["The Cat sat on the mat."], ["the cat sat on a mat."])
    assert score == pytest.approx(100 * (2 / 35) ** 0.25, abs=1e-6)


def test_bleu_is_corpus_level():
    # n-gram counts are summed over the corpus before the geometric mean; a mean of sentence
    # scores would give (100 + 0) / 2 = 50 here.
    # 1-grams 6/8, 2-grams 5/6, 3-grams 4/4, 4-grams 3/3 (the 2-token sentence has none of those);
    # hypothesis and reference lengths are equal, so no brevity penalty.
    score = bleu(["a b c d e f", "w x"], ["a b c d e f", "p q"])
    assert score == pytest.approx(100 * (6 / 8 * 5 / 6) ** 0.25, abs=1e-6)


def test_bleu_length_mismatch():
    with pytest.raises(ValueError):
        bleu(["a"], ["a", "b"])


def test_rouge_l_known_pairs():
    # LCS "the cat on the mat" = 5 of 6 tokens on both sides -> F = 5/6
    assert rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(5 / 6)
    # Porter stemming makes "killed" == "kill"; without it F would be 3/4.
    assert rouge_l("police killed the gunman", "police kill the gunman") == pytest.approx(1.0)
    # Max over references; LCS with "cat" alone: P = 1/2, R = 1 -> 2/3
    assert rouge_l("a cat", ["dog", "cat"]) == pytest.approx(2 / 3)
    assert rouge_l("nothing shared", ["entirely different"]) == 0.0


def test_mean_with_stderr():
    mean, err = mean_with_stderr([1, 2, 3, 4])
    # sample variance = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3; stderr = sqrt(5/3 / 4)
    assert mean == 2.5
    assert err == pytest.approx(math.sqrt(5 / 12))
    mean, err = mean_with_stderr([0.7])
    assert mean == 0.7 and math.isnan(err)
    with pytest.raises(ValueError):
        mean_with_stderr([])


def test_gain_kept():
    assert gain_kept(40.0, 20.0, 60.0) == pytest.approx(0.5)
    assert gain_kept(10.0, 20.0, 60.0) == pytest.approx(-0.25)  # worse than no context
    assert gain_kept(30.0, 30.0, 30.0) is None


def test_paired_difference_by_hand():
    # differences over the shared ids a, b, c: 100, 0, -100 -> mean 0, sd 100, stderr 100 / sqrt(3);
    # "d" is scored one way only and left out
    mean, stderr = paired_difference({"a": 100, "b": 0, "c": 0, "d": 100}, {"a": 0, "b": 0, "c": 100})
    assert mean == pytest.approx(0.0)
    assert stderr == pytest.approx(100 / math.sqrt(3))
    # the same answers scored twice: a difference of exactly 0 with no spread
    assert paired_difference({"a": 100, "b": 0}, {"a": 100, "b": 0}) == (0.0, 0.0)
    with pytest.raises(ValueError, match="no example in common"):
        paired_difference({"a": 1.0}, {"b": 1.0})


def test_missing_eval_packages_say_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # makes `import sacrebleu` fail
    with pytest.raises(ImportError, match=r"arc-encoder\[eval\]"):
        bleu(["a"], ["a"])
    monkeypatch.setattr(metrics, "_rouge_scorer", None)
    monkeypatch.setitem(sys.modules, "rouge_score", None)
    with pytest.raises(ImportError, match=r"arc-encoder\[eval\]"):
        rouge_l("a", "a")
