"""The retrieval example: the unit that data prep builds, strategies turn into targets, and eval scores.

A context is a list of passages shown to the model in order; passage ``i`` (1-based) is tagged ``[DOC i]``.
``gold`` lists the DOC ids that hold the evidence for the answer.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

DOC_TAG = "[DOC {i}]"
DOC_TAG_RE = re.compile(r"\[DOC (\d+)\]")


@dataclass(frozen=True)
class Passage:
    """One passage of a corpus: ``pid`` is the corpus id (stable across examples), not the DOC id."""

    pid: str
    title: str
    text: str


@dataclass
class RetrievalExample:
    """A question over a list of passages.

    ``docs[i - 1]`` is shown as ``[DOC i]``. ``gold`` holds 1-based DOC ids in the order the evidence is used.
    ``supporting`` maps a gold DOC id to its supporting sentences (verbatim substrings of that passage's text),
    which the quote strategy copies. ``choices`` is set for multiple-choice questions (answers then hold the
    correct option letter(s)). ``reasoning`` is an optional worked chain, used by the reasoning strategy when
    present.
    """

    qid: str
    question: str
    answers: list[str]
    docs: list[Passage]
    gold: list[int]
    supporting: dict[int, list[str]] = field(default_factory=dict)
    choices: list[str] | None = None
    reasoning: str | None = None
    domain: str = "in_domain"

    def gold_passages(self) -> list[tuple[int, Passage]]:
        return [(i, self.docs[i - 1]) for i in self.gold]

    def to_json(self) -> dict:
        d = asdict(self)
        d["supporting"] = {str(k): v for k, v in self.supporting.items()}
        return d

    @classmethod
    def from_json(cls, d: dict) -> RetrievalExample:
        d = dict(d)
        d["docs"] = [Passage(**p) for p in d["docs"]]
        d["supporting"] = {int(k): list(v) for k, v in d.get("supporting", {}).items()}
        return cls(**d)


def render_doc(i: int, p: Passage) -> str:
    """``[DOC i] Title\\ntext`` — the one place the tag format is written."""
    head = DOC_TAG.format(i=i)
    return f"{head} {p.title}\n{p.text}" if p.title else f"{head}\n{p.text}"


def render_context(docs: list[Passage]) -> str:
    return "\n\n".join(render_doc(i, p) for i, p in enumerate(docs, start=1))
