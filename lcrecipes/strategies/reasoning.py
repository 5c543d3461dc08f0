"""R — reasoning that cites documents, then the answer.

Output format::

    Reasoning:
    <free text over one or more lines, citing documents as [DOC i]>
    Answer: <answer>

The reasoning block is free text, closed by the ``Answer:`` line, which must be the last line and the only line
that starts with ``Answer:`` (a second one makes the output malformed). The cited ids are the ``[DOC i]`` tags of
the reasoning, in order of first mention. Targets use ``example.reasoning`` (without its lines that read as an
answer line: the target ends with its own) when that is not blank; otherwise a templated chain
with one line per gold document, ``[DOC i] (<title>) states: "<first supporting sentence>"``, where copied text has
its own ``[DOC j]`` tags rewritten as ``DOC j`` so the chain cites exactly the gold ids. The paper rewards this
strategy with an LLM judge; here ``reward = format * (0.7 subem + 0.3 id_f1)``.
"""

from __future__ import annotations

from lcrecipes.data.example import DOC_TAG, RetrievalExample
from lcrecipes.strategies.base import (
    MAX_QUOTE_TOKENS,
    Parsed,
    Strategy,
    answer_spec,
    check_max_tokens,
    compose_instruction,
    supporting_quotes,
    target_answer,
)
from lcrecipes.strategies.lines import (
    ANSWER,
    answer_line,
    cited_ids,
    classify,
    is_section,
    neutralize_tags,
    split_lines,
    take_answer,
)
from lcrecipes.strategies.scoring import normalize_ws


class Reasoning(Strategy):
    name = "reasoning"
    short = "R"
    metrics = ("subem", "id_f1")
    default_weights = {"subem": 0.7, "id_f1": 0.3}

    def __init__(self, max_quote_tokens: int = MAX_QUOTE_TOKENS, reward_weights: dict[str, float] | None = None):
        super().__init__(reward_weights)
        self.max_quote_tokens = check_max_tokens(self.name, max_quote_tokens)

    def instruction(self, multiple_choice: bool = False) -> str:
        task = (
            "Answer the question using the documents below. First reason step by step, citing each document you "
            "use by its id, e.g. [DOC i]. Then give the answer on the last line."
        )
        fmt = ["Reasoning:", "<your reasoning, citing [DOC i]>", answer_line(answer_spec(multiple_choice))]
        return compose_instruction(task, fmt)

    def target_lines(self, example: RetrievalExample) -> list[str]:
        text = drop_answer_lines(example.reasoning or "").strip() or self.templated_chain(example)
        bad = [i for i in cited_ids(text) if not 1 <= i <= len(example.docs)]
        if bad:
            raise ValueError(f"example {example.qid!r}: 'reasoning' cites DOC ids {bad} outside 1..{len(example.docs)}")
        return ["Reasoning:", *text.split("\n")]

    def templated_chain(self, example: RetrievalExample) -> str:
        """One line per gold document citing it with its first supporting sentence, then a closing line."""
        steps = []
        for i, passage in example.gold_passages():
            quotes = supporting_quotes(example, i, self.max_quote_tokens)
            title = neutralize_tags(normalize_ws(passage.title))
            about = f" ({title})" if title else ""
            said = f' states: "{neutralize_tags(quotes[0])}"' if quotes else " is relevant."
            steps.append(f"{DOC_TAG.format(i=i)}{about}{said}")
        if not steps:
            steps.append("No document is needed to answer the question.")
        closing = "Combining these facts answers the question."
        if example.choices is not None:
            closing = f"So the correct option is {target_answer(example)}."
        return "\n".join([*steps, closing])

    def parse(self, output: str) -> Parsed:
        body, answer, ok = take_answer(split_lines(output, keep_blank=True))
        has_header = bool(body) and is_section(body[0], "reasoning")
        text = "\n".join(body[1:] if has_header else body).strip()
        ok = ok and has_header and bool(text)
        return Parsed(ids=cited_ids(text), quotes=[], content=[], answer=answer, well_formed=ok, reasoning=text)


def drop_answer_lines(text: str) -> str:
    """``text`` without the lines that would read as an ``Answer:`` line."""
    return "\n".join(line for line in text.split("\n") if classify(line).kind != ANSWER)
