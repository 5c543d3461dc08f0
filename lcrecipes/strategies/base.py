"""The strategy base class: prompt, training target, parser and score of one output format.

A strategy fills four things: ``instruction`` (what the model is asked to write), ``target_lines`` (the lines of
the training target before the final ``Answer:`` line), ``parse`` (model output -> :class:`Parsed`) and the class
attributes ``metrics`` (which scores apply) and ``default_weights`` (its GRPO reward). The line grammar is in
:mod:`lcrecipes.strategies.lines`; the metrics in :mod:`lcrecipes.strategies.scoring`.

Scores (all floats in [0, 1]; a metric the strategy does not produce is ``nan``):
``subem`` (SubEM of the answer; for multiple choice, whether the option letter is right), ``id_f1`` (F1 of cited
vs gold DOC ids), ``quote_match`` and ``content_match`` (quotes / copied blocks found in the cited passages),
``format`` (1.0 if the output is well formed and every cited id is in ``1..len(docs)``) and
``reward = format * sum(weight[m] * score[m])`` with the weights normalised to sum to 1.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass
from typing import ClassVar

from lcrecipes.data.example import RetrievalExample, render_context
from lcrecipes.strategies import scoring
from lcrecipes.strategies.lines import answer_line

METRICS = ("subem", "id_f1", "quote_match", "content_match")
LETTERS = string.ascii_uppercase
MAX_QUOTE_TOKENS = 30
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+")


@dataclass
class Parsed:
    """What a parser read from one output. ``ids``: cited DOC ids in written order; ``quotes``/``content``: quoted
    and copied texts; ``answer``: None when no answer line was found; ``reasoning``: the free reasoning block."""

    ids: list[int]
    quotes: list[str]
    content: list[str]
    answer: str | None
    well_formed: bool
    reasoning: str = ""


class Strategy:
    """Base class of the output strategies; see the module docstring."""

    name: ClassVar[str] = ""
    short: ClassVar[str] = ""
    metrics: ClassVar[tuple[str, ...]] = ("subem",)
    default_weights: ClassVar[dict[str, float]] = {"subem": 1.0}

    def __init__(self, reward_weights: dict[str, float] | None = None):
        self.weights = self._check_weights(self.default_weights if reward_weights is None else reward_weights)

    def _check_weights(self, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(self.metrics))
        if unknown:
            raise ValueError(f"strategy {self.name}: reward_weights keys {unknown} not in its metrics {self.metrics}")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"strategy {self.name}: reward_weights must be >= 0 with a positive sum, got {weights}")
        total = sum(weights.values())
        return {k: w / total for k, w in weights.items()}

    # ---- to fill -------------------------------------------------------------------------------------------
    def instruction(self, multiple_choice: bool = False) -> str:
        raise NotImplementedError

    def target_lines(self, example: RetrievalExample) -> list[str]:
        """Lines of the training target before the final ``Answer:`` line."""
        raise NotImplementedError

    def parse(self, output: str) -> Parsed:
        raise NotImplementedError

    # ---- shared --------------------------------------------------------------------------------------------
    def prompt(self, example: RetrievalExample) -> str:
        """The user message: instruction, the ``[DOC i]`` context, the question (and ``A. ...`` option lines)."""
        question = f"Question: {example.question.strip()}"
        if example.choices is not None:
            _check_choices(example)
            question += "".join(f"\n{LETTERS[k]}. {scoring.normalize_ws(c)}" for k, c in enumerate(example.choices))
        return "\n\n".join([self.instruction(example.choices is not None), render_context(example.docs), question])

    def build_target(self, example: RetrievalExample) -> str:
        """The assistant message the model is trained to produce for ``example``."""
        check_gold(example)
        return "\n".join([*self.target_lines(example), answer_line(target_answer(example))])

    def score(self, output: str, example: RetrievalExample) -> dict[str, float]:
        """Scores of ``output`` against ``example`` (see module docstring); never raises on any output."""
        p = self.parse(output)
        n_docs = len(example.docs)
        cited = [example.docs[i - 1].text for i in p.ids if 1 <= i <= n_docs]
        scores = dict.fromkeys(METRICS, math.nan)
        for metric in self.metrics:
            scores[metric] = _METRIC_FNS[metric](p, example, cited)
        scores["format"] = float(p.well_formed and all(1 <= i <= n_docs for i in p.ids))
        scores["reward"] = scores["format"] * sum(w * scores[m] for m, w in self.weights.items())
        return scores

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, weights={self.weights})"


def answer_score(answer: str | None, example: RetrievalExample) -> float:
    """SubEM of a parsed answer (option-letter match for multiple choice); 0.0 when no answer was found."""
    if answer is None:
        return 0.0
    if example.choices is not None:
        return scoring.choice_match(answer, example.answers)
    return scoring.sub_exact_match(answer, example.answers)


_METRIC_FNS = {
    "subem": lambda p, ex, cited: answer_score(p.answer, ex),
    "id_f1": lambda p, ex, cited: scoring.id_f1(p.ids, ex.gold),
    "quote_match": lambda p, ex, cited: scoring.quote_match(p.quotes, cited),
    "content_match": lambda p, ex, cited: scoring.content_match(p.content, cited),
}


def answer_spec(multiple_choice: bool) -> str:
    return "<the letter of the correct option>" if multiple_choice else "<short answer>"


def compose_instruction(task: str, format_lines: list[str]) -> str:
    """An instruction: the task sentence(s), then the exact output format."""
    return task + "\nUse exactly this format, with nothing before or after it:\n" + "\n".join(format_lines)


def target_answer(example: RetrievalExample) -> str:
    """The answer a target writes: the first gold answer on one line, or the option letter for multiple choice."""
    if not example.answers:
        raise ValueError(f"example {example.qid!r}: 'answers' is empty")
    answer = scoring.normalize_ws(example.answers[0])
    if example.choices is not None:
        _check_choices(example)
        letters = LETTERS[: len(example.choices)]
        if len(answer) != 1 or answer.upper() not in letters:
            raise ValueError(f"example {example.qid!r}: answer {answer!r} is not an option letter in {letters}")
        return answer.upper()
    if not answer:
        raise ValueError(f"example {example.qid!r}: first answer {example.answers[0]!r} is blank")
    return answer


def check_gold(example: RetrievalExample) -> None:
    """Gold DOC ids must be unique and within ``1..len(docs)``."""
    n = len(example.docs)
    bad = [i for i in example.gold if not 1 <= i <= n]
    if bad or len(set(example.gold)) != len(example.gold):
        raise ValueError(f"example {example.qid!r}: 'gold' {example.gold} must be unique ids in 1..{n}")


def supporting_quotes(example: RetrievalExample, doc: int, max_tokens: int) -> list[str]:
    """Quotes of gold DOC ``doc``: its supporting sentences (or, without any, the passage's first sentence),
    whitespace collapsed and cut to their first ``max_tokens`` whitespace tokens; blank and repeated ones dropped.
    Each is a substring of the whitespace-collapsed passage text when the supporting sentences are verbatim."""
    sentences = example.supporting.get(doc) or [_SENTENCE_END_RE.split(example.docs[doc - 1].text.strip(), 1)[0]]
    quotes = (" ".join(s.split()[:max_tokens]) for s in sentences)
    return list(dict.fromkeys(q for q in quotes if q))


def check_max_tokens(name: str, max_quote_tokens: int) -> int:
    if not isinstance(max_quote_tokens, int) or max_quote_tokens < 1:
        raise ValueError(f"strategy {name}: max_quote_tokens must be a positive int, got {max_quote_tokens!r}")
    return max_quote_tokens


def _check_choices(example: RetrievalExample) -> None:
    if not 1 <= len(example.choices) <= len(LETTERS):
        raise ValueError(f"example {example.qid!r}: 'choices' must hold 1..{len(LETTERS)} options")
