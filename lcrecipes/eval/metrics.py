"""Task metrics (accuracy with robust option extraction, SubEM, ROUGE-L, LLM judge), bootstrap CIs.

Every metric maps ``(text, item, judge) -> float`` in ``[0, 1]``; reports show them ×100. ``text`` is the answer the
strategy's parser read (the raw output when it found none). SubEM is the strategies' own
(:func:`lcrecipes.strategies.scoring.sub_exact_match`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from lcrecipes.strategies.scoring import normalize_answer, sub_exact_match

if TYPE_CHECKING:
    from lcrecipes.eval.tasks.base import EvalItem

LETTERS = "ABCDEFGHIJ"
_TOKEN_RE = re.compile(r"[a-z0-9]+")


# ---- multiple choice ------------------------------------------------------------------------------------------
def extract_option(text: str, choices: Sequence[str]) -> str | None:
    """The option letter an answer picks, or None.

    Tried in order: "answer is (B)" / "answer: B"; a leading "B", "(B)", "B." (a leading "A " is an article);
    "(B)" anywhere; "option B";
    a single distinct stand-alone capital letter among the options; finally the one option whose text (normalised)
    appears in the answer.
    """
    letters = LETTERS[: len(choices)]
    t = text.replace("*", "").strip()
    cls = f"[{letters}]"
    patterns = (
        rf"(?i:answer\s+is|answer\s*:|correct\s+(?:answer|option)\s*:?)\s*\(?({cls})\)?(?![A-Za-z])",
        rf"^\(?({cls})\)?(?:$|[.):,;]|\s*\n)",
        rf"\(({cls})\)",
        rf"(?i:option|choice)\s+\(?({cls})\)?(?![A-Za-z])",
    )
    for pat in patterns:
        m = re.search(pat, t)
        if m:
            return m.group(1)
    alone = set(re.findall(rf"(?<![A-Za-z])({cls})(?![A-Za-z'])", t))
    if len(alone) == 1:
        return alone.pop()
    norm = normalize_answer(t)
    hits = [letters[i] for i, c in enumerate(choices) if normalize_answer(c) and normalize_answer(c) in norm]
    return hits[0] if len(hits) == 1 else None


def accuracy(text: str, item: EvalItem, judge: Judge | None = None) -> float:
    letter = extract_option(text, item.example.choices or [])
    return float(letter is not None and letter in {r.strip().upper() for r in item.reference})


def subem(text: str, item: EvalItem, judge: Judge | None = None) -> float:
    return sub_exact_match(text, item.reference)


# ---- ROUGE-L --------------------------------------------------------------------------------------------------
def rouge_tokens(s: str) -> list[str]:
    """Lower-cased alphanumeric tokens (the rouge_score default tokenisation, without stemming)."""
    return _TOKEN_RE.findall(s.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence; O(len(a)·len(b)) time, O(len(b)) memory."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_f1(pred: str, ref: str) -> float:
    """ROUGE-L F1 (β = 1) between two texts."""
    p, r = rouge_tokens(pred), rouge_tokens(ref)
    if not p or not r:
        return 0.0
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(r)
    return 2 * prec * rec / (prec + rec)


def rouge_l(text: str, item: EvalItem, judge: Judge | None = None) -> float:
    return max((rouge_l_f1(text, ref) for ref in item.reference), default=0.0)


# ---- LLM judge ------------------------------------------------------------------------------------------------
class Judge:
    """Scorer interface: how well ``prediction`` answers ``question`` given the gold ``reference``, 0–100.

    ``last`` holds the latest ``(rating, raw judge output)`` so a runner can store it with the row.
    """

    last: tuple[float | None, str] | None = None

    def rate(self, question: str, reference: str, prediction: str) -> tuple[float | None, str]:
        """``(score in [0, 100] or None when the judge's output holds no score, the judge's raw output)``."""
        raise NotImplementedError


JUDGE_PROMPT = """You grade an assistant's answer against a gold answer.

[Question]
{question}

[Gold answer]
{reference}

[Assistant's answer]
{prediction}

Judge accuracy (the values, names and order agree with the gold answer; nothing invented) and completeness (every
key point of the gold answer is present). Explain briefly (at most 100 words), then give an overall score from 1 to
100 on its own last line exactly as "Rating: [[score]]"; an answer that fully agrees with the gold answer gets 100."""


def parse_rating(text: str) -> float | None:
    """The score in ``[[87]]`` (else ``[87]``, else ``Rating: 87``), clipped to [0, 100]; None if there is none."""
    for pat in (r"\[\[\s*([0-9]*\.?[0-9]+)\s*\]\]", r"\[\s*([0-9]*\.?[0-9]+)\s*\]", r"(?i:rating)\s*:\s*([0-9.]+)"):
        m = re.search(pat, text)
        if m:
            try:
                return min(100.0, max(0.0, float(m.group(1))))
            except ValueError:
                continue
    return None


class HFJudge(Judge):
    """Any local HF causal LM as judge: greedy answer to :data:`JUDGE_PROMPT`, rating read by :func:`parse_rating`."""

    def __init__(self, hf_dir: str, max_new_tokens: int = 256, dtype: str = "float32", model=None, tokenizer=None):
        if model is None:
            from lcrecipes.eval.runner import load_model

            model, tokenizer = load_model(hf_dir, dtype)
        self.model, self.tok, self.max_new_tokens = model, tokenizer, max_new_tokens

    def rate(self, question: str, reference: str, prediction: str) -> tuple[float | None, str]:
        from lcrecipes.eval.context import generate_text

        prompt = JUDGE_PROMPT.format(question=question, reference=reference, prediction=prediction)
        raw = generate_text(self.model, self.tok, prompt, self.max_new_tokens)
        self.last = (parse_rating(raw), raw)
        return self.last


def judge_score(text: str, item: EvalItem, judge: Judge | None = None) -> float:
    if judge is None:
        raise ValueError(f"task {item.task}: scored by an LLM judge but no judge was given (suite key 'judge')")
    rating, _ = judge.rate(item.example.question, item.reference[0], text)
    return 0.0 if rating is None else rating / 100.0


MetricFn = Callable[[str, "EvalItem", "Judge | None"], float]
METRICS: dict[str, MetricFn] = {"accuracy": accuracy, "subem": subem, "rouge_l": rouge_l, "judge": judge_score}


# ---- confidence intervals -------------------------------------------------------------------------------------
def bootstrap_ci(
    values: Sequence[float], n_resamples: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its percentile-bootstrap ``1 - alpha`` interval (fixed ``seed``).

    NaNs are dropped; an empty input gives three NaNs; one value gives a zero-width interval.
    """
    x = np.asarray([v for v in values if not (isinstance(v, float) and math.isnan(v))], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(x.mean()), float(lo), float(hi)
