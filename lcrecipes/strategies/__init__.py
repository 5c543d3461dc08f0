"""The five output strategies of the study, by name.

``get_strategy("ids_quotes", max_quote_tokens=30)`` returns a ready strategy; ``STRATEGIES`` maps each name to its
class. Each strategy gives the instruction, builds the training target, parses model output and scores it (see
:mod:`lcrecipes.strategies.base`).
"""

from __future__ import annotations

from lcrecipes.strategies.answer_only import AnswerOnly
from lcrecipes.strategies.base import Parsed, Strategy
from lcrecipes.strategies.doc_ids import DocIds
from lcrecipes.strategies.ids_content import IdsContent
from lcrecipes.strategies.ids_quotes import IdsQuotes
from lcrecipes.strategies.reasoning import Reasoning

_CLASSES = (AnswerOnly, DocIds, IdsContent, IdsQuotes, Reasoning)
STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in _CLASSES}


class UnknownStrategyError(KeyError):
    """An unknown strategy name; the message lists the valid ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_strategy(name: str, **params) -> Strategy:
    """The strategy registered as ``name``, built with ``params`` (e.g. ``max_quote_tokens``, ``reward_weights``)."""
    if name not in STRATEGIES:
        raise UnknownStrategyError(f"unknown strategy {name!r}; valid names: {', '.join(STRATEGIES)}")
    try:
        return STRATEGIES[name](**params)
    except TypeError as err:
        raise TypeError(f"strategy {name!r}: bad parameters {sorted(params)}: {err}") from err


__all__ = ["STRATEGIES", "Parsed", "Strategy", "UnknownStrategyError", "get_strategy"]
