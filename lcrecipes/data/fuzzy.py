"""Near-duplicate detection between a candidate negative and the gold passages (stdlib difflib, word level).

``similarity`` is difflib's ratio ``2 * matches / (len(a) + len(b))`` over lower-cased word sequences, so it is
symmetric in spirit and independent of whitespace and punctuation. The cheap upper bounds
(``real_quick_ratio``, ``quick_ratio``) reject most candidates before the full match.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher

_WORD = re.compile(r"\w+")
DUPLICATE, NEAR_DUPLICATE, DISTINCT = "duplicate", "near_duplicate", "distinct"


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class GoldMatcher:
    """Classifies candidates against a fixed set of gold texts: duplicate | near_duplicate | distinct."""

    def __init__(self, gold_texts: list[str], threshold: float):
        self.threshold = threshold
        self.gold = [words(t) for t in gold_texts]
        self._exact = {tuple(g) for g in self.gold}
        self._matchers = []
        for g in self.gold:
            sm = SequenceMatcher(None, autojunk=False)
            sm.set_seq2(g)  # seq2 is the one difflib preprocesses; reused for every candidate
            self._matchers.append(sm)

    def classify(self, text: str) -> str:
        w = words(text)
        if tuple(w) in self._exact:
            return DUPLICATE
        if self.threshold >= 1.0:
            return DISTINCT
        for sm in self._matchers:
            sm.set_seq1(w)
            if (
                sm.real_quick_ratio() >= self.threshold
                and sm.quick_ratio() >= self.threshold
                and sm.ratio() >= self.threshold
            ):
                return NEAR_DUPLICATE
        return DISTINCT


def similarity(a: str, b: str) -> float:
    return SequenceMatcher(None, words(a), words(b), autojunk=False).ratio()
