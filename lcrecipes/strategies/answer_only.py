"""AO — answer only.

Output format (one line)::

    Answer: <answer>

Reward: ``format * subem``. The parser is lenient for eval of untrained models: without an ``Answer:`` line the
first non-empty line is taken as the answer, but the output is not well formed. Only the first line: the format
asks for one line, and a model that rambles on (listing facts from its context) must not score by the gold answer
appearing somewhere in its ramble, which would reward a longer ``max_new_tokens`` rather than an answer.
"""

from __future__ import annotations

from lcrecipes.data.example import RetrievalExample
from lcrecipes.strategies.base import Parsed, Strategy, answer_spec, compose_instruction
from lcrecipes.strategies.lines import answer_line, split_lines, take_answer
from lcrecipes.strategies.scoring import normalize_ws


class AnswerOnly(Strategy):
    name = "answer_only"
    short = "AO"
    metrics = ("subem",)
    default_weights = {"subem": 1.0}

    def instruction(self, multiple_choice: bool = False) -> str:
        task = "Answer the question using the documents below. Give only the answer."
        return compose_instruction(task, [answer_line(answer_spec(multiple_choice))])

    def target_lines(self, example: RetrievalExample) -> list[str]:
        return []

    def parse(self, output: str) -> Parsed:
        lines = split_lines(output)
        body, answer, ok = take_answer(lines)
        if answer is None:
            answer = normalize_ws(lines[0]) if lines else None
        return Parsed(ids=[], quotes=[], content=[], answer=answer, well_formed=ok and not body)
