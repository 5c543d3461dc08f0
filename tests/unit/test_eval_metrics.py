"""Metrics: robust option extraction, ROUGE-L, SubEM reuse, judge rating parse, bootstrap CIs."""

from __future__ import annotations

import math

import pytest

from lcrecipes.data.example import Passage, RetrievalExample
from lcrecipes.eval.metrics import (
    METRICS,
    Judge,
    bootstrap_ci,
    extract_option,
    judge_score,
    lcs_length,
    parse_rating,
    rouge_l_f1,
)
from lcrecipes.eval.tasks import EvalItem

CHOICES = ["Paris", "Rome", "New York City", "Oslo"]


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("The correct answer is (B)", "B"),
        ("**The correct answer is C**", "C"),
        ("Answer: D", "D"),
        ("B", "B"),
        ("(c) because ...", None),  # lower-case letters are not options
        ("C. New York City", "C"),
        ("I think it is option A, clearly.", "A"),
        ("Based on the text, (D) fits best.", "D"),
        ("The city is New York City.", "C"),
        ("Neither Paris nor Rome", None),  # two options named: ambiguous
        ("A man walked in. It was B", None),  # two stand-alone capitals
        ("no idea", None),
    ],
)
def test_extract_option(text, letter):
    assert extract_option(text, CHOICES) == letter


def _item(reference, choices=None) -> EvalItem:
    ex = RetrievalExample("q", "question?", reference, [Passage("p", "", "t")], [], choices=choices)
    return EvalItem("t", "q", ex, reference=reference)


def test_accuracy_and_subem():
    item = _item(["C"], CHOICES)
    assert METRICS["accuracy"]("Answer: (C)", item) == 1.0
    assert METRICS["accuracy"]("Answer: A", item) == 0.0
    qa = _item(["The Eiffel Tower"])
    assert METRICS["subem"]("it is the eiffel tower, in Paris", qa) == 1.0
    assert METRICS["subem"]("Louvre", qa) == 0.0


def test_rouge_l():
    assert lcs_length("a b c d e".split(), "a c e x".split()) == 3
    assert rouge_l_f1("The cat sat on the mat.", "the cat sat on the mat") == pytest.approx(1.0)
    # pred 4 tokens, ref 6 tokens, LCS 3 ("the cat the"): P=3/4, R=3/6
    assert rouge_l_f1("the cat the dog", "the cat sat on the mat") == pytest.approx(2 * 0.75 * 0.5 / 1.25)
    assert rouge_l_f1("", "x") == 0.0 and rouge_l_f1("q", "x") == 0.0
    assert METRICS["rouge_l"]("the cat", _item(["dog", "the cat"])) == pytest.approx(1.0)


def test_parse_rating_and_judge_interface():
    assert parse_rating("Evaluation evidence: fine.\nRating: [[87]]") == 87.0
    assert parse_rating("Rating: [72.5]") == 72.5
    assert parse_rating("Rating: 140") == 100.0
    assert parse_rating("no score here") is None

    class Fixed(Judge):
        def rate(self, question, reference, prediction):
            self.last = (50.0 if reference in prediction else None, "raw")
            return self.last

    item = _item(["42 million"])
    assert judge_score("revenue was 42 million", item, Fixed()) == 0.5
    assert judge_score("unknown", item, Fixed()) == 0.0
    with pytest.raises(ValueError, match="no judge was given"):
        judge_score("x", item, None)


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    vals = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    m, lo, hi = bootstrap_ci(vals)
    assert m == pytest.approx(0.625) and lo < m < hi and 0.0 <= lo and hi <= 1.0
    assert bootstrap_ci(vals) == (m, lo, hi)
    cont = [0.1, 0.7, 0.3, 0.9, 0.5, 0.2, 0.8]
    assert bootstrap_ci(cont, seed=1) != bootstrap_ci(cont, seed=0)
    assert bootstrap_ci([0.5]) == (0.5, 0.5, 0.5)
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    assert bootstrap_ci([1.0, math.nan])[0] == 1.0
