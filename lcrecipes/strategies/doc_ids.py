"""ID — the relevant document ids, then the answer.

Output format (two lines)::

    Documents: [DOC 3], [DOC 7]
    Answer: <answer>

``Documents: none`` when no document is relevant. Ids are written in the order the evidence is used, without
repeats. Reward: ``format * (0.5 subem + 0.5 id_f1)``.
"""

from __future__ import annotations

from lcrecipes.data.example import RetrievalExample
from lcrecipes.strategies.base import Parsed, Strategy, answer_spec, compose_instruction
from lcrecipes.strategies.lines import answer_line, documents_line, parse_documents, split_lines, take_answer


class DocIds(Strategy):
    name = "doc_ids"
    short = "ID"
    metrics = ("subem", "id_f1")
    default_weights = {"subem": 0.5, "id_f1": 0.5}

    def instruction(self, multiple_choice: bool = False) -> str:
        task = (
            "Answer the question using the documents below. First list the ids of the documents that contain the "
            "information needed to answer (or 'none'), then give the answer."
        )
        return compose_instruction(task, ["Documents: [DOC i], [DOC j]", answer_line(answer_spec(multiple_choice))])

    def target_lines(self, example: RetrievalExample) -> list[str]:
        return [documents_line(example.gold)]

    def parse(self, output: str) -> Parsed:
        body, answer, ok = take_answer(split_lines(output))
        ids, ids_ok = parse_documents(body)
        return Parsed(ids=ids, quotes=[], content=[], answer=answer, well_formed=ok and ids_ok and len(body) == 1)
