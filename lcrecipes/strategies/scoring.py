"""Text metrics shared by the strategies' scores, eval and a GRPO trainer.

All metrics return floats in ``[0, 1]``. Lengths are counted in whitespace tokens (``str.split()``), so they do
not depend on a tokenizer.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_CHOICE_RE = re.compile(r"\(?([A-Za-z])\)?(?=$|[\s.):,;])")


def normalize_ws(s: str) -> str:
    """Collapse every run of (unicode) whitespace to one space and strip the ends."""
    return " ".join(s.split())


def normalize_answer(s: str) -> str:
    """SQuAD/HELMET normalisation: lower case, drop ASCII punctuation, drop articles, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return normalize_ws(_ARTICLES_RE.sub(" ", s))


def sub_exact_match(pred: str, answers: list[str]) -> float:
    """HELMET's SubEM: 1.0 if any normalised gold answer is a substring of the normalised prediction.

    One deviation: a gold answer that normalises to the empty string (e.g. ``"The"``, ``"?"``) would match every
    prediction, so it is compared case-insensitively without normalisation instead; a blank gold never matches.
    """
    norm_pred = normalize_answer(pred)
    for gold in answers:
        norm_gold = normalize_answer(gold)
        if norm_gold and norm_gold in norm_pred:
            return 1.0
        raw = normalize_ws(gold).lower()
        if not norm_gold and raw and raw in normalize_ws(pred).lower():
            return 1.0
    return 0.0


def extract_choice(pred: str) -> str | None:
    """The option letter a multiple-choice answer starts with (``"B"``, ``"(b)"``, ``"B. Paris"``), upper case."""
    m = _CHOICE_RE.match(pred.strip())
    return m.group(1).upper() if m else None


def choice_match(pred: str, answers: list[str]) -> float:
    """1.0 if the option letter of ``pred`` is one of the gold letters in ``answers``."""
    letter = extract_choice(pred)
    return float(letter is not None and letter in {a.strip().upper() for a in answers})


def id_f1(pred_ids: list[int], gold_ids: list[int]) -> float:
    """F1 between the sets of predicted and gold DOC ids; 1.0 when both are empty."""
    pred, gold = set(pred_ids), set(gold_ids)
    if not pred and not gold:
        return 1.0
    hits = len(pred & gold)
    if hits == 0:
        return 0.0
    precision, recall = hits / len(pred), hits / len(gold)
    return 2 * precision * recall / (precision + recall)


def quote_match(quotes: list[str], passages: list[str]) -> float:
    """Fraction of quotes found verbatim (after whitespace normalisation) in at least one of ``passages``.

    ``passages`` are the texts of the cited documents. No quotes gives 0.0 (1.0 when nothing is cited either); a
    blank quote never matches.
    """
    if not quotes:
        return float(not passages)
    texts = [normalize_ws(p) for p in passages]
    found = 0
    for quote in quotes:
        q = normalize_ws(quote)
        found += bool(q) and any(q in t for t in texts)
    return found / len(quotes)


def token_f1(pred: str, gold: str) -> float:
    """Multiset F1 over whitespace tokens (case sensitive); 1.0 for an exact copy up to whitespace."""
    p, g = Counter(pred.split()), Counter(gold.split())
    if not p and not g:
        return 1.0
    common = sum((p & g).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(p.values()), common / sum(g.values())
    return 2 * precision * recall / (precision + recall)


def content_match(contents: list[str], passages: list[str]) -> float:
    """Mean over copied blocks of the best :func:`token_f1` against the cited passages.

    A block that copies a cited passage exactly (up to whitespace) scores 1.0; no blocks and no cited passages
    give 1.0, only one of them 0.0.
    """
    if not contents or not passages:
        return float(not contents and not passages)
    return sum(max(token_f1(c, p) for p in passages) for c in contents) / len(contents)
