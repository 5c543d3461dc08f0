"""ID+Q — the relevant document ids, short supporting quotes, then the answer.

Output format::

    Documents: [DOC 3], [DOC 7]
    Quotes:
    > [DOC 3] a supporting sentence of DOC 3, at most 30 whitespace tokens
    > [DOC 7] a supporting sentence of DOC 7
    Answer: <answer>

Each quote is one line: ``"> "``, the tag of a listed document, then the quote with its whitespace collapsed. A
quote longer than ``max_quote_tokens`` whitespace tokens, untagged, or tagged with an unlisted document makes the
output malformed. Targets quote every supporting sentence of each gold document (the first sentence of the passage
when none is given), cut to ``max_quote_tokens``. Reward: ``format * (0.5 subem + 0.25 id_f1 + 0.25 quote_match)``.
"""

from __future__ import annotations

import re

from lcrecipes.data.example import DOC_TAG, RetrievalExample
from lcrecipes.strategies.base import (
    MAX_QUOTE_TOKENS,
    Parsed,
    Strategy,
    answer_spec,
    check_max_tokens,
    compose_instruction,
    supporting_quotes,
)
from lcrecipes.strategies.lines import (
    DATA,
    answer_line,
    classify,
    data_lines,
    doc_id,
    documents_line,
    is_section,
    parse_documents,
    split_lines,
    take_answer,
)

_QUOTE_RE = re.compile(r"\[DOC (\d+)\](.*)\Z", re.DOTALL)


class IdsQuotes(Strategy):
    name = "ids_quotes"
    short = "ID+Q"
    metrics = ("subem", "id_f1", "quote_match")
    default_weights = {"subem": 0.5, "id_f1": 0.25, "quote_match": 0.25}

    def __init__(self, max_quote_tokens: int = MAX_QUOTE_TOKENS, reward_weights: dict[str, float] | None = None):
        super().__init__(reward_weights)
        self.max_quote_tokens = check_max_tokens(self.name, max_quote_tokens)

    def instruction(self, multiple_choice: bool = False) -> str:
        task = (
            "Answer the question using the documents below. First list the ids of the documents that contain the "
            "information needed to answer (or 'none'). Then quote, verbatim, the sentences of those documents that "
            f"support the answer, one per line, each prefixed with '> ' and its document id, at most "
            f"{self.max_quote_tokens} words each. Then give the answer."
        )
        fmt = ["Documents: [DOC i], [DOC j]", "Quotes:", "> [DOC i] quote from document i",
               "> [DOC j] quote from document j", answer_line(answer_spec(multiple_choice))]  # fmt: skip
        return compose_instruction(task, fmt)

    def target_lines(self, example: RetrievalExample) -> list[str]:
        lines = [documents_line(example.gold), "Quotes:"]
        for i in example.gold:
            for quote in supporting_quotes(example, i, self.max_quote_tokens):
                lines += data_lines(f"{DOC_TAG.format(i=i)} {quote}")
        return lines

    def parse(self, output: str) -> Parsed:
        body, answer, ok = take_answer(split_lines(output))
        ids, ids_ok = parse_documents(body)
        ok = ok and ids_ok and len(body) >= 2 and is_section(body[1], "quotes")
        quotes = []
        for j, line in enumerate(map(classify, body)):
            if line.kind != DATA:
                continue
            tag, quote = _split_tag(str(line.value))
            quotes.append(quote)
            ok = ok and j >= 2 and tag in ids and 0 < len(quote.split()) <= self.max_quote_tokens
        n_data = sum(classify(line).kind == DATA for line in body[2:])
        ok = ok and n_data == len(body) - 2
        return Parsed(ids=ids, quotes=quotes, content=[], answer=answer, well_formed=ok)


def _split_tag(text: str) -> tuple[int | None, str]:
    """``"[DOC 3] quote"`` -> ``(3, "quote")``; an untagged line -> ``(None, stripped text)``."""
    m = _QUOTE_RE.match(text.strip())
    return (doc_id(m.group(1)), m.group(2).strip()) if m else (None, text.strip())
