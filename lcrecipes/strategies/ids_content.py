"""ID+C — the relevant document ids, each document's text copied, then the answer.

Output format::

    Documents: [DOC 3], [DOC 7]
    Content:
    [DOC 3]
    > first line of the text of DOC 3
    > second line ...
    [DOC 7]
    > text of DOC 7
    Answer: <answer>

One block per listed document, in the same order: a ``[DOC i]`` line, then every line of the passage text (split
on ``"\\n"``) behind ``"> "``; the title is not copied. Because copied text only appears behind ``"> "``, text that
contains ``Answer:`` or ``[DOC i]`` cannot be read as structure. Reward:
``format * (0.5 subem + 0.25 id_f1 + 0.25 content_match)``.
"""

from __future__ import annotations

from lcrecipes.data.example import DOC_TAG, RetrievalExample
from lcrecipes.strategies.base import Parsed, Strategy, answer_spec, compose_instruction
from lcrecipes.strategies.lines import (
    DATA,
    SECTION,
    TAG,
    answer_line,
    classify,
    data_lines,
    documents_line,
    is_section,
    parse_documents,
    split_lines,
    take_answer,
)


class IdsContent(Strategy):
    name = "ids_content"
    short = "ID+C"
    metrics = ("subem", "id_f1", "content_match")
    default_weights = {"subem": 0.5, "id_f1": 0.25, "content_match": 0.25}

    def instruction(self, multiple_choice: bool = False) -> str:
        task = (
            "Answer the question using the documents below. First list the ids of the documents that contain the "
            "information needed to answer (or 'none'). Then copy the full text of each listed document, in the same "
            "order: a line with its id, then each line of its text prefixed with '> '. Then give the answer."
        )
        fmt = ["Documents: [DOC i], [DOC j]", "Content:", "[DOC i]", "> text of document i", "[DOC j]",
               "> text of document j", answer_line(answer_spec(multiple_choice))]  # fmt: skip
        return compose_instruction(task, fmt)

    def target_lines(self, example: RetrievalExample) -> list[str]:
        lines = [documents_line(example.gold), "Content:"]
        for i, passage in example.gold_passages():
            lines += [DOC_TAG.format(i=i), *data_lines(passage.text)]
        return lines

    def parse(self, output: str) -> Parsed:
        body, answer, ok = take_answer(split_lines(output))
        ids, ids_ok = parse_documents(body)
        blocks, blocks_ok = _read_blocks(body)
        ok = ok and ids_ok and blocks_ok and [i for i, _ in blocks] == ids
        content = ["\n".join(lines) for _, lines in blocks]
        return Parsed(ids=ids, quotes=[], content=content, answer=answer, well_formed=ok)


def _read_blocks(body: list[str]) -> tuple[list[tuple[int, list[str]]], bool]:
    """Copied blocks ``(doc id, text lines)`` and whether body[1:] is exactly ``Content:`` then non-empty blocks.

    Lenient: blocks are read wherever they are; data lines before any ``[DOC i]`` line and other lines are dropped.
    """
    blocks: list[tuple[int, list[str]]] = []
    ok = len(body) >= 2 and is_section(body[1], "content")
    for j, line in enumerate(map(classify, body)):
        if line.kind == TAG:
            blocks.append((int(line.value), []))
        elif line.kind == DATA and blocks:
            blocks[-1][1].append(str(line.value))
        elif j >= 2 or (j == 1 and line.kind != SECTION):
            ok = False
    return blocks, ok and all(lines for _, lines in blocks)
